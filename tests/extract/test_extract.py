"""openradio extract: the layout, its readers, every source kind, bad inputs, resume and refusal,
clip-retrieval's layout, and exactness after SIGKILL at named moments."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import write_test_video

from openradio.cli import main
from openradio.extract import read, read_features
from openradio.extract.sources import list_rows
from openradio.extract.writers import FORMAT, FORMAT_NAME, FORMAT_VERSION, Store, write_part

REPO = Path(__file__).resolve().parents[2]
FAST = ["--resolution", "64", "--no-progress", "--workers", "0"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Twelve real photographs (small) and one of each bad input."""
    from PIL import Image

    from openradio.inputs.sample_data import write_sample_images

    d = tmp_path_factory.mktemp("imgs")
    write_sample_images(d, max_side=96)
    imgs = sorted(p for p in d.iterdir())[:12]
    for p in sorted(d.iterdir())[12:]:
        p.unlink()
    bad = d / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.jpg").write_text("this is not a picture")
    data = imgs[0].read_bytes()
    (bad / "truncated.png").write_bytes(data[: len(data) // 3])
    Image.new("RGB", (6, 40)).save(bad / "small.png")
    return d


def _run(argv, capsys=None):
    rc = main(["extract", *argv])
    return rc


def test_layout_is_readable_by_pyarrow_pandas_and_datasets(folder, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        _run(
            [
                str(folder),
                "--version",
                str(tiny_checkpoint),
                "--out",
                str(out),
                "--adaptor",
                "clip",
                "--features",
                "pooled:2",
                "--part-size",
                "5",
                "--batch-size",
                "3",
                *FAST,
            ]
        )
        == 0
    )
    end = capsys.readouterr().out
    assert "12 ok, 4 skipped (1 empty, 1 too_small, 2 unreadable)" in end and "images/s" in end
    man = json.loads((out / "manifest.json").read_text())
    assert man["format"] == "openradio.extract/1" and man["complete"] and man["num_parts"] == 4
    assert man["model"]["digest"].startswith("sha256:") and man["options"]["resolution"] == 64
    assert [man["parts"][k]["rows"] for k in sorted(man["parts"])] == [5, 5, 5, 1]
    assert set(man["parts"]["00000"]["seconds"]) == {"read", "inference", "write"}
    assert man["totals"]["skipped"] == {"empty": 1, "too_small": 1, "unreadable": 2}
    assert man["last_run"]["end_line"] in end

    table = read(str(out))
    assert table.num_rows == 16 and table.column_names == [
        "key",
        "source",
        "width",
        "height",
        "input_height",
        "input_width",
        "summary",
        "clip_summary",
        "status",
    ]
    assert table.schema.field("summary").type == pa.list_(pa.float32(), 192)
    df = pq.read_table(out / "embeddings" / "part-00000.parquet").to_pandas()
    assert len(df) == 5 and df["summary"][0].shape == (192,) and df["summary"][1] is None
    rows = table.to_pylist()
    status = {r["key"]: r["status"] for r in rows}
    assert status["bad/empty.png"].startswith("empty") and status["bad/small.png"].startswith("too_small")
    assert status["bad/text.jpg"].startswith("unreadable") and status["bad/truncated.png"].startswith("unreadable")
    assert all(r["summary"] is None for r in rows if r["status"] != "ok")
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(min(r["input_height"], r["input_width"]) == 64 for r in ok)

    # the summaries are the model's own, image by image
    import openradio
    from openradio.inputs.imageio import load_image, resize_to_multiple

    model = openradio.radio_model(str(tiny_checkpoint), adaptor_names=["clip"], progress=False).eval()
    r0 = ok[0]
    x = resize_to_multiple(load_image(r0["source"]), 64, model.min_resolution_step)[None]
    with torch.inference_mode():
        y = model(x, feature_fmt="NCHW")
    np.testing.assert_allclose(r0["summary"], y["backbone"].summary[0].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r0["clip_summary"], y["clip"].summary[0].numpy(), rtol=1e-4, atol=1e-5)
    feats = read_features(str(out), 0)
    f = feats[f"{r0['key']}/clip"]
    assert f.dtype == torch.float16 and f.shape == (y["clip"].features.shape[1], 2, 2)
    ref = torch.nn.functional.adaptive_avg_pool2d(y["clip"].features, 2)[0]
    torch.testing.assert_close(f.float(), ref, rtol=1e-2, atol=1e-3)

    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(
        "parquet", data_files=sorted(str(p) for p in (out / "embeddings").glob("*.parquet")), split="train"
    )
    assert ds.num_rows == 16 and ds[0]["key"] == rows[0]["key"]


def test_file_lists_tar_shards_and_videos(folder, tiny_checkpoint, tmp_path, capsys):
    imgs = sorted(p for p in folder.iterdir() if p.is_file())[:3]
    (tmp_path / "list.txt").write_text("\n".join(p.name for p in imgs) + "\nmissing.jpg\n")
    for p in imgs:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "list.csv").write_text("path,caption\n" + "".join(f"{p},x\n" for p in imgs))
    pq.write_table(pa.table({"path": [str(p) for p in imgs]}), tmp_path / "list.parquet")
    for i in range(2):
        with tarfile.open(tmp_path / f"shard-{i:02d}.tar", "w") as tf:
            for p in imgs[i : i + 2]:
                tf.add(p, arcname=f"{i:03d}{p.stem}.{p.suffix[1:]}")
            info = tarfile.TarInfo(f"{i:03d}{imgs[0].stem}.json")
            info.size = 2
            tf.addfile(info, io.BytesIO(b"{}"))
    video = tmp_path / "clip.mp4"
    write_test_video(video, frames=12, fps=6)

    rows = list_rows([str(tmp_path / "list.txt")])
    assert [r.key for r in rows] == [p.name for p in imgs] + ["missing.jpg"]
    assert [r.url for r in list_rows([str(tmp_path / "list.csv")])] == [str(p) for p in imgs]
    assert [r.url for r in list_rows([str(tmp_path / "list.parquet")])] == [str(p) for p in imgs]
    shards = list_rows([str(tmp_path / "shard-{00..01}.tar")])
    assert [r.key for r in shards] == [
        f"shard-{i:02d}/{i:03d}{p.stem}{p.suffix}" for i in range(2) for p in imgs[i : i + 2]
    ]
    vrows = list_rows([str(video)], fps=2.0)
    assert [r.time for r in vrows] == [0.0, 0.5, 1.0, 1.5] and vrows[1].source.endswith("clip.mp4@0.500")

    out = tmp_path / "out"
    assert (
        _run(
            [
                str(tmp_path / "list.txt"),
                str(tmp_path / "shard-{00..01}.tar"),
                str(video),
                "--fps",
                "2",
                "--version",
                str(tiny_checkpoint),
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    t = read(str(out)).to_pylist()
    assert len(t) == 4 + 4 + 4
    assert [r["status"] for r in t].count("ok") == 11 and t[3]["status"].startswith("missing")
    by_key = {r["key"]: r for r in t}
    # a shard member and the same file read from the folder give the same summary
    same = by_key[f"shard-00/000{imgs[0].stem}{imgs[0].suffix}"]
    np.testing.assert_array_equal(same["summary"], by_key[imgs[0].name]["summary"])
    frames = [r for r in t if "@" in r["key"]]
    assert [r["source"].rsplit("@", 1)[1] for r in frames] == ["0.000", "0.500", "1.000", "1.500"]
    assert frames[0]["width"] == 64 and frames[0]["summary"] is not None
    # frames 0.0 and 0.5 s differ (the video changes over time)
    assert not np.array_equal(frames[0]["summary"], frames[1]["summary"])


def test_resume_keeps_parts_and_refuses_other_options(folder, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(folder), "--version", str(tiny_checkpoint), "--out", str(out), "--part-size", "4", *FAST]
    assert _run(args) == 0
    ref = read(str(out))
    # lose one part (its entry) and damage another's file: both are redone, the rest kept as they are
    (out / "manifest.d" / "part-00001.json").unlink()
    (out / "embeddings" / "part-00002.parquet").unlink()
    kept = (out / "embeddings" / "part-00000.parquet").stat().st_mtime_ns
    capsys.readouterr()
    assert _run(args) == 0
    assert "resuming: 2 of 4" in capsys.readouterr().out
    assert (out / "embeddings" / "part-00000.parquet").stat().st_mtime_ns == kept
    assert read(str(out)).equals(ref)

    assert _run([*args, "--resolution", "96"]) == 2
    err = capsys.readouterr().err
    assert "options.resolution was 64, this run has 96" in err and "--overwrite" in err and len(err.splitlines()) == 1
    assert _run([*args[: -len(FAST)], "--adaptor", "clip", *FAST]) == 2
    assert "options.adaptors" in capsys.readouterr().err
    assert _run([*args, "--resolution", "96", "--overwrite"]) == 0
    assert read(str(out)).to_pylist()[0]["input_height"] == 96

    # a manifest that is not JSON: refused in one line that names --overwrite, which then replaces it
    (out / "manifest.json").write_text("{half")
    assert _run(args) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "--overwrite" in err and len(err.splitlines()) == 1
    assert _run([*args, "--overwrite"]) == 0
    assert read(str(out)).equals(ref)


def test_clip_retrieval_layout(folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "cr"
    assert (
        _run(
            [
                str(folder),
                "--version",
                str(tiny_checkpoint),
                "--out",
                str(out),
                "--layout",
                "clip-retrieval",
                "--part-size",
                "10",
                *FAST,
            ]
        )
        == 0
    )
    emb = [np.load(out / "img_emb" / f"img_emb_{k}.npy") for k in range(2)]
    meta = [pq.read_table(out / "metadata" / f"metadata_{k}.parquet").to_pandas() for k in range(2)]
    assert [len(e) for e in emb] == [len(m) for m in meta] and sum(len(e) for e in emb) == 12
    assert emb[0].dtype == np.float16 and np.allclose(np.linalg.norm(emb[0].astype(np.float32), axis=1), 1, atol=1e-2)
    assert "image_path" in meta[0].columns and Path(meta[0]["image_path"][0]).is_file()


def test_features_full_and_errors(folder, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "full"
    assert (
        _run(
            [
                str(folder / "bad"),
                str(sorted(folder.glob("*.png"))[0]),
                "--version",
                str(tiny_checkpoint),
                "--out",
                str(out),
                "--features",
                "full",
                "--features-dtype",
                "float32",
                *FAST,
            ]
        )
        == 0
    )
    feats = read_features(str(out), 0)
    (row,) = [r for r in read(str(out)).to_pylist() if r["status"] == "ok"]
    f = feats[f"{row['key']}/backbone"]
    assert f.dtype == torch.float32 and f.shape == (64, row["input_height"] // 16, row["input_width"] // 16)
    assert {k.split("/")[0] for k in feats} == {row["key"]}  # skipped rows have no tensors

    capsys.readouterr()
    assert _run([str(folder), "--version", str(tiny_checkpoint), "--out", str(out / "manifest.json"), *FAST]) == 2
    assert "is a file" in capsys.readouterr().err
    assert _run([str(tmp_path / "nowhere"), "--version", str(tiny_checkpoint), "--out", str(out), *FAST]) == 2
    assert "source not found" in capsys.readouterr().err
    assert (
        _run(
            [
                str(folder),
                "--version",
                str(tiny_checkpoint),
                "--out",
                str(tmp_path / "x"),
                "--features",
                "pooled:zero",
                *FAST,
            ]
        )
        == 2
    )
    assert "pooled:G" in capsys.readouterr().err

    # a full disk while a part is renamed: one line, exit 2, nothing under a final name, no temporary left
    real_write = Store.write_bytes

    def full_disk(self, rel, data, point=None):
        if rel.startswith("embeddings/"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, rel, data, point)

    monkeypatch.setattr(Store, "write_bytes", full_disk)
    out2 = tmp_path / "enospc"
    assert _run([str(folder), "--version", str(tiny_checkpoint), "--out", str(out2), *FAST]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1
    assert not list((out2 / "embeddings").glob("*")) if (out2 / "embeddings").exists() else True
    assert not (out2 / "manifest.d").exists() or not list((out2 / "manifest.d").iterdir())


def test_store_leaves_nothing_half_written(tmp_path, monkeypatch):
    store = Store(str(tmp_path))

    def fail(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(store.fs, "mv", fail)
    with pytest.raises(OSError, match="Read-only"):
        store.write_bytes("embeddings/part-00000.parquet", b"x" * 100)
    assert list((tmp_path / "embeddings").iterdir()) == []


def _folder_with_format(out: Path, fmt: str) -> None:
    """A one-part folder (one row, with features) whose manifest records format ``fmt``."""
    store = Store(str(out))
    row = {"key": "a", "source": "a.png", "width": 4, "height": 4, "input_height": 4, "input_width": 4}
    row |= {"summary": np.ones(3, np.float32), "status": "ok", "features": {"backbone": torch.ones(2, 1, 1)}}
    files, _ = write_part(store, 0, [row], {"summary": 3}, "openradio", features=True)
    man = {"format": fmt, "layout": "openradio", "parts": {"00000": {"rows": 1, "files": files}}}
    (out / "manifest.json").write_text(json.dumps(man))


def test_readers_refuse_a_manifest_of_a_future_format_version(tmp_path):
    ok, future = tmp_path / "ok", tmp_path / "future"
    _folder_with_format(ok, FORMAT)
    assert read(str(ok)).num_rows == 1 and torch.equal(read_features(str(ok), 0)["a/backbone"], torch.ones(2, 1, 1))
    newer = f"{FORMAT_NAME}/{FORMAT_VERSION + 1}"
    _folder_with_format(future, newer)
    for reader in (lambda: read(str(future)), lambda: read_features(str(future), 0)):
        with pytest.raises(ValueError) as info:
            reader()
        text = str(info.value)
        assert "\n" not in text and str(future) in text and "upgrade openradio" in text
        assert (
            f"version {FORMAT_VERSION + 1} ({newer})" in text and f"reads version {FORMAT_VERSION} ({FORMAT})" in text
        )
    (future / "manifest.json").write_text(json.dumps({"format": "something.else/1", "parts": {}}))
    with pytest.raises(ValueError, match="not an openradio extract folder"):
        read(str(future))


def _subprocess_run(args, kill=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("OPENRADIO_EXTRACT_TEST_KILL", None)
    if kill:
        env["OPENRADIO_EXTRACT_TEST_KILL"] = kill
    return subprocess.run(
        [sys.executable, "-m", "openradio.extract", *args], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["batch:3", "part:2", "manifest:2", "manifest:5"])
def test_sigkill_then_rerun_equals_an_uninterrupted_run(folder, tiny_checkpoint, tmp_path, kill):
    """Killed inside a batch, while a part is written, while the manifest is written: the rerun's
    rows and dense tensors equal an uninterrupted run's bit for bit, no row twice, none missing."""
    common = [
        str(folder),
        "--version",
        str(tiny_checkpoint),
        "--features",
        "pooled:2",
        "--part-size",
        "4",
        "--batch-size",
        "3",
        "--resolution",
        "64",
        "--no-progress",
        "--workers",
        "1",
    ]
    ref_dir, dir_ = tmp_path / "ref", tmp_path / "killed"
    r = _subprocess_run([*common, "--out", str(ref_dir)])
    assert r.returncode == 0, r.stderr
    r = _subprocess_run([*common, "--out", str(dir_)], kill=kill)
    assert r.returncode == -9, (r.returncode, r.stderr[-500:])
    partial = json.loads((dir_ / "manifest.json").read_text())
    assert not partial["complete"]
    r = _subprocess_run([*common, "--out", str(dir_)])
    assert r.returncode == 0, r.stderr
    a, b = read(str(ref_dir)), read(str(dir_))
    assert b.num_rows == a.num_rows == 16 and len(set(b.column("key").to_pylist())) == 16
    assert a.equals(b)
    for k in range(4):
        fa, fb = read_features(str(ref_dir), k), read_features(str(dir_), k)
        assert fa.keys() == fb.keys() and all(torch.equal(fa[n], fb[n]) for n in fa)
    assert not [p for p in dir_.rglob("*") if ".partial-" in p.name]


@pytest.mark.slow
def test_torchrun_two_ranks_give_the_rows_of_one(folder, tiny_checkpoint, tmp_path):
    common = [
        str(folder),
        "--version",
        str(tiny_checkpoint),
        "--part-size",
        "3",
        "--batch-size",
        "2",
        "--resolution",
        "64",
        "--no-progress",
        "--workers",
        "0",
        "--features",
        "pooled:1",
    ]
    one = _subprocess_run([*common, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")

    def torchrun(*extra):
        two = subprocess.run(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node",
                "2",
                "-m",
                "openradio.extract",
                *common,
                "--out",
                str(tmp_path / "two"),
                *extra,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        # each rank's one-line error, then the tail (torchrun's own report fills the end of stderr)
        errors = [ln for ln in two.stderr.splitlines() if "openradio extract: error" in ln]
        assert two.returncode == 0, "\n".join(errors) + "\n" + two.stderr[-1500:]

    torchrun()
    man = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert man["complete"] and {e["rank"] for e in man["parts"].values()} == {0, 1}
    assert man["last_run"]["world_size"] == 2
    assert read(str(tmp_path / "one")).equals(read(str(tmp_path / "two")))
    for k in range(man["num_parts"]):
        a, b = read_features(str(tmp_path / "one"), k), read_features(str(tmp_path / "two"), k)
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)

    # --overwrite with two ranks: rank 0 empties the folder before rank 1 reads it
    (tmp_path / "two" / "embeddings" / "part-00000.parquet").write_bytes(b"stale")
    torchrun("--overwrite")
    assert read(str(tmp_path / "one")).equals(read(str(tmp_path / "two")))


def _probe_many(url: str, n: int, q) -> None:
    try:
        for _ in range(n):
            Store(url).check_writable()
        q.put(None)
    except Exception as e:  # reported to the parent
        q.put(repr(e))


def test_ranks_starting_together_do_not_break_each_others_write_probe(tmp_path):
    """torchrun ranks check the same --out at the same moment; with one shared probe name a rank
    removed the probe (or the temporary) of the other and stopped with `cannot write to`."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_probe_many, args=(str(tmp_path), 400, q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    assert results == [None, None]
    assert sorted(os.listdir(tmp_path)) == []  # no probe or temporary left
