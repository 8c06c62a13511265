"""openradio search: exact cosine top-k over an extract folder, by image and by text; faiss agrees."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from openradio.cli import main
from openradio.extract import read
from openradio.extract.search import search
from openradio.model.text import write_random_text_tower


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, tiny_checkpoint):
    from openradio.inputs.sample_data import write_sample_images

    root = tmp_path_factory.mktemp("search")
    imgs = root / "imgs"
    write_sample_images(imgs, max_side=96)
    out = root / "out"
    assert (
        main(
            [
                "extract",
                str(imgs),
                "--version",
                str(tiny_checkpoint),
                "--out",
                str(out),
                "--adaptor",
                "clip",
                "--resolution",
                "64",
                "--part-size",
                "7",
                "--batch-size",
                "4",
                "--workers",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    return imgs, out


def _brute_force(out, column, q):
    t = read(str(out)).to_pylist()
    rows = [r for r in t if r["status"] == "ok"]
    m = np.array([r[column] for r in rows], np.float32)
    s = (m / np.linalg.norm(m, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    order = np.argsort(-s, kind="stable")
    return [rows[i]["key"] for i in order], s[order]


def test_a_copied_image_is_found_first(extracted, tmp_path, capsys):
    imgs, out = extracted
    src = sorted(imgs.iterdir())[5]
    copy = tmp_path / "query.png"
    shutil.copy(src, copy)
    capsys.readouterr()
    assert main(["search", str(out), "--image", str(copy), "--k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["key"] == src.name and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[1]["score"] < hits[0]["score"]
    assert main(["search", str(out), "--image", str(copy), "--column", "clip_summary", "--k", "1"]) == 0
    assert src.name in capsys.readouterr().out


def test_text_search_ranks_by_the_text_towers_cosine(extracted, tmp_path, capsys):
    _, out = extracted
    dim = read(str(out)).schema.field("clip_summary").type.list_size
    cfg, weights = write_random_text_tower(tmp_path, "search-tiny-text", dim, seed=3)
    capsys.readouterr()
    assert (
        main(
            [
                "search",
                str(out),
                "--text",
                "a photo of a cat",
                "--k",
                "5",
                "--json",
                "--text-model",
                str(cfg),
                "--text-weights",
                str(weights),
            ]
        )
        == 0
    )
    hits = json.loads(capsys.readouterr().out)

    import open_clip
    import torch

    open_clip.add_model_config(cfg)
    oc = open_clip.create_model("search-tiny-text", pretrained=str(weights))
    with torch.no_grad():
        q = oc.encode_text(open_clip.get_tokenizer("search-tiny-text")(["a photo of a cat"]), normalize=True)[0]
    keys, scores = _brute_force(out, "clip_summary", q.numpy())
    assert [h["key"] for h in hits] == keys[:5]
    np.testing.assert_allclose([h["score"] for h in hits], scores[:5], rtol=1e-4, atol=1e-5)


def test_streaming_top_k_equals_faiss_and_brute_force(extracted):
    pytest.importorskip("faiss")
    _, out = extracted
    q = np.random.default_rng(0).normal(size=192).astype(np.float32)
    keys, scores = _brute_force(out, "summary", q)
    exact = search(str(out), q, k=6, batch_rows=3)  # batches smaller than k: the merge is exercised
    flat = search(str(out), q, k=6, use_faiss=True)
    assert [h.key for h in exact] == [h.key for h in flat] == keys[:6]
    np.testing.assert_allclose([h.score for h in flat], scores[:6], rtol=1e-5, atol=1e-6)


def test_search_errors(extracted, tmp_path, capsys):
    imgs, out = extracted
    assert main(["search", str(tmp_path), "--image", str(sorted(imgs.iterdir())[0])]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    assert main(["search", str(out), "--image", str(tmp_path / "none.jpg")]) == 2
    assert "query image not found" in capsys.readouterr().err
    assert main(["search", str(out), "--image", str(sorted(imgs.iterdir())[0]), "--column", "sam_summary"]) == 2
    assert "no column 'sam_summary'" in capsys.readouterr().err
