"""finetune seg: the four layouts, the three heads, frozen / last:N / full, exact resume, export."""

from __future__ import annotations

import json

import pytest
import torch

import openradio
from openradio.dense.datasets import detect_layout, read_split
from openradio.dense.finetune import (
    FinetuneConfig,
    build_segmentation_model,
    finetune_segmentation,
    load_segmenter,
    param_groups,
)

from ._synth import NUM_CLASSES, write_layout

FAST = dict(resolution=64, epochs=12, batch_size=4, lr=0.05, warmup_epochs=1, weight_decay=1e-4)


def _cfg(**kw):
    args = dict(FAST, num_classes=NUM_CLASSES)
    args.update(kw)
    return FinetuneConfig(**args)


@pytest.mark.parametrize("layout", ["folders", "ade20k", "voc", "cityscapes"])
def test_layouts_read_and_learn(tiny_model, tmp_path, layout):
    root = write_layout(tmp_path / layout, layout)
    assert detect_layout(root) == layout
    train, val = read_split(root, "auto", "train"), read_split(root, layout, "val")
    assert (len(train), len(val)) == (8, 4)
    t = train.target(0)
    assert t.dtype == torch.int64 and set(t.unique().tolist()) <= set(range(NUM_CLASSES)) | {255}
    if layout != "folders":
        assert (t == 255).any()  # each layout's unlabelled pixels became the ignore index
    k = train.num_classes or NUM_CLASSES
    r = finetune_segmentation(tiny_model, train, val, _cfg(num_classes=k), progress=False)
    assert r.miou >= 0.95, r.history[-1]
    assert len(r.history) == FAST["epochs"] and all("iou" in h for h in r.history)


def test_frozen_mode_leaves_backbone_bit_identical(tiny_model, tmp_path):
    root = write_layout(tmp_path / "f", "folders")
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    r = finetune_segmentation(
        tiny_model,
        read_split(root, "folders", "train"),
        read_split(root, "folders", "val"),
        _cfg(head="pyramid", epochs=3),
        progress=False,
        out_dir=tmp_path / "run",
    )
    after = tiny_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not (tmp_path / "run" / "backbone.pth.tar").exists()
    assert (tmp_path / "run" / "predictions.png").is_file()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3
    # the head alone changed: it is in head.safetensors and loads back onto the same backbone
    seg = load_segmenter(tmp_path / "run", version=str(tiny_model.version))
    x = torch.rand(1, 3, 64, 64)
    r.model.eval()
    with torch.no_grad():
        assert torch.equal(seg(x), r.model(x))


def test_resume_equals_uninterrupted(tiny_checkpoint, tmp_path):
    root = write_layout(tmp_path / "d", "folders")
    train, val = read_split(root, "folders", "train"), read_split(root, "folders", "val")
    cfg = dict(mode="last:1", head="linear4", epochs=3, backbone_lr=1e-3)

    def fresh():
        return openradio.radio_model(str(tiny_checkpoint), text_towers=False)

    full = finetune_segmentation(fresh(), train, val, _cfg(**cfg), out_dir=tmp_path / "a", progress=False)
    part = finetune_segmentation(fresh(), train, val, _cfg(**cfg), out_dir=tmp_path / "b", progress=False, stop_after=1)
    assert len(part.history) == 1 and not (tmp_path / "b" / "head.json").exists()
    resumed = finetune_segmentation(
        fresh(), train, val, _cfg(**cfg), out_dir=tmp_path / "b", resume=True, progress=False
    )
    assert resumed.history == full.history
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # last:1 trained block 3 only; the export loads with radio_model plus the head
    ref = fresh()
    assert not torch.equal(a["backbone.model.model.blocks.3.mlp.fc1.weight"], ref.blocks[3].mlp.fc1.weight)
    assert torch.equal(a["backbone.model.model.blocks.2.mlp.fc1.weight"], ref.blocks[2].mlp.fc1.weight)
    exported = openradio.radio_model(str(tmp_path / "b" / "backbone.pth.tar"), text_towers=False)
    assert torch.equal(exported.blocks[3].mlp.fc1.weight, b["backbone.model.model.blocks.3.mlp.fc1.weight"])
    seg = load_segmenter(tmp_path / "b")
    x = torch.rand(2, 3, 64, 64)
    resumed.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(seg(x), resumed.model(x))
    assert json.loads((tmp_path / "b" / "head.json").read_text())["head"] == "linear4"
    with pytest.raises(ValueError, match="same --head"):
        finetune_segmentation(
            fresh(),
            train,
            val,
            _cfg(mode="last:1", head="linear", epochs=3),
            out_dir=tmp_path / "b",
            resume=True,
            progress=False,
        )


def test_full_mode_layer_decay_groups(tiny_model):
    cfg = _cfg(mode="full", backbone_lr=1e-3, layer_decay=0.5)
    model = build_segmentation_model(tiny_model, cfg)
    lrs = {}
    for g in param_groups(model, cfg):
        for p in g["params"]:
            lrs[id(p)] = (g["lr"], g["weight_decay"])
    named = dict(model.named_parameters())
    blk = lambda i: lrs[id(named[f"backbone.model.model.blocks.{i}.attn.qkv.weight"])][0]  # noqa: E731
    assert [blk(i) for i in range(4)] == pytest.approx([1e-3 * 0.5**3, 1e-3 * 0.5**2, 1e-3 * 0.5, 1e-3])
    assert lrs[id(named["backbone.model.model.patch_generator.embedder.weight"])][0] == pytest.approx(1e-3 * 0.5**4)
    assert lrs[id(named["head.conv.weight"])] == (cfg.lr, cfg.weight_decay)
    assert lrs[id(named["head.conv.bias"])][1] == 0.0
    # every trainable parameter is in exactly one group, the input conditioner in none
    assert len(lrs) == sum(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="1..4"):
        build_segmentation_model(tiny_model, _cfg(mode="last:9"))


def test_bf16_autocast_runs(tiny_model, tmp_path):
    """The bf16 autocast path (the default on CUDA) on the CPU: losses finite, logits float32."""
    root = write_layout(tmp_path / "f", "folders", n_train=4, n_val=2)
    r = finetune_segmentation(
        tiny_model,
        read_split(root, "folders", "train"),
        read_split(root, "folders", "val"),
        _cfg(epochs=1, amp=True, head="pyramid", mode="last:1"),
        progress=False,
    )
    assert r.history[0]["loss"] == r.history[0]["loss"] and 0 <= r.miou <= 1


@pytest.mark.parametrize(
    "head,mode,lr", [("linear4", "frozen", 0.05), ("pyramid", "frozen", 3e-3), ("linear", "full", 0.05)]
)
def test_heads_and_modes_learn(tiny_checkpoint, tmp_path, head, mode, lr):
    root = write_layout(tmp_path / "f", "folders")
    model = openradio.radio_model(str(tiny_checkpoint), text_towers=False)
    r = finetune_segmentation(
        model,
        read_split(root, "folders", "train"),
        read_split(root, "folders", "val"),
        _cfg(head=head, mode=mode, lr=lr, backbone_lr=1e-4),
        progress=False,
    )
    assert r.miou >= 0.95, r.history[-1]
