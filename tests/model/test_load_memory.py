"""Loading without a second copy: memory-mapped checkpoint, backbone built on the meta device,
tensors adopted (issue 16, item 5). The loaded weights must be bit-identical to the copying path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import openradio
from openradio.formats.build import build_radio
from openradio.formats.official import load_checkpoint_file, select_state
from openradio.verify.testing import make_tiny_checkpoint

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "load_memory.py"


def _copying_load(path, **kw):
    chk = load_checkpoint_file(path)
    state, is_ema = select_state(chk)
    return build_radio(chk["args"], state, is_ema=is_ema, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mmap_assign_load_is_bit_identical(tmp_path, dtype):
    path = make_tiny_checkpoint(tmp_path / "m.pth.tar", dtype=dtype, with_ema=True)
    new = openradio.radio_model(str(path), adaptor_names=["clip", "sam"])
    old = _copying_load(path, adaptor_names=["clip", "sam"])
    a, b = new.state_dict(), old.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert not any(t.is_meta for t in list(new.parameters()) + list(new.buffers()))
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ya, yb = new(x), old(x)
    for name in ya:
        assert torch.equal(ya[name].summary, yb[name].summary) and torch.equal(ya[name].features, yb[name].features)


def test_assign_adopts_the_checkpoint_tensors(tmp_path):
    """No copy: the model's weights are the (memory-mapped) checkpoint's tensors themselves."""
    path = make_tiny_checkpoint(tmp_path / "m.pth.tar")
    chk = load_checkpoint_file(path, mmap=True)
    state, _ = select_state(chk)
    model = build_radio(chk["args"], state, assign=True)
    w = model.model.blocks[0].attn.qkv.weight
    assert w.data_ptr() == state["base_model.blocks.0.attn.qkv.weight"].data_ptr()
    copied = build_radio(chk["args"], state, assign=False)
    assert copied.model.blocks[0].attn.qkv.weight.data_ptr() != w.data_ptr()
    assert torch.equal(copied.model.blocks[0].attn.qkv.weight, w)


def test_return_checkpoint_gives_a_model_with_its_own_copy(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "m.pth.tar")
    model, chk = openradio.radio_model(str(path), return_checkpoint=True)
    w = model.model.blocks[0].attn.qkv.weight
    assert w.data_ptr() != chk["state_dict"]["base_model.blocks.0.attn.qkv.weight"].data_ptr()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_loading_peaks_near_the_model_size(tmp_path):
    """benchmarks/load_memory.py's child in a fresh process: the new path's peak RSS stays within
    1.1x its steady RSS (plus a few MiB of interpreter noise); the old path needs about twice."""
    path = make_tiny_checkpoint(
        tmp_path / "m.pth.tar", embed_dim=256, depth=6, num_heads=4, cpe_max_size=2048, arch="vit_base_patch16_224"
    )
    res = {}
    for which in ("old", "new"):
        out = subprocess.run(
            [sys.executable, str(BENCH), "--child", str(path), which],
            capture_output=True,
            text=True,
            check=True,
            env={"OMP_NUM_THREADS": "1", **__import__("os").environ},
        )
        res[which] = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 2**20
    new, old = res["new"], res["old"]
    assert new["check"] == old["check"]
    assert new["peak"] <= 1.1 * new["steady"] + 4 * mib, new
    assert old["peak"] >= 1.5 * new["peak"], (old, new)
