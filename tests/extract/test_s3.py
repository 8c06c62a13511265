"""Remote storage: sources and --out as s3:// URLs against a local S3 server (moto), including a
kill between a part's files and its manifest entry (the part is redone, no row twice)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

moto_server = pytest.importorskip("moto.server")
s3fs = pytest.importorskip("s3fs")

from openradio.cli import main  # noqa: E402
from openradio.extract import read  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    import fsspec.config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    conf = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "test", "secret": "test"}
    old = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = conf
    fs = s3fs.S3FileSystem(**conf)
    fs.mkdir("bucket")
    from openradio.inputs.sample_data import write_sample_images

    local = tmp_path_factory.mktemp("s3imgs")
    write_sample_images(local, max_side=80)
    for p in sorted(local.iterdir())[:9]:
        fs.put_file(str(p), f"bucket/imgs/{p.name}")
    yield fs, conf, local
    if old is None:
        fsspec.config.conf.pop("s3", None)
    else:
        fsspec.config.conf["s3"] = old
    server.stop()


ARGS = [
    "--resolution",
    "64",
    "--part-size",
    "3",
    "--batch-size",
    "2",
    "--no-progress",
    "--workers",
    "0",
    "--features",
    "pooled:1",
]


def test_s3_sources_and_output(s3, tiny_checkpoint):
    fs, _, _ = s3
    assert (
        main(["extract", "s3://bucket/imgs", "--version", str(tiny_checkpoint), "--out", "s3://bucket/out1", *ARGS])
        == 0
    )
    man = json.loads(fs.cat_file("bucket/out1/manifest.json"))
    assert man["complete"] and man["totals"]["ok"] == 9
    t = read("s3://bucket/out1")
    assert t.num_rows == 9 and t.column("source").to_pylist()[0].startswith("s3://bucket/imgs/")
    assert sorted(fs.ls("bucket/out1/embeddings", detail=False)) == [
        f"bucket/out1/embeddings/part-0000{k}.parquet" for k in range(3)
    ]


def _run(args, conf, kill=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", FSSPEC_S3=json.dumps(conf))
    env.pop("OPENRADIO_EXTRACT_TEST_KILL", None)
    if kill:
        env["OPENRADIO_EXTRACT_TEST_KILL"] = kill
    return subprocess.run(
        [sys.executable, "-m", "openradio.extract", *args], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_kill_between_part_and_manifest_on_s3(s3, tiny_checkpoint):
    fs, conf, _ = s3
    common = ["s3://bucket/imgs", "--version", str(tiny_checkpoint), *ARGS]
    r = _run([*common, "--out", "s3://bucket/ref"], conf)
    assert r.returncode == 0, r.stderr[-1500:]
    r = _run([*common, "--out", "s3://bucket/killed"], conf, kill="commit:2")
    assert r.returncode == -9, r.stderr[-1500:]
    # part 1's files are there, its entry is not: it does not count
    assert fs.exists("bucket/killed/embeddings/part-00001.parquet")
    assert not fs.exists("bucket/killed/manifest.d/part-00001.json")
    assert sorted(json.loads(fs.cat_file("bucket/killed/manifest.json"))["parts"]) == ["00000"]
    r = _run([*common, "--out", "s3://bucket/killed"], conf)
    assert r.returncode == 0, r.stderr[-1500:]
    a, b = read("s3://bucket/ref"), read("s3://bucket/killed")
    assert a.equals(b) and len(set(b.column("key").to_pylist())) == b.num_rows == 9
