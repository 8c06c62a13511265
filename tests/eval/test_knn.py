"""kNN classification on summaries (openradio.eval.knn, `openradio knn`)."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import torch.nn.functional as F
from _evalutils import make_image_folder

from openradio.eval.knn import knn_predict, knn_scores


def _naive_knn(train, train_labels, queries, k, T, num_classes):
    """One query at a time, plain Python: sort neighbours, add exp(s/T) to each neighbour's label."""
    preds, scores = [], []
    for q in queries:
        sims = [(float(q @ t), int(lbl)) for t, lbl in zip(train, train_labels)]
        sims.sort(key=lambda x: -x[0])
        votes = [0.0] * num_classes
        for s, lbl in sims[:k]:
            votes[lbl] += math.exp(s / T)
        scores.append(votes)
        preds.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(preds), torch.tensor(scores)


def test_knn_scores_match_naive_vote():
    g = torch.Generator().manual_seed(0)
    train = F.normalize(torch.randn(50, 8, generator=g), dim=-1)
    labels = torch.randint(0, 5, (50,), generator=g)
    queries = F.normalize(torch.randn(13, 8, generator=g), dim=-1)
    want_pred, want_scores = _naive_knn(train, labels, queries, k=7, T=0.07, num_classes=5)
    got = knn_scores(train, labels, queries, k=7, temperature=0.07, num_classes=5, chunk_size=4)  # several chunks
    torch.testing.assert_close(got, want_scores.float(), rtol=1e-4, atol=0)
    assert torch.equal(knn_predict(train, labels, queries, k=7, num_classes=5), want_pred)


def test_knn_argument_errors():
    e = F.normalize(torch.randn(4, 3), dim=-1)
    with pytest.raises(ValueError, match="k must be"):
        knn_scores(e, torch.zeros(4, dtype=torch.long), e, k=0)
    with pytest.raises(ValueError, match="dims"):
        knn_scores(e, torch.zeros(4, dtype=torch.long), torch.randn(2, 5))


def test_knn_cli_matches_direct_computation(tmp_path, tiny_checkpoint, capsys):
    import openradio
    from openradio.cli import main
    from openradio.inputs.imageio import load_image, resize_center_crop

    train = make_image_folder(tmp_path / "train", variants=range(4))
    val = make_image_folder(tmp_path / "val", variants=range(4, 6))
    out = tmp_path / "out"
    k, res = 5, 48
    rc = main(
        [
            "knn",
            "--version",
            str(tiny_checkpoint),
            "--train",
            str(train),
            "--val",
            str(val),
            "--k",
            str(k),
            "--resolution",
            str(res),
            "--out",
            str(out),
            "--no-progress",
            "--batch-size",
            "3",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    with open(out / "knn.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and int(rows[0]["Resolution"]) == res and int(rows[0]["K"]) == k

    # direct: one image at a time through the model, then the naive vote
    model = openradio.radio_model(str(tiny_checkpoint), progress=False)
    classes = sorted(p.name for p in train.iterdir())

    def embed(root):
        embs, labels = [], []
        for ci, c in enumerate(classes):
            for p in sorted((root / c).iterdir()):
                x = resize_center_crop(load_image(p), res)[None]
                with torch.no_grad():
                    embs.append(F.normalize(model(x).summary.float(), dim=-1)[0])
                labels.append(ci)
        return torch.stack(embs), torch.tensor(labels)

    tr, trl = embed(train)
    va, val_l = embed(val)
    pred, _ = _naive_knn(tr, trl, va, k, 0.07, len(classes))
    top1 = 100.0 * float((pred == val_l).float().mean())
    assert float(rows[0]["Top1"]) == pytest.approx(top1, abs=1e-3)
    assert f"top-1 {top1:.3f}" in printed


def test_knn_cli_adaptor_summary(tmp_path, tiny_checkpoint):
    """With --adaptor the adaptor's summary is the embedding; a query set equal to the training set
    finds each image itself as its nearest neighbour (k=1) -> 100%."""
    from openradio.cli import main

    data = make_image_folder(tmp_path / "d", classes=("chelsea", "rocket"), variants=range(3))
    out = tmp_path / "out"
    rc = main(
        [
            "knn",
            "--version",
            str(tiny_checkpoint),
            "--adaptor",
            "dino_v2",
            "--train",
            str(data),
            "--val",
            str(data),
            "--k",
            "1",
            "--resolution",
            "32",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    with open(out / "knn.csv") as f:
        row = next(csv.DictReader(f))
    assert row["Embedding"] == "dino_v2" and float(row["Top1"]) == 100.0


def test_data_plumbing(tmp_path):
    from openradio.eval.data import collate_same_shape, read_image_list, read_labelled_images

    # a batch of mixed shapes becomes sub-batches of one shape each, keeping labels and indices together
    items = [(torch.zeros(3, 4, 4), 0, 0), (torch.zeros(3, 8, 8), 1, 1), (torch.ones(3, 4, 4), 2, 2)]
    groups = collate_same_shape(items)
    assert [tuple(g[0].shape) for g in groups] == [(2, 3, 4, 4), (1, 3, 8, 8)]
    assert groups[0][1].tolist() == [0, 2] and groups[0][2].tolist() == [0, 2]

    root = make_image_folder(tmp_path / "d", classes=("coffee", "rocket"), variants=range(2))
    lst = tmp_path / "l.tsv"
    lst.write_text("d/coffee/0.png\t1\nd/rocket/1.png\t0\n")
    with pytest.raises(ValueError, match="class names"):
        read_image_list(lst)
    data = read_image_list(lst, ["a", "b"])
    assert data.labels == [1, 0] and data.classnames == ["a", "b"]
    (root / "rocket" / "broken.png").write_bytes(b"not a png")
    from openradio.eval.data import iterate_batches

    skipped: list = []
    with pytest.warns(UserWarning, match="broken.png"):  # skipped and counted, as in training (issue 14)
        n = sum(
            len(lbl) for _, lbl, _ in iterate_batches(read_labelled_images(root), 32, batch_size=8, skipped=skipped)
        )
    assert n == 4 and len(skipped) == 1


def test_amp_embeddings_close_to_fp32(tmp_path, tiny_checkpoint):
    import openradio
    from openradio.eval.data import read_labelled_images
    from openradio.eval.knn import extract_embeddings

    data = read_labelled_images(make_image_folder(tmp_path / "d", classes=("chelsea",), variants=range(2)))
    model = openradio.radio_model(str(tiny_checkpoint), progress=False)
    e32, _ = extract_embeddings(model, data, 32, progress=False)
    e16, _ = extract_embeddings(model, data, 32, amp=True, progress=False)  # bf16 autocast on the CPU
    assert e16.dtype == torch.float32
    assert (e32 * e16).sum(-1).min() > 0.98
