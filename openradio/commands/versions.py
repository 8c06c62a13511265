"""`openradio versions`: the released RADIO versions and whether their weights are already on disk."""
from __future__ import annotations

import argparse
import json

HELP = ("list released RADIO versions (backbone, parity-fixture coverage, patch size, preferred resolution, "
        "ViTDet, adaptors, cached locally)")
EXAMPLES = """\
  openradio versions
  openradio versions --json | python -m json.tool

"backbone" is the args.model the release carries (~ = inferred: NVIDIA has not published its
args; the loader always reads the checkpoint's own). "parity" names the official-output fixtures
whose checkpoints take the same construction path (tests/fixtures/), "-" where none does.
"cached" means the checkpoint file is in torch.hub's cache ($TORCH_HOME/hub/checkpoints), so
loading that version needs no download. Any version name works as --version in other commands;
so does the path of a local checkpoint file."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def version_records() -> list[dict]:
    """One dict per released version: name, family, patch_size, preferred_resolution [h, w],
    max_resolution, vitdet, adaptors, cached, path (the cache file), url, note."""
    from openradio.formats.resolve import cached_checkpoint_path
    from openradio.versions import DEFAULT_VERSION, list_versions

    out = []
    for v in list_versions():
        path = cached_checkpoint_path(v)
        out.append({
            "name": v.name,
            "family": v.family,
            "patch_size": v.patch_size,
            "preferred_resolution": list(v.preferred_resolution),
            "max_resolution": v.max_resolution,
            "vitdet": v.supports_vitdet,
            "adaptors": list(v.adaptors),
            "arch": v.arch,
            "arch_known": v.arch_known,
            "construction": v.construction,
            "parity_fixtures": v.parity_fixtures,
            "cached": path.is_file(),
            "path": str(path),
            "url": v.url.split("?")[0],
            "default": v.name == DEFAULT_VERSION,
            "note": v.note,
        })
    return out


def format_table(records: list[dict]) -> str:
    header = ["name", "family", "backbone", "parity", "patch", "preferred", "ViTDet", "adaptors", "cached"]
    rows = [header]
    for r in records:
        h, w = r["preferred_resolution"]
        backbone = ("" if r["arch_known"] else "~") + r["arch"] + (" +attn" if "attn" in r["construction"] else "")
        parity = ",".join(f.split("/", 1)[1] for f in r["parity_fixtures"]) or "-"
        rows.append([r["name"] + (" *" if r["default"] else ""), r["family"], backbone, parity,
                     str(r["patch_size"]), f"{h}x{w}", "yes" if r["vitdet"] else "no",
                     ",".join(r["adaptors"]) or "-", "yes" if r["cached"] else "no"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(wd) for c, wd in zip(row, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * wd for wd in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from openradio.formats.resolve import checkpoint_cache_dir

    records = version_records()
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    print(format_table(records))
    print(f"\n* default version (as the official torch.hub entry). ~ inferred backbone. Cache: {checkpoint_cache_dir()}")
    notes = {r["note"] for r in records if r["note"]}
    for note in sorted(notes):
        print(f"note: {note}")
    return 0
