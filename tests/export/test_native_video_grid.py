"""The whole grid of RadioConfig architectures: SwiGLU x layer scale x temporal patch size (1 =
images only, 2, 4) x registers x CLS tokens, transformers -> openradio and back, bit for bit."""

from __future__ import annotations

import itertools

import pytest
import torch
from _native_radio import Case, assert_same_outputs, load, random_hf_model

from openradio.formats.hf import save_transformers

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "RadioModel"):
    pytest.skip("this transformers release has no native RadioModel", allow_module_level=True)

torch.set_num_threads(1)

GRID = [
    Case(swiglu=s, layerscale=ls, temporal=t, registers=r, cls=c)
    for s, ls, t, r, c in itertools.product([False, True], [False, True], [None, 2, 4], [0, 3], [1, 2, 4])
]
GRID += [Case(cls=0, registers=0), Case(cls=0, registers=3, temporal=2, swiglu=True)]  # no summary at all


@pytest.mark.parametrize("case", GRID, ids=Case.id)
def test_every_architecture_both_ways(case, tmp_path):
    hf = random_hf_model(transformers, case, seed=len(GRID))
    hf.save_pretrained(tmp_path / "native")
    model = load(tmp_path / "native")
    assert_same_outputs(hf, model, case)
    # and the model openradio writes back is the same one for transformers
    back = transformers.RadioModel.from_pretrained(save_transformers(model, tmp_path / "back")).eval()
    assert back.config.use_swiglu_ffn is case.swiglu and back.config.video_temporal_patch_size == case.temporal
    assert back.config.num_registers == case.registers and back.config.num_cls_tokens == case.cls
    assert_same_outputs(back, model, case, seed=2)
