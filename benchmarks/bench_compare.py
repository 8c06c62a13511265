"""openradio vs a plain timm ViT vs transformers' native RadioModel, same shape, one process.

For every cell (shape, resolution, batch, mode, dtype) the contestants are called round-robin
on the same input (order reversed every round); the ratio "vs X" is the median over rounds of
t(X) / t(openradio) (> 1: openradio is faster). Also printed per cell:

* MFU: model FLOPs per second (matmuls of every block + patch embedding, counted from the
  shape: 24*N*D^2 + 4*N*L*D per block, L the keys a query sees) over the matmul peak of the
  cell's dtype (bf16 x bf16 operands for bf16 cells) measured in the same rounds (a 2048^3
  ``torch.mm`` timed next to each openradio call, so a machine whose load changes still gives a
  fair ratio); median over rounds;
* with ``--breakdown``, a second line for global-attention cells: the attention core alone (the
  fused SDPA kernel called ``depth`` times per block pass on the cell's shapes and dtype, timed in
  the same rounds), its share of openradio's time, its FLOP rate against the matmul peak, and the
  MFU of everything else (the linears, norms and copies), and the MFU ceiling this attention
  kernel leaves (the rest at the matmul peak): where the time goes when MFU is low;
* peak memory: the rise of the process's peak RSS (Linux ``VmHWM``, reset before the cell
  through /proc/self/clear_refs) while openradio runs the cell.

bf16 cells run only where the CPU has native bf16 matmuls (AVX512-BF16 or AMX; on CUDA always);
elsewhere the script says so and skips them (AVX2 CPUs emulate bf16, tens of times slower).
The contestants share the weights: the timm ViT is built with the same name and sizes and
copied from openradio's blocks; transformers' model is openradio's saved as a native folder.
All three run sequences of one length: the timm ViT carries timm register tokens so that its
class token and registers are as many as openradio's prefix tokens (``make_timm_baseline``).

    python benchmarks/bench_compare.py                         # B/16, 224 and 512, batch 1: quick
    python benchmarks/bench_compare.py --shapes b16,l16 --resolutions 224,512,1024,2048 --batches 1,8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from openradio.runtime import platform_line

SHAPES = {"b16": (768, 12, 12), "l16": (1024, 24, 16)}
SHAPES_BY_DIM = {d: h for d, _, h in SHAPES.values()}  # width -> heads


def native_bf16() -> tuple[bool, str]:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported(), "CUDA"
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    have = any(f in flags for f in ("avx512_bf16", "amx_bf16"))
    return have, (
        "CPU with " + ("AVX512-BF16/AMX" if have else f"no native bf16 ({torch.backends.cpu.get_cpu_capability()})")
    )


def matmul_peak(dtype=torch.float32, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = min(seconds(lambda: torch.mm(a, b)) for _ in range(reps))
    return 2 * n**3 / best


def seconds(fn) -> float:
    """Wall time of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def model_flops(dim: int, depth: int, patch: int, res: int, batch: int, prefix: int, schedule, window) -> float:
    n = (res // patch) ** 2
    total = 2 * n * 3 * patch * patch * dim
    for windowed in schedule:
        if window and windowed:
            total += 24 * n * dim * dim + 4 * n * window * window * dim
        else:
            total += 24 * (n + prefix) * dim * dim + 4 * (n + prefix) ** 2 * dim
    return total * batch


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def build(shape: str, tmp: Path):
    import openradio
    from openradio.eval.throughput import make_timm_baseline
    from openradio.verify.testing import make_tiny_checkpoint

    dim, depth, heads = SHAPES[shape]
    ckpt = make_tiny_checkpoint(
        tmp / f"{shape}.pth.tar",
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        cpe_max_size=2048,
        arch="vit_base_patch16_224",
        head_hidden=64,
    )
    model = openradio.radio_model(str(ckpt), text_towers=False)
    hf = None
    try:
        import transformers

        from openradio.formats.native import save_transformers

        if hasattr(transformers, "RadioModel"):
            folder = save_transformers(model, tmp / f"{shape}_native")
            hf = transformers.RadioModel.from_pretrained(folder, attn_implementation="sdpa").eval()
    except ImportError:
        pass

    def timm_for(res: int):
        vit = make_timm_baseline(model, res, res)
        vit.blocks.load_state_dict(model.model.blocks.state_dict())
        return vit

    return model, timm_for, hf


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="b16")
    ap.add_argument("--resolutions", default="224,512")
    ap.add_argument("--batches", default="1")
    ap.add_argument("--modes", default="global,vitdet", help="vitdet: window 16 (only where the size allows)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", default="", help="comma-separated torch thread counts (default: torch's)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument(
        "--chunk-tokens",
        type=int,
        default=None,
        help="openradio's cpu_chunk_tokens (0: the whole batch in one pass; default: the model's)",
    )
    ap.add_argument("--breakdown", action="store_true", help="also time the attention core alone (global cells)")
    a = ap.parse_args(argv)
    print(platform_line())
    bf16_ok, bf16_where = native_bf16()
    print(f"torch {torch.__version__}; {bf16_where}: bf16 cells {'run' if bf16_ok else 'skipped'}")
    threads_list = [int(t) for t in a.threads.split(",") if t] or [torch.get_num_threads()]
    with tempfile.TemporaryDirectory() as tmp:
        for shape in a.shapes.split(","):
            model, timm_for, hf = build(shape, Path(tmp))
            if a.chunk_tokens is not None:
                model.cpu_chunk_tokens = a.chunk_tokens
            dim, depth, _ = SHAPES[shape]
            print(
                f"\nshape {shape}: dim {dim}, depth {depth}, patch 16; openradio's CPU inference runs its blocks on "
                f"groups of <= {model.cpu_chunk_tokens} tokens (whole images; --chunk-tokens)"
            )
            print(
                f"contestants: openradio, timm (class token + {model.num_prefix_tokens - 1} registers = "
                f"openradio's {model.num_prefix_tokens} prefix tokens)"
                f"{', transformers' if hf is not None else ' (transformers RadioModel not available)'}"
            )
            print(
                f"{'thr':>3} {'res':>5} {'bs':>3} {'mode':9} {'dtype':8} {'openradio ms':>12} {'vs timm':>8} "
                f"{'vs hf':>7} {'MFU':>6} {'peak MiB':>9}"
            )
            for threads in threads_list:
                torch.set_num_threads(threads)
                peak = matmul_peak()
                print(
                    f"# {threads} thread(s): float32 matmul peak {peak / 1e9:.1f} GFLOP/s at the start "
                    "(2048^3 torch.mm, best of 5; MFU uses the one measured in each cell's rounds)"
                )
                for res in [int(r) for r in a.resolutions.split(",")]:
                    vit = timm_for(res)
                    for bs in [int(b) for b in a.batches.split(",")]:
                        for mode in a.modes.split(","):
                            window = a.window if mode == "vitdet" else None
                            if window and res % (16 * window):
                                continue
                            for dt in a.dtypes.split(","):
                                dtype = getattr(torch, dt)
                                if dtype == torch.bfloat16 and not bf16_ok:
                                    continue
                                args = (model, vit, hf, res, bs, window, dtype, a.rounds, peak, threads, dim, depth)
                                cell(*args, breakdown=a.breakdown)
                                if dtype == torch.bfloat16:  # every contestant's weights held in bf16
                                    cell(*args, weights=True, breakdown=a.breakdown)
                    del vit
    return 0


