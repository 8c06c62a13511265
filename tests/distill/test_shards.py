"""Webdataset shards: make-shards CLI, rank x worker split (exactly once per epoch), resume, corrupt samples."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch

from openradio.cli import main
from openradio.distill.data import BatchStream, build_dataset, make_loader
from openradio.distill.shards import ShardDataset, ShardLoader, read_shard_index, resolve_shards, write_shards
from openradio.distill.transforms import make_train_transform


def write_images(folder: Path, size=(48, 40)) -> list[Path]:
    """Images bundled with scikit-image, shrunk, as JPEG/PNG in a folder with a sub-folder."""
    from PIL import Image
    from skimage import data

    (folder / "nested").mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "camera", "logo")):
        ext = "png" if i % 3 == 0 else "jpg"
        p = folder / ("nested" if i % 2 else "") / f"{name}.{ext}"
        Image.fromarray(getattr(data, name)()).resize(size).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, set[str]]:
    """7 real photographs (nested folder) + 1 corrupt JPEG; returns the folder and the good relative paths."""
    d = tmp_path_factory.mktemp("src")
    paths = write_images(d, size=(48, 40))
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated nonsense")
    return d, {p.relative_to(d).as_posix() for p in paths}


@pytest.fixture(scope="module")
def shards(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    assert main(["data", "make-shards", str(source[0]), str(out), "--max-count", "2", "--quiet"]) == 0
    return out


def test_make_shards_writes_tars_and_index(source, shards):
    index = read_shard_index(shards)
    names = [e["name"] for e in index["shards"]]
    assert names == [f"shard-{i:06d}.tar" for i in range(4)]  # 8 files, 2 per shard
    assert [e["count"] for e in index["shards"]] == [2, 2, 2, 2] and index["total"] == 8
    stored, exts = set(), Counter()
    for name in names:
        with tarfile.open(shards / name) as tf:
            members = tf.getnames()
            for m in members:
                key, ext = m.split(".", 1)
                exts[ext] += 1
                assert key.isdigit()
                if ext == "path.txt":
                    stored.add(tf.extractfile(m).read().decode())
    assert stored == source[1] | {"broken.jpg"}
    assert exts["path.txt"] == 8 and exts["jpg"] + exts["png"] == 8
    # the original encoded bytes are stored (not re-encoded), under the file's extension
    for name in names:
        with tarfile.open(shards / name) as tf:
            files = {m: tf.extractfile(m).read() for m in tf.getnames()}
        for m, data in files.items():
            if m.endswith(".path.txt"):
                key = m.split(".")[0]
                rel = data.decode()
                ext = Path(rel).suffix.lstrip(".")
                assert files[f"{key}.{ext}"] == (source[0] / rel).read_bytes()


def test_make_shards_cli_errors(source, shards, tmp_path, capsys):
    assert main(["data", "make-shards", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert "source not found" in capsys.readouterr().err
    assert main(["data", "make-shards", str(source[0]), str(shards), "--quiet"]) == 2
    assert "already holds shards" in capsys.readouterr().err
    assert main(["data", "make-shards", str(source[0]), str(tmp_path / "o"), "--max-count", "0"]) == 2
    assert "--max-count" in capsys.readouterr().err
    assert main(["data", "make-shards", str(source[0]), str(tmp_path / "o"), "--max-size", "lots"]) == 2
    assert "--max-size" in capsys.readouterr().err
    assert main(["data"]) == 2
    assert "make-shards" in capsys.readouterr().err
    # --verify leaves the corrupt file out
    out = tmp_path / "verified"
    capsys.readouterr()
    assert main(["data", "make-shards", str(source[0]), str(out), "--max-count", "3", "--verify", "--quiet"]) == 0
    assert "openradio data: warning: leaving out" in capsys.readouterr().err  # the CLI's one-line warnings
    index = read_shard_index(out)
    assert index["total"] == 7 and [e["count"] for e in index["shards"]] == [3, 3, 1]


def _one_epoch(shards, rank, world_size, num_workers, epoch_runs=1, **kw):
    ds = ShardDataset(shards, make_train_transform(24), rank=rank, world_size=world_size, seed=7, **kw)
    loader = make_loader(ds, batch_size=2, num_workers=num_workers, drop_last=False)
    assert isinstance(loader, ShardLoader)
    per_epoch = []
    for _ in range(epoch_runs):
        paths, skipped_before = [], loader.skipped
        for b in loader:
            assert b["image"].shape[1:] == (3, 24, 24) and b["image"].shape[0] == len(b["path"])
            paths += b["path"]
        per_epoch.append((paths, loader.skipped - skipped_before))
    return per_epoch, ds


def test_every_image_once_per_epoch_across_2_ranks_x_2_workers(source, shards):
    good = source[1]
    results = [_one_epoch(shards, rank, 2, num_workers=2, epoch_runs=2) for rank in range(2)]
    for epoch in range(2):
        visited = Counter()
        skipped = 0
        for per_epoch, _ in results:
            paths, s = per_epoch[epoch]
            visited.update(paths)
            skipped += s
        assert set(visited) == good and all(c == 1 for c in visited.values())  # exactly once
        assert skipped == 1  # the corrupt image, counted once per epoch
    ds0, ds1 = results[0][1], results[1][1]
    for epoch in range(2):
        a, b = set(ds0.rank_shards(epoch)), set(ds1.rank_shards(epoch))
        assert not a & b and a | b == set(range(4))
        w = [set(ds0.worker_shards(epoch, i, 2)) for i in range(2)]
        assert not w[0] & w[1] and w[0] | w[1] == a
    assert ds0.rank_shards(0) != ds0.rank_shards(1) or ds1.rank_shards(0) != ds1.rank_shards(1)


def test_uneven_split_still_covers_every_shard_once(shards):
    ds = ShardDataset(shards, rank=0, world_size=1)
    ds.urls = ds.urls + ds.urls[:1]  # pretend there are 5 shards (assignment only; nothing is read)
    ds.counts = None
    for ws, nw in [(2, 2), (3, 1), (2, 3)]:
        for epoch in range(3):
            owners = Counter()
            for r in range(ws):
                d = ShardDataset.__new__(ShardDataset)
                d.__dict__.update(ds.__dict__)
                d.rank, d.world_size = r, ws
                for w in range(nw):
                    owners.update(d.worker_shards(epoch, w, nw))
            assert sorted(owners) == list(range(5)) and set(owners.values()) == {1}
    with pytest.raises(ValueError, match="cannot be split"):
        ShardDataset(shards, rank=0, world_size=5)


def test_same_samples_whatever_the_worker_count(shards):
    def by_key(num_workers):
        ds = ShardDataset(shards, make_train_transform(24), seed=3)
        out = {}
        for b in make_loader(ds, batch_size=3, num_workers=num_workers, drop_last=False):
            out.update({k: img for k, img in zip(b["key"], b["image"])})
        return out

    a, b = by_key(0), by_key(2)
    assert a.keys() == b.keys() and len(a) == 7
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_mid_epoch_gives_the_same_next_batches(shards):
    """repeat=True stream over 2 workers: stop after k batches, restore into a fresh loader, compare."""

    def loader():
        ds = ShardDataset(shards, make_train_transform(16), seed=5, repeat=True, shuffle_buffer=3)
        return make_loader(ds, batch_size=2, num_workers=2, drop_last=True)

    def take(it, n):
        return [next(it) for _ in range(n)]

    full = take(iter(loader()), 9)  # crosses into the second and third epochs
    for k in (2, 5):
        first = loader()
        it = iter(first)
        take(it, k)
        state = json.loads(json.dumps(first.state_dict()))  # plain types only
        del it
        resumed = loader()
        resumed.load_state_dict(state)
        rest = take(iter(resumed), 9 - k)
        for want, got in zip(full[k:], rest):
            assert want["key"] == got["key"] and torch.equal(want["image"], got["image"])


def test_resume_with_other_worker_count_restarts_the_epoch(shards):
    ds = ShardDataset(shards, seed=1)
    first = make_loader(ds, batch_size=2, num_workers=2)
    it = iter(first)
    next(it)
    state = first.state_dict()
    del it
    other = make_loader(ShardDataset(shards, seed=1), batch_size=2, num_workers=0)
    with pytest.warns(UserWarning, match="num_workers"):
        other.load_state_dict(state)
    assert other.epoch == 0 and other.workers == [None]


def test_inputs_patterns_lists_and_build_dataset(shards):
    pattern = str(shards / "shard-{000000..000003}.tar")
    urls, counts = resolve_shards(pattern)
    assert [Path(u).name for u in urls] == [f"shard-{i:06d}.tar" for i in range(4)] and counts is None
    urls2, counts2 = resolve_shards(shards / "index.json")
    assert urls2 == [str(shards / Path(u).name) for u in urls] and counts2 == [2, 2, 2, 2]
    urls3, _ = resolve_shards([str(shards / "shard-000001.tar"), str(shards / "shard-000000.tar")])
    assert [Path(u).name for u in urls3] == ["shard-000001.tar", "shard-000000.tar"]
    with pytest.raises(FileNotFoundError, match=r"shard-000008.tar \(and 1 more\)"):
        resolve_shards(str(shards / "shard-{000008..000009}.tar"))
    ds = build_dataset(str(shards), transform=make_train_transform(16), seed=2, rank=1, world_size=2)
    assert isinstance(ds, ShardDataset) and ds.repeat and ds.rank == 1 and ds.num_samples == 8
    assert ds.epoch_count(0) == 4
    stream = BatchStream(ds, 2, num_workers=0)
    got = [next(stream) for _ in range(5)]  # endless: crosses epochs
    assert all(b["image"].shape[1:] == (3, 16, 16) for b in got)
    assert sum(b["image"].shape[0] + b["skipped"] for b in got) == 10  # corrupt samples make a batch smaller
    assert stream.epoch >= 1
    assert stream.state_dict()["kind"] == "shards"


def test_write_shards_size_limit(source, tmp_path):
    total = sum(p.stat().st_size for p in source[0].rglob("*") if p.is_file() and p.suffix != ".txt")
    shards = write_shards(source[0], tmp_path / "s", max_count_per_shard=100, max_size=total / 3, progress=False)
    assert 3 <= len(shards) <= 5  # a shard closes once it holds max_size bytes
    assert sum(e["count"] for e in read_shard_index(tmp_path / "s")["shards"]) == 8
