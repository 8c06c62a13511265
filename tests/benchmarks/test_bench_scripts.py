"""The benchmark scripts measure what they claim (no timings asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import torch

import openradio
from openradio.model.vitdet import windowed_blocks
from openradio.verify.testing import make_tiny_checkpoint

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_vitdet_breakdown_runs_the_model_steps(tmp_path):
    bv = _load("bench_vitdet")
    model = openradio.radio_model(str(make_tiny_checkpoint(tmp_path / "m.pth.tar")), text_towers=False)
    x = torch.rand(1, 3, 128, 64)
    with torch.no_grad():
        parts, y = bv.breakdown(model, x, 2)
        ref = model.forward_tokens(model.input_conditioner(x), 2)
    assert torch.equal(y, ref)
    assert set(parts) == {"windowed blocks", "global blocks", "layout changes", "rest"}
    assert all(v >= 0 for v in parts.values())


def test_vitdet_flop_bound():
    bv = _load("bench_vitdet")
    sched = windowed_blocks(12, None, 4)
    # all-global: the window argument changes nothing
    assert bv.flops(1024, 768, 12, sched, None, 8) == 12 * (24 * 1032 * 768**2 + 4 * 1032**2 * 768)
    bound = [bv.flops(n, 768, 12, sched, None, 8) / bv.flops(n, 768, 12, sched, 16, 8) for n in (1024, 4096, 16384)]
    assert 1.0 < bound[0] < bound[1] < bound[2] < 12 / 4  # bounded by the global blocks' share


def test_compare_flops_and_one_cell(tmp_path, capsys):
    bc = _load("bench_compare")
    sched = windowed_blocks(12, None, 4)
    bv = _load("bench_vitdet")
    n = (512 // 16) ** 2
    embed = 2 * n * 3 * 16 * 16 * 768
    for window in (None, 16):
        assert bc.model_flops(768, 12, 16, 512, 2, 8, sched, window) == 2 * (
            embed + bv.flops(n, 768, 12, sched, window, 8)
        )
    ok, where = bc.native_bf16()
    assert isinstance(ok, bool) and where
    from openradio.eval.throughput import make_timm_baseline

    model = openradio.radio_model(str(make_tiny_checkpoint(tmp_path / "m.pth.tar")), text_towers=False)
    vit = make_timm_baseline(model, 64, 64)
    bc.cell(model, vit, None, 64, 1, None, torch.float32, 1, 1e9, 1, 64, 4)
    line = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert line[:5] == ["1", "64", "1", "global", "float32"] and line[6].startswith("x")
    # --breakdown: the attention core's FLOPs are the 4*N^2*D term of every block, and its line prints
    run, flops = bc.attention_core(model, 64, 3, torch.float32, 64, 4, 4)
    n = (64 // 16) ** 2 + model.num_prefix_tokens
    assert flops == 4 * 3 * 4 * n * n * 64
    run()
    bc.cell(model, vit, None, 64, 1, None, torch.float32, 1, 1e9, 1, 64, 4, breakdown=True)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].split()[:2] == ["attention", "core"] and "% MFU" in out[-1]


def test_gpu_script_parses_and_says_when_there_is_no_gpu():
    import subprocess
    import sys

    subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")], check=True)
    if torch.cuda.is_available():
        return
    for script in ("bench_gpu.py", "gpu_check.py"):
        out = subprocess.run([sys.executable, str(BENCH / script)], capture_output=True, text=True, check=True)
        assert out.stdout.startswith("cpu: ") and "no CUDA device" in out.stdout.splitlines()[1], script


def test_every_script_prints_the_platform_line():
    # output bits and speed depend on the CPU kind: every benchmark's output says which it ran on
    missing = [p.name for p in sorted(BENCH.glob("*.py")) if "print(platform_line(" not in p.read_text()]
    assert not missing, f"these benchmarks do not print openradio.runtime.platform_line() first: {missing}"


def test_packed_flops_are_the_sum_over_images_and_the_script_prints_the_ceiling(tmp_path, capsys):
    bp = _load("bench_packed")
    bc = _load("bench_compare")
    sched = [False] * 12
    one = bc.model_flops(768, 12, 16, 512, 1, 8, sched, None)
    assert bp.pack_flops([(32, 32)], 768, 12, 8) == one
    assert bp.pack_flops([(32, 32), (32, 32), (14, 14)], 768, 12, 8) == (
        2 * one + bc.model_flops(768, 12, 16, 224, 1, 8, sched, None)
    )
    # a non-square grid costs what its token count costs
    assert bp.pack_flops([(16, 64)], 768, 12, 8) == one

    model = openradio.radio_model(str(make_tiny_checkpoint(tmp_path / "m.pth.tar")), text_towers=False)
    args = SimpleNamespace(
        seed=0,
        min_side=32,
        max_side=64,
        vitdet_window=0,
        images=3,
        embed_dim=64,
        depth=4,
        heads=4,
        threads="1",
        max_tokens=-1,
        rounds=1,
    )
    bp.run(model, None, args)
    out = capsys.readouterr().out
    assert out.startswith("cpu: ")
    assert "max |packed - per image|" in out
    mfu_line = [ln for ln in out.splitlines() if "ceiling of packing" in ln]
    assert len(mfu_line) == 1
    loop_mfu = float(mfu_line[0].split("MFU loop ")[1].split(" %")[0])
    ceiling = float(mfu_line[0].rsplit("x", 1)[1])
    # both printed rounded: MFU to 0.05 points, the ceiling to 0.005
    assert loop_mfu > 0 and abs(ceiling - 100 / loop_mfu) <= ceiling * 0.05 / loop_mfu + 0.006


def test_bench_extract_small_run_measures_what_it_prints(tmp_path, capsys):
    be = _load("bench_extract")
    from openradio.inputs.imageio import load_image

    bad = be.make_jpegs(tmp_path / "j", 40, 0.05, seed=3)
    files = sorted((tmp_path / "j").rglob("*.jpg"))
    unreadable = 0
    for p in files:
        try:
            load_image(p)
        except Exception:  # noqa: BLE001
            unreadable += 1
    assert len(files) == 40 and bad == 2 and unreadable == 2
    assert be.tree_pss(__import__("os").getpid()) > 10 * 2**20

    r = be.main(
        ["--images", "300", "--early", "100", "--part-size", "50", "--speed-images", "20", "--speed-dim", "64",
         "--speed-depth", "2", "--speed-heads", "2", "--resolution", "64", "--batch-size", "8", "--repeats", "1",
         "--threads", "1", "--workdir", str(tmp_path / "w")]
    )  # fmt: skip
    m = r["memory"]
    assert m["totals"]["rows"] == 300 and m["totals"]["ok"] == 300 - m["corrupt"] == 297
    assert 0 < m["peak_early"] <= m["peak"] and m["samples"] > 3
    assert m["bound"] in ("decode", "model") and m["seconds"]["inference"] > 0
    s = r["speed"][1]
    assert s["images"] == 20 and all(s[k] > 0 for k in ("model alone", "pipeline", "extract", "features"))
    out = capsys.readouterr().out
    assert out.startswith("cpu: ") and "flags:" in out.splitlines()[0] and "| torch " in out.splitlines()[0]
    assert "ratio" in out and "-bound" in out and "extract / features" in out


def test_prepack_ab_times_both_ways_and_compares_the_bits(tmp_path, monkeypatch):
    import sys

    from openradio.model import fused_cpu

    monkeypatch.syspath_prepend(str(BENCH))  # bench_prepack imports bench_compare beside it
    bp = _load("bench_prepack")
    model = openradio.radio_model(str(make_tiny_checkpoint(tmp_path / "m.pth.tar")), text_towers=False)
    model = model.set_compute_dtype(torch.bfloat16).eval()
    seen = []
    real = fused_cpu.packed_weight
    monkeypatch.setattr(fused_cpu, "packed_weight", lambda lin: seen.append(fused_cpu.PACK_WEIGHTS) or real(lin))
    t, ratio, same = bp.ab(model, torch.rand(2, 3, 64, 64), rounds=2)
    assert t > 0 and ratio > 0 and isinstance(same, bool)
    if fused_cpu.onednn_bf16_matmuls():
        # both ways ran through the fused blocks; whether their bits agree is what the script
        # reports (equal on AMX as measured; another CPU's kernels may sum in another order)
        assert set(seen) == {True, False}
    assert fused_cpu.PACK_WEIGHTS is True  # left as it was
    sys.modules.pop("bench_compare", None)


def test_attention_bound_solves_the_mfu_equation_and_the_script_times_every_kernel(monkeypatch, capsys):
    import sys

    monkeypatch.syspath_prepend(str(BENCH))  # bench_attention imports bench_compare beside it
    ba = _load("bench_attention")
    bc = _load("bench_compare")
    # the share is the attention term of the comparison's own FLOP count
    n = 32 * 32 + 8
    full = bc.model_flops(768, 12, 16, 512, 1, 8, [False] * 12, None)
    assert ba.attention_share(512, 768, 12) == 12 * 4 * n * n * 768 / full
    assert 0.15 < ba.attention_share(512, 768, 12) < 0.2 < ba.attention_share(1024, 768, 12)
    # solving for the attention speed and putting it back gives the target
    for share, target, rest in ((0.18, 0.8, 0.9), (0.3, 0.5, 0.7), (0.05, 0.8, 0.81)):
        need = ba.needed_fraction(share, target, rest)
        assert abs(ba.mfu_with(share, need, rest) - target) < 1e-12
    assert ba.needed_fraction(0.18, 0.8, 0.8) > 0.79  # the rest at the target: attention must be too
    assert ba.needed_fraction(0.18, 0.8, 0.75) is None  # it would have to beat the matmul peak
    assert ba.needed_fraction(0.18, 0.8, 0.5) is None  # no attention speed at all would do
    assert ba.main(["--res", "64", "--head-dims", "32", "--rounds", "1", "--threads", "1", "--width", "64"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cpu: ")
    line = next(x for x in out.splitlines() if x.startswith("  hd  32:"))
    for kernel in ("sdpa", "matmuls", "exp", "softmax"):
        assert f" {kernel} " in line
    assert "everything else at 90 %" in out and "1 thr, hd  32: ATen's SDPA" in out
    sys.modules.pop("bench_compare", None)