def attention_core(model, res: int, bs: int, dtype, dim: int, heads: int, depth: int):
    """The fused SDPA calls one openradio forward makes at global attention: ``depth`` per block
    pass, on the groups of whole images CPU inference runs together (``cpu_chunk_tokens``), with
    q, k, v strided out of one (b, n, 3, H, hd) tensor as the blocks slice them."""
    import torch.nn.functional as F

    n = (res // model.patch_size) ** 2 + model.num_prefix_tokens
    limit = model.cpu_chunk_tokens
    chunk = bs if not limit or bs == 1 or bs * n <= limit else max(1, limit // n)
    qkvs = [
        torch.randn(min(chunk, bs - s), n, 3, heads, dim // heads, dtype=dtype).permute(2, 0, 3, 1, 4).unbind(0)
        for s in range(0, bs, chunk)
    ]

    def run():
        for _ in range(depth):
            for q, k, v in qkvs:
                F.scaled_dot_product_attention(q, k, v)

    return run, depth * bs * 4 * n * n * dim


def cell(
    model, vit, hf, res, bs, window, dtype, rounds, peak, threads, dim, depth, weights=False, breakdown=False
) -> None:
    """One row. bf16 cells run twice: under autocast (float32 weights cast at every matmul), and
    with ``weights=True`` every contestant's weights held in bf16 (openradio:
    ``set_compute_dtype``, the fused oneDNN blocks where the CPU has them; timm and transformers:
    ``.to(torch.bfloat16)`` with a bf16 input). The MFU peak is a bf16 x bf16 ``torch.mm``."""
    import copy
    import gc

    x = torch.rand(bs, 3, res, res)
    ctx = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
        if dtype == torch.bfloat16 and not weights
        else (lambda: torch.autocast("cpu", enabled=False))
    )
    if weights:
        model = copy.deepcopy(model).set_compute_dtype(dtype)
        vit = copy.deepcopy(vit).to(dtype)
        hf = copy.deepcopy(hf).to(dtype) if hf is not None else None
    xb = x.to(dtype) if weights else x
    fns = {"openradio": lambda: model(x, vitdet_window=window)}
    if window is None:  # the baselines have no windowed mode: they are compared at global attention
        fns["timm"] = lambda: vit(xb)
        if hf is not None:
            fns["hf"] = lambda: hf(pixel_values=xb)
    # the peak in the cell's own dtype: bf16 operands for bf16 cells (float32 operands under
    # autocast would time the casts too and understate the peak)
    mm_a, mm_b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    fns["matmul"] = lambda: torch.mm(mm_a, mm_b)
    attn_flops = 0
    if breakdown and window is None:
        heads = SHAPES_BY_DIM.get(dim, dim // 64)
        fns["attention"], attn_flops = attention_core(model, res, bs, dtype, dim, heads, depth)
    times = {k: [] for k in fns}
    names = list(fns)
    with torch.inference_mode(), ctx():
        gc.collect()
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        before = _rss("VmRSS")
        fns["openradio"]()
        mem = _rss("VmHWM") - before
        for k in names[1:]:
            fns[k]()
        names = [k for k in names if k not in ("matmul", "attention")]
        for r in range(rounds):
            for k in names if r % 2 == 0 else names[::-1]:
                if k == "openradio":  # the matmul peak right next to the model call
                    times["matmul"].append(min(seconds(fns["matmul"]) for _ in range(2)))
                    if "attention" in fns:
                        times["attention"].append(seconds(fns["attention"]))
                times[k].append(seconds(fns[k]))
    t = statistics.median(times["openradio"])
    ratio = {k: statistics.median(b / o for b, o in zip(times[k], times["openradio"])) for k in names[1:]}
    fl = model_flops(dim, depth, 16, res, bs, model.num_prefix_tokens, model._schedule(), window)
    mfu = statistics.median(fl / o / (2 * 2048**3 / m) for o, m in zip(times["openradio"], times["matmul"]))
    mode = "global" if window is None else f"vitdet-{window}"
    dname = str(dtype).replace("torch.", "")
    dname = ("bf16 w" if weights else "bf16 ac") if dtype == torch.bfloat16 else dname
    vs_t = f"x{ratio['timm']:.2f}" if "timm" in ratio else "-"
    vs_h = f"x{ratio['hf']:.2f}" if "hf" in ratio else "-"
    print(
        f"{threads:3d} {res:5d} {bs:3d} {mode:9} {dname:8} {t * 1e3:12.0f} {vs_t:>8} "
        f"{vs_h:>7} {100 * mfu:5.0f}% {mem / 2**20:9.0f}",
        flush=True,
    )
    if attn_flops:
        ta = statistics.median(times["attention"])
        pk = statistics.median(2 * 2048**3 / m for m in times["matmul"])
        print(
            f"{'':>22} attention core {ta * 1e3:.0f} ms = {100 * ta / t:.0f} % of openradio's time, at "
            f"{100 * attn_flops / ta / pk:.0f} % of the matmul peak; the rest at "
            f"{100 * (fl - attn_flops) / max(t - ta, 1e-9) / pk:.0f} % MFU; MFU ceiling with this attention "
            f"core and everything else at the peak: {100 * fl / (ta + (fl - attn_flops) / pk) / pk:.0f} %",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
