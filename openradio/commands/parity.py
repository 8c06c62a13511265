"""`openradio parity`: compare openradio with the official code's outputs in a parity-fixtures folder."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HELP = "check that openradio reproduces the official RADIO outputs stored in a parity-fixtures folder"
EXAMPLES = """\
  openradio parity --fixtures ../shared/fixtures/official-v2.5
  openradio parity --fixtures DIR --strict            # every tensor bit-identical, or exit 1
  openradio parity --fixtures DIR --cases '*16x16' --cases '*:vitdet8_*'
  openradio parity --fixtures DIR --matrix --json parity.json
  openradio parity --fixtures DIR --matrix --setting "" --setting MKL_CBWR=AVX2,OMP_NUM_THREADS=1

A fixtures folder holds official-format checkpoints and expected.pt (the official code's outputs
for them). Every stored tensor is compared; the table lists each case's largest difference.
Without --strict a difference within the rounding noise of the dtype the model computes in
passes (float32: 4e-6 x the tensor's largest magnitude; bfloat16/float16: a bound that grows with
depth, see openradio.verify.parity.low_precision_bound); with --strict only bit equality does.

Bit equality also depends on the CPU's kernels (MKL code path, ATen's vector width). --matrix
reruns the comparison in a fresh process for each kernel setting this CPU supports
(ATEN_CPU_CAPABILITY x MKL_CBWR x threads) and reports which settings, if any, are bit-exact;
it exits 0 when every setting stays within the noise bound (with --strict: when at least one
setting is bit-exact for every tensor)."""


# the small fixtures set vendored in a source checkout
VENDORED = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "official-mini"


def add_arguments(p: argparse.ArgumentParser) -> None:
    default = os.environ.get("OPENRADIO_FIXTURES")
    if default is None and VENDORED.is_dir():  # a source checkout ships a small set
        default = str(VENDORED)
    p.add_argument(
        "--fixtures",
        default=default,
        required=default is None,
        metavar="DIR",
        help="parity-fixtures folder (default: $OPENRADIO_FIXTURES, else the repository's "
        "tests/fixtures/official-mini)",
    )
    p.add_argument("--strict", action="store_true", help="require bit equality (exit 1 otherwise)")
    p.add_argument(
        "--matrix", action="store_true", help="rerun under every kernel setting this CPU supports, one process each"
    )
    p.add_argument(
        "--setting",
        action="append",
        default=None,
        metavar="VAR=VAL[,VAR=VAL]",
        help="with --matrix: try these environment settings instead of the automatic list "
        "(repeatable; an empty string means the defaults)",
    )
    p.add_argument(
        "--cases",
        action="append",
        default=None,
        metavar="GLOB",
        help="only cases whose VARIANT:CASE matches (repeatable), e.g. '*16x16'",
    )
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--verbose-cases", action="store_true", help="print every tensor, not one line per case")


def _print_single(results, summary, info, strict: bool, every: bool) -> None:
    from openradio.verify.parity import platform_line

    print(platform_line(info))
    rows: dict[str, list] = {}
    for r in results:
        key = r.where if every else f"{r.variant}:{r.case}"
        rows.setdefault(key, []).append(r)
    width = max(len(k) for k in rows) if rows else 10
    print(f"{'case'.ljust(width)}  tensors  exact  max|diff|   verdict")
    for key, rs in rows.items():
        diff = max(r.max_abs_diff for r in rs)
        ok = all(r.ok(strict) for r in rs)
        bad = [r for r in rs if not (r.dtype_ok and r.shape_ok)]
        verdict = "ok" if ok else ("WRONG dtype/shape" if bad else ("not bit-exact" if strict else "ABOVE NOISE"))
        print(f"{key.ljust(width)}  {len(rs):7d}  {sum(r.exact for r in rs):5d}  {diff:9.3g}   {verdict}")
    bounds = sorted({r.bound for r in results})
    print(
        f"\n{summary['exact']}/{summary['tensors']} tensors bit-exact; {summary['within_noise']}/"
        f"{summary['tensors']} within the rounding noise of the compute dtype ({'; '.join(bounds)}); "
        f"largest difference "
        f"{summary['max_abs_diff']:.3g}; outputs digest {summary['outputs_digest']}"
    )


def _run_matrix(args) -> int:
    from openradio.verify.parity import describe_env, env_settings, platform_info, platform_line

    settings = env_settings() if not args.setting else [parse_setting(s) for s in args.setting]
    info = platform_info()
    print(platform_line(info))
    print(f"{len(settings)} kernel settings, one process each")
    rows = []
    from tqdm import tqdm

    for env in tqdm(settings, desc="settings", unit="setting", file=sys.stderr):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "openradio",
                "parity",
                "--fixtures",
                str(args.fixtures),
                "--json",
                "-",
                *[a for pat in (args.cases or []) for a in ("--cases", pat)],
            ],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
        )
        try:
            res = json.loads(proc.stdout[proc.stdout.index("{") :])
        except ValueError:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            rows.append({"env": env, "error": tail[0]})
            continue
        rows.append({"env": env, **res["summary"], "aten_cpu_capability": res["platform"]["aten_cpu_capability"]})
    width = max(len(describe_env(r["env"])) for r in rows)
    print(f"{'setting'.ljust(width)}  ATen     exact/tensors  max|diff|  outputs digest")
    for r in rows:
        if "error" in r:
            print(f"{describe_env(r['env']).ljust(width)}  error: {r['error']}")
            continue
        print(
            f"{describe_env(r['env']).ljust(width)}  {r['aten_cpu_capability']:<7}  "
            f"{r['exact']:5d}/{r['tensors']:<7d}  {r['max_abs_diff']:9.3g}  {r['outputs_digest']}"
        )
    full = [r for r in rows if "error" not in r and r["exact"] == r["tensors"]]
    if full:
        print("bit-exact under: " + "; ".join(describe_env(r["env"]) for r in full))
    else:
        print("no setting on this CPU is bit-exact for every tensor")
    if args.json:
        _write_json(args.json, {"platform": info, "matrix": rows})
    if args.strict:
        return 0 if full else 1
    # without --strict every setting must run and stay within float32 noise
    return (
        0 if all("error" not in r and r["within_noise"] == r["tensors"] and not r["failed_checks"] for r in rows) else 1
    )


def parse_setting(text: str) -> dict[str, str]:
    """'MKL_CBWR=AVX2,OMP_NUM_THREADS=1' -> {'MKL_CBWR': 'AVX2', 'OMP_NUM_THREADS': '1'}; '' -> {}."""
    env = {}
    for part in filter(None, (t.strip() for t in text.split(","))):
        key, sep, val = part.partition("=")
        if not sep or not key:
            raise ValueError(f"--setting {text!r}: expected VAR=VALUE pairs separated by commas")
        env[key] = val
    return env


def _write_json(dest: str, obj: dict) -> None:
    text = json.dumps(obj, indent=1, default=str)
    if dest == "-":
        print(text)
    else:
        Path(dest).write_text(text + "\n")
        print(f"wrote {dest}", file=sys.stderr)


def run(args) -> int:
    from openradio.verify.parity import (
        as_dicts,
        compare_fixtures,
        load_expected,
        platform_info,
        select_cases,
        summarize,
    )

    if args.matrix:
        return _run_matrix(args)
    quiet = args.json == "-"
    E = load_expected(args.fixtures)
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(select_cases(E, args.cases)), desc="cases", unit="case", file=sys.stderr)
    results = compare_fixtures(
        args.fixtures, expected=E, cases=args.cases, progress=(lambda _name: bar.update(1)) if bar else None
    )
    if bar:
        bar.close()
    summary = summarize(results)
    info = platform_info()
    if not quiet:
        _print_single(results, summary, info, args.strict, args.verbose_cases)
    if args.json:
        _write_json(args.json, {"platform": info, "summary": summary, "results": as_dicts(results)})
    return 0 if all(r.ok(args.strict) for r in results) else 1
