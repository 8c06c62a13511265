"""Training data: image folders/lists, seeded augmentation, the resumable rank-sharded sampler, loaders."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from openradio.distill.data import (
    BatchStream,
    ImageListDataset,
    ResumableSampler,
    SampleKey,
    build_dataset,
    collate_skip_none,
    make_loader,
)
from openradio.distill.sampling import sample_seed
from openradio.distill.transforms import ResizeCenterCrop, make_train_transform
from openradio.inputs.imageio import list_images


@functools.lru_cache(maxsize=1)
def _photos() -> list[tuple[str, np.ndarray]]:
    """Images bundled with scikit-image (no download): colour photos, a greyscale one and an RGBA logo."""
    from skimage import data

    names = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "camera", "logo")
    return [(n, getattr(data, n)()) for n in names]


def write_images(folder: Path, size=(72, 56)) -> list[Path]:
    """Real photographs, shrunk, as JPEG/PNG in a folder with a sub-folder; plus a corrupt file."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nested").mkdir(exist_ok=True)
    paths = []
    for i, (name, arr) in enumerate(_photos()):
        ext = "png" if i % 3 == 0 else "jpg"
        p = folder / ("nested" if i % 2 else "") / f"{name}.{ext}"
        Image.fromarray(arr).resize(size).save(p)
        paths.append(p)
    (folder / "notes.txt").write_text("not an image")  # ignored: not an image extension
    return paths


@pytest.fixture
def image_dir(tmp_path) -> Path:
    d = tmp_path / "images"
    write_images(d)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return d


def _stream(ds, sampler, batch_size, n_batches, num_workers=0):
    """``n_batches`` batches, continuing across epochs, as lists of (indices, images)."""
    bs = BatchStream(ds, batch_size, sampler, num_workers=num_workers)
    out = [next(bs) for _ in range(n_batches)]
    return [(b["index"].tolist(), b["image"]) for b in out], bs


