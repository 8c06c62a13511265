"""Training checkpoints: atomic writes, keep-last-K, fallback past a truncated newest file, RNG state."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch

from openradio.distill.checkpointing import CheckpointManager, capture_rng_state, check_weights_only, restore_rng_state


def _training_state(seed: int) -> dict:
    """What a trainer saves: model/optimizer state dicts, scalars, lists, RNG state."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    model(torch.randn(3, 4)).square().mean().backward()
    opt.step()
    sched.step()
    return {
        "step": seed,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "data": {"kind": "sampler", "sampler": {"epoch": 1, "position": 6}, "skipped": 2},
        "history": [0.5, 0.25],
        "rng": capture_rng_state(),
        "config": {"lr": 1e-3, "betas": (0.9, 0.999)},
    }


def _assert_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_equal(x, y)
    else:
        assert a == b


def test_save_load_and_keep_last(tmp_path):
    mgr = CheckpointManager(tmp_path / "ckpt", keep_last=2)
    assert mgr.load_latest() is None  # nothing yet (the folder does not even exist)
    states = {step: _training_state(step) for step in (10, 20, 30, 40)}
    for step, state in states.items():
        path = mgr.save(state, step)
        assert path.name == f"step-{step:08d}.pt"
    assert mgr.steps() == [30, 40]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-00000030.pt", "step-00000040.pt"]
    state, step = mgr.load_latest()
    assert step == 40
    _assert_equal(state, states[40])
    _assert_equal(mgr.load(30), states[30])
    # the optimizer state loads back into a fresh optimizer (plain types only)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    model.load_state_dict(state["model"])
    torch.optim.AdamW(model.parameters()).load_state_dict(state["optimizer"])


def test_atomic_write_leaves_no_temporary_and_survives_a_crash_mid_save(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    good = _training_state(1)
    mgr.save(good, 100)
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000100.pt"]

    real_save = torch.save

    def dying_save(obj, f, *a, **kw):  # writes half a file, then the process "dies"
        real_save(obj, f, *a, **kw)
        f.truncate(f.tell() // 2)
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        mgr.save(_training_state(2), 200)
    monkeypatch.setattr(torch, "save", real_save)
    # no half-written checkpoint under a final name, no temporary left behind
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000100.pt"]
    state, step = mgr.load_latest()
    assert step == 100
    _assert_equal(state, good)
    # a temporary orphaned by a hard kill (no except clause ran) is removed by the next save
    (tmp_path / ".tmp-step-abc123.pt").write_bytes(b"partial")
    mgr.save(good, 300)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000100.pt", "step-00000300.pt"]


def test_truncated_newest_is_skipped_with_a_warning(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    s1, s2 = _training_state(1), _training_state(2)
    mgr.save(s1, 1000)
    newest = mgr.save(s2, 2000)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])  # a file system that lost the tail
    with pytest.warns(UserWarning, match="step-00002000.pt"):
        state, step = mgr.load_latest()
    assert step == 1000
    _assert_equal(state, s1)
    # a non-writer (rank > 0) reads the same, and never writes
    reader = CheckpointManager(tmp_path, keep_last=1, is_writer=False)
    with pytest.warns(UserWarning, match="step-00002000.pt"):
        assert reader.load_latest()[1] == 1000
    assert reader.save(s2, 3000) is None and mgr.steps() == [1000, 2000]
    # saving the same step again replaces the corrupt file
    mgr.save(s2, 2000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state, step = mgr.load_latest()
    assert step == 2000
    _assert_equal(state, s2)


def test_every_checkpoint_unreadable_raises(tmp_path):
    mgr = CheckpointManager(tmp_path)
    mgr.save({"x": torch.ones(3)}, 5)
    (tmp_path / "step-00000005.pt").write_bytes(b"garbage")
    (tmp_path / "step-00000006.pt").write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="none of the 2 checkpoints"):
        mgr.load_latest()


def test_state_must_be_weights_only_loadable(tmp_path):
    import argparse

    mgr = CheckpointManager(tmp_path)
    with pytest.raises(TypeError, match=r"state\['args'\].*Namespace.*vars"):
        mgr.save({"args": argparse.Namespace(lr=1.0)}, 1)
    with pytest.raises(TypeError, match=r"state\['meta'\]\['lr'\].*numpy.*item"):
        mgr.save({"meta": {"lr": np.float32(1.0)}}, 1)
    with pytest.raises(TypeError, match="numpy"):
        check_weights_only({"a": [np.zeros(2)]})
    assert not list(tmp_path.iterdir())  # refused before anything was written
    check_weights_only({"ok": [1, 2.0, "s", b"b", None, (torch.zeros(1), torch.float16, torch.Size([2]))]})
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)


def test_rng_capture_restore_reproduces_draws(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    state = capture_rng_state()
    expected = (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(),
        torch.rand(4),
        torch.randint(0, 100, (3,)),
    )
    # through a real checkpoint, so the state must be weights_only-loadable
    mgr = CheckpointManager(tmp_path)
    mgr.save({"rng": state}, 7)
    restored, _ = mgr.load_latest()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(restored["rng"])
    again = (
        random.random(),
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(),
        torch.rand(4),
        torch.randint(0, 100, (3,)),
    )
    assert again[:4] == expected[:4]
    assert torch.equal(again[4], expected[4]) and torch.equal(again[5], expected[5])
    assert isinstance(state["torch"], torch.Tensor) and state["torch"].dtype == torch.uint8
    assert isinstance(state["python"]["state"], list) and state["numpy"]["keys"].dtype == torch.int64
