"""Ray Data: RadioEmbedder in map_batches and `extract --engine ray` give the local engine's rows
(summaries within float32 rounding: Ray's batches group rows differently, and a matmul's sums run
in another order when the batch differs)."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from openradio.cli import main  # noqa: E402
from openradio.extract import ExtractError, read  # noqa: E402
from openradio.ray import RadioEmbedder, plan_resources  # noqa: E402


@pytest.fixture(scope="module")
def ray_local():
    # the smallest cluster on purpose: one actor of num_cpus=1 beside read tasks of num_cpus=1 waited here forever
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from openradio.inputs.sample_data import write_sample_images

    d = tmp_path_factory.mktemp("rayimgs")
    write_sample_images(d, max_side=80)
    for p in sorted(d.iterdir())[8:]:
        p.unlink()
    (d / "zz_broken.jpg").write_bytes(b"not an image")
    return d


def test_plan_resources_fits_the_cluster():
    one = plan_resources(cluster={"CPU": 1.0})  # reading and the actor share the only CPU
    assert (one.actors, one.actor_cpus, one.actor_gpus, one.read_cpus) == (1, 0.5, 0.0, 0.5)
    many = plan_resources(cluster={"CPU": 16.0})
    assert (many.actors, many.actor_cpus, many.read_cpus) == (1, 15.0, 1.0)
    gpus = plan_resources(cluster={"CPU": 4.0, "GPU": 2.0})
    assert (gpus.actors, gpus.actor_cpus, gpus.actor_gpus, gpus.read_cpus) == (2, 1.0, 1.0, 1.0)
    assert plan_resources("cpu", cluster={"CPU": 4.0, "GPU": 2.0}).actor_gpus == 0
    for device, actors, cluster, match in [
        ("cuda", None, {"CPU": 2.0}, "needs a GPU per actor but the Ray cluster has 0 GPUs"),
        (None, 3, {"CPU": 4.0, "GPU": 2.0}, "3 RadioEmbedder actors do not fit .* 2 GPUs; use at most 2"),
        ("cpu", 2, {"CPU": 2.0}, "2 RadioEmbedder actors do not fit .* 2 CPUs .*; use at most 1"),
        (None, None, {}, "the Ray cluster has no CPUs"),
    ]:
        with pytest.raises(ExtractError, match=match):
            plan_resources(device, actors, cluster=cluster)


def _compare(a, b):
    a, b = a.to_pylist(), b.to_pylist()
    assert [r["key"] for r in a] == [r["key"] for r in b] and [r["status"] for r in a] == [r["status"] for r in b]
    for ra, rb in zip(a, b):
        assert (ra["input_height"], ra["input_width"]) == (rb["input_height"], rb["input_width"])
        if ra["status"] == "ok":
            np.testing.assert_allclose(ra["summary"], rb["summary"], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(ra["clip_summary"], rb["clip_summary"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_engine_ray_gives_the_local_rows(ray_local, images, tiny_checkpoint, tmp_path):
    common = [
        str(images),
        "--version",
        str(tiny_checkpoint),
        "--adaptor",
        "clip",
        "--resolution",
        "64",
        "--part-size",
        "4",
        "--batch-size",
        "3",
        "--no-progress",
        "--workers",
        "0",
    ]
    assert main(["extract", *common, "--out", str(tmp_path / "local")]) == 0
    assert main(["extract", *common, "--engine", "ray", "--out", str(tmp_path / "ray")]) == 0
    _compare(read(str(tmp_path / "local")), read(str(tmp_path / "ray")))
    # resume through Ray: a lost part is redone, the rest kept
    (tmp_path / "ray" / "manifest.d" / "part-00001.json").unlink()
    assert main(["extract", *common, "--engine", "ray", "--out", str(tmp_path / "ray")]) == 0
    _compare(read(str(tmp_path / "local")), read(str(tmp_path / "ray")))


@pytest.mark.slow
def test_radio_embedder_in_map_batches(ray_local, images, tiny_checkpoint, tmp_path):
    assert (
        main(
            [
                "extract",
                str(images),
                "--version",
                str(tiny_checkpoint),
                "--adaptor",
                "clip",
                "--resolution",
                "64",
                "--no-progress",
                "--workers",
                "0",
                "--out",
                str(tmp_path / "local"),
            ]
        )
        == 0
    )
    local = {r["key"]: r for r in read(str(tmp_path / "local")).to_pylist()}
    plan = plan_resources()
    assert plan.actor_cpus + plan.read_cpus <= ray.cluster_resources()["CPU"]
    ds = ray.data.read_binary_files(str(images), include_paths=True, **plan.read_args())
    ds = ds.map_batches(
        RadioEmbedder,
        batch_size=4,
        batch_format="numpy",
        fn_constructor_kwargs={"version": str(tiny_checkpoint), "adaptors": ["clip"], "resolution": 64},
        **plan.map_args(),
    )
    got = ds.take_all()
    assert len(got) == len(local)
    for r in got:
        ref = local[r["key"].rsplit("/", 1)[-1]]
        assert r["status"] == ref["status"]
        if r["status"] == "ok":
            np.testing.assert_allclose(r["clip_summary"], ref["clip_summary"], rtol=1e-4, atol=1e-5)
        else:
            assert r["status"].startswith("unreadable")