def test_list_images_folder_recursive_and_file_list(tmp_path, image_dir):
    found = list_images(image_dir)
    names = sorted(p.name for p in found)
    assert len(found) == len(_photos()) + 1 and "broken.jpg" in names and "notes.txt" not in names
    assert any(p.parent.name == "nested" for p in found)
    # a file list: relative to the list's folder, comments and blank lines ignored
    lst = tmp_path / "lists" / "train.txt"
    lst.parent.mkdir()
    rel = [Path("..") / "images" / p.relative_to(image_dir) for p in found[:3]]
    lst.write_text("# training images\n\n" + "\n".join(str(r) for r in rel) + "\n")
    ds = ImageListDataset(lst)
    assert [p.resolve() for p in ds.paths] == [p.resolve() for p in found[:3]]
    with pytest.raises(FileNotFoundError, match="not found"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        list_images(tmp_path / "empty")


def test_transform_shapes_range_and_seed(sample_images):
    # a shrunk photograph (not square, to exercise the aspect-ratio sampling) keeps this fast
    img = torch.nn.functional.interpolate(sample_images["astronaut"][None], size=(96, 128), mode="area")[0]
    t = make_train_transform(48, scale=(0.35, 1.0))
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    a, b, c = t(img, generator=g(1)), t(img, generator=g(1)), t(img, generator=g(2))
    assert a.shape == (3, 48, 48) and a.dtype == torch.float32
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    # crop areas respect the scale range
    h, w = img.shape[-2:]
    for s in range(50):
        top, left, ch, cw = t.get_params(h, w, g(s))
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        assert 0.35 * h * w * 0.95 <= ch * cw <= h * w
    # flipping: with flip on, some seeds give the mirror image of the unflipped crop
    noflip = make_train_transform(48, flip=False)
    mirrored = sum(torch.equal(t(img, generator=g(s)), noflip(img, generator=g(s)).flip(-1)) for s in range(20))
    same = sum(torch.equal(t(img, generator=g(s)), noflip(img, generator=g(s))) for s in range(20))
    assert mirrored > 0 and same > 0 and mirrored + same == 20
    with pytest.raises(ValueError, match="scale"):
        make_train_transform(32, scale=(0.5, 0.2))


def test_resize_center_crop_is_a_function_of_the_image_and_checks_like_the_random_crop(sample_images):
    img = torch.nn.functional.interpolate(sample_images["astronaut"][None], size=(96, 128), mode="area")[0]
    for interp in ("bilinear", "bicubic"):
        t = ResizeCenterCrop(48, interpolation=interp)
        a = t(img, generator=torch.Generator().manual_seed(1))
        b = t(img, generator=torch.Generator().manual_seed(2))
        assert a.shape == (3, 48, 48) and torch.equal(a, b)
        assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    # the centre crop of the resized image: its middle column equals the resized image's middle
    full = torch.nn.functional.interpolate(
        img[None], size=(48, 64), mode="bilinear", antialias=True, align_corners=False
    )[0]
    assert torch.allclose(ResizeCenterCrop(48)(img)[:, :, 24], full[:, :, 32], atol=1e-5)
    for make in (lambda i: ResizeCenterCrop(32, interpolation=i), lambda i: make_train_transform(32, interpolation=i)):
        with pytest.raises(ValueError, match="interpolation must be one of"):
            make("lanczos")
        with pytest.raises(TypeError, match=r"\(C, H, W\) image tensor"):
            make("bilinear")(img[None])


def test_corrupt_image_is_skipped_and_counted(image_dir, caplog):
    ds = ImageListDataset(image_dir, make_train_transform(32), seed=0)
    bad = next(i for i, p in enumerate(ds.paths) if p.name == "broken.jpg")
    assert ds[bad] is None and ds.skipped == 1
    assert "broken.jpg" in caplog.text
    loader = make_loader(ds, batch_size=len(ds), sampler=ResumableSampler(len(ds), shuffle=False), drop_last=False)
    (batch,) = list(loader)
    assert batch["image"].shape == (len(ds) - 1, 3, 32, 32)
    assert batch["skipped"] == 1 and bad not in batch["index"].tolist()
    # an all-corrupt batch still has an (empty) image tensor
    empty = collate_skip_none([None, None])
    assert empty["image"].shape[0] == 0 and empty["skipped"] == 2
    # a run of whole-folder batches: every epoch skips the corrupt file once and counts it
    stream = BatchStream(ds, len(ds), ResumableSampler(len(ds), seed=3))
    batches = [next(stream) for _ in range(3)]
    assert all(b["image"].shape[0] == len(ds) - 1 and bad not in b["index"].tolist() for b in batches)
    assert stream.skipped == 3 and stream.epoch == 2


def test_sampler_ranks_disjoint_and_covering():
    n = 23
    for ws in (2, 3):
        for epoch in (0, 1):
            parts = []
            for r in range(ws):
                s = ResumableSampler(n, rank=r, world_size=ws, seed=5, drop_last=True)
                s.set_epoch(epoch)
                parts.append(s.epoch_indices())
                assert len(s) == n // ws == len(list(s))
            flat = [i for p in parts for i in p]
            assert len(flat) == len(set(flat)) == (n // ws) * ws  # disjoint, only the tail trimmed
            # without drop_last every item is covered (padding repeats a few)
            cover = set()
            for r in range(ws):
                s = ResumableSampler(n, rank=r, world_size=ws, seed=5, drop_last=False)
                s.set_epoch(epoch)
                cover |= set(s.epoch_indices())
            assert cover == set(range(n))
    s = ResumableSampler(n, seed=5)
    assert s.epoch_indices(0) != s.epoch_indices(1)  # a new permutation per epoch
    assert sorted(s.epoch_indices(1)) == list(range(n))
    assert ResumableSampler(n, seed=6).epoch_indices(0) != s.epoch_indices(0)
    keys = list(s)
    assert all(isinstance(k, SampleKey) and k.epoch == 0 for k in keys)
    with pytest.raises(ValueError, match="rank"):
        ResumableSampler(n, rank=2, world_size=2)


def test_two_runs_identical_and_worker_count_does_not_matter(image_dir):
    ds = ImageListDataset(image_dir, make_train_transform(32), seed=11)
    run1, _ = _stream(ds, ResumableSampler(len(ds), seed=4), 2, 5)
    run2, _ = _stream(ds, ResumableSampler(len(ds), seed=4), 2, 5)
    run3, _ = _stream(ds, ResumableSampler(len(ds), seed=4), 2, 5, num_workers=2)
    for (i1, x1), (i2, x2), (i3, x3) in zip(run1, run2, run3):
        assert i1 == i2 == i3 and torch.equal(x1, x2) and torch.equal(x1, x3)
    # the crops change with the augmentation seed even for the same image order
    other, _ = _stream(
        ImageListDataset(image_dir, make_train_transform(32), seed=12), ResumableSampler(len(ds), seed=4), 2, 5
    )
    assert [i for i, _ in other] == [i for i, _ in run1]
    assert not all(torch.equal(a, b) for (_, a), (_, b) in zip(other, run1))


@pytest.mark.parametrize("k", [1, 3, 4])
def test_resume_continues_with_exactly_the_next_batches(image_dir, k):
    """k batches, save, a fresh sampler/loader from the state: the rest equals the uninterrupted run
    (k=3 stops exactly at an epoch end, k=4 resumes in the second epoch)."""
    ds = ImageListDataset(image_dir, make_train_transform(24), seed=0)
    full, _ = _stream(ds, ResumableSampler(len(ds), seed=9), 2, 8)
    first, stream = _stream(ds, ResumableSampler(len(ds), seed=9), 2, k)
    state = stream.state_dict()
    loaded = torch.load(_roundtrip(state), weights_only=True)  # the state survives a weights_only checkpoint
    fresh = BatchStream(ds, 2, ResumableSampler(len(ds), seed=9), num_workers=2)
    fresh.load_state_dict(loaded)
    rest = [next(fresh) for _ in range(8 - k)]
    for (i, x), b in zip(full[k:], rest):
        assert i == b["index"].tolist() and torch.equal(x, b["image"])
    assert fresh.skipped >= stream.skipped


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_sampler_state_and_plain_loader_protocol(image_dir):
    """The protocol a trainer can drive by hand: iterate, advance, set_epoch at exhaustion."""
    ds = ImageListDataset(image_dir, make_train_transform(16), seed=0)
    s = ResumableSampler(len(ds), seed=1)
    loader = make_loader(ds, 3, s)
    it = iter(loader)
    next(it)
    s.advance(3)
    st = s.state_dict()
    assert st == {
        "epoch": 0,
        "position": 3,
        "seed": 1,
        "num_items": len(ds),
        "rank": 0,
        "world_size": 1,
        "shuffle": True,
        "drop_last": True,
    }
    s2 = ResumableSampler(len(ds), seed=1)
    s2.load_state_dict(st)
    s2.set_epoch(0)  # the same epoch keeps the resumed position
    assert [k.index for k in s2] == s.epoch_indices()[3:]
    s2.set_epoch(1)
    assert s2.position == 0
    with pytest.raises(ValueError, match="seed"):
        ResumableSampler(len(ds), seed=2).load_state_dict(st)
    with pytest.raises(ValueError, match="advance"):
        s.advance(100)
    # another world size: the position is converted through the global order
    st2 = ResumableSampler(20, rank=0, world_size=2, seed=0).state_dict() | {"position": 6}
    s4 = ResumableSampler(20, rank=1, world_size=4, seed=0)
    with pytest.warns(UserWarning, match="world_size"):
        s4.load_state_dict(st2)
    assert s4.position == 3


def test_distributed_loaders_split_one_epoch(image_dir):
    """Two ranks simulated in one process: their batches partition the (trimmed) epoch."""
    ds = ImageListDataset(image_dir, make_train_transform(16), seed=0)
    seen = []
    for rank in range(2):
        s = ResumableSampler(len(ds), rank=rank, world_size=2, seed=2)
        for b in make_loader(ds, 1, s, drop_last=False):
            seen += b["index"].tolist() + ([-1] * b["skipped"])
    good = [i for i in seen if i >= 0]
    assert len(good) == len(set(good)) and len(seen) == (len(ds) // 2) * 2


def test_build_dataset_kinds(tmp_path, image_dir):
    t = make_train_transform(16)
    assert isinstance(build_dataset(str(image_dir), transform=t), ImageListDataset)
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(str(p) for p in list_images(image_dir)))
    ds = build_dataset(str(lst), transform=t, seed=3)
    assert isinstance(ds, ImageListDataset) and len(ds) == len(_photos()) + 1 and ds.seed == 3
    other = ds.with_transform(make_train_transform(8))
    assert other.paths == ds.paths and other[0]["image"].shape[-1] == 8 and ds[0]["image"].shape[-1] == 16
    with pytest.raises(ValueError, match="data.path"):
        build_dataset("")
    with pytest.raises(ValueError, match="kind"):
        build_dataset(str(image_dir), kind="csv")


def test_sample_seed_separates_streams():
    seeds = {sample_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)}
    assert len(seeds) == 450
    assert sample_seed(1, 0, 5) != sample_seed(0, 1, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.Generator().manual_seed(sample_seed(2**70, -1, 3))  # always a valid generator seed
