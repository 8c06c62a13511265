"""k-nearest-neighbour classification on summary embeddings (the official ``knn_classification.py``).

Embedding = L2-normalised backbone summary (or an adaptor's summary). For each query the k most
cosine-similar training embeddings vote for their labels with weight ``exp(similarity / T)``
(T = 0.07); the class with the largest accumulated weight wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from openradio.eval.data import LabelledImages, iterate_batches
from openradio.runtime import autocast, select_output

__all__ = ["extract_embeddings", "knn_scores", "knn_predict", "KNNResult", "evaluate_knn"]


@torch.no_grad()
def extract_embeddings(
    model: torch.nn.Module,
    data: LabelledImages,
    resolution: int,
    *,
    adaptor: str | None = None,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    amp: bool = False,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "embeddings",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) L2-normalised float32 summaries on the CPU, in dataset order, and the (N,) labels;
    unreadable images are skipped (with a warning each) and not in either."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    embs: list[torch.Tensor] = [None] * len(data)  # type: ignore[list-item]
    for images, _, idx in tqdm(
        iterate_batches(data, resolution, batch_size, num_workers, skipped=[]),
        total=-(-len(data) // batch_size),
        desc=desc,
        disable=not progress,
        unit="batch",
    ):
        with autocast(device, amp):
            out = model(images.to(device, non_blocking=True))
        s = F.normalize(select_output(out, adaptor).summary.float(), dim=-1).cpu()
        for j, i in enumerate(idx.tolist()):
            embs[i] = s[j]
    keep = [i for i, e in enumerate(embs) if e is not None]
    if not keep:
        raise ValueError(f"none of the {len(data)} images could be read")
    return torch.stack([embs[i] for i in keep]), torch.tensor([data.labels[i] for i in keep], dtype=torch.long)


def knn_scores(
    train_emb: torch.Tensor,
    train_labels: torch.Tensor,
    query_emb: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """(Q, C) accumulated vote weights. Embeddings must already be L2-normalised."""
    if train_emb.shape[0] == 0:
        raise ValueError("kNN needs at least one training embedding")
    if train_emb.shape[1] != query_emb.shape[1]:
        raise ValueError(f"train embeddings have {train_emb.shape[1]} dims, queries {query_emb.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, train_emb.shape[0])
    C = int(num_classes if num_classes is not None else int(train_labels.max()) + 1)
    out = []
    for i in range(0, query_emb.shape[0], chunk_size):  # chunks bound the (Q, N) similarity matrix
        sims = query_emb[i : i + chunk_size].float() @ train_emb.float().T
        top_s, top_i = sims.topk(k, dim=1)
        votes = torch.zeros(top_s.shape[0], C, dtype=torch.float32, device=sims.device)
        votes.scatter_add_(1, train_labels.to(sims.device)[top_i], (top_s / temperature).exp())
        out.append(votes)
    return torch.cat(out)


def knn_predict(
    train_emb: torch.Tensor,
    train_labels: torch.Tensor,
    query_emb: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> torch.Tensor:
    """(Q,) predicted labels: argmax of the similarity-weighted votes of the k nearest neighbours."""
    return knn_scores(train_emb, train_labels, query_emb, k=k, temperature=temperature, num_classes=num_classes).argmax(
        dim=1
    )


@dataclass
class KNNResult:
    resolution: int
    k: int
    top1: float
    top5: float
    num_train: int
    num_val: int


def evaluate_knn(
    model: torch.nn.Module,
    train: LabelledImages,
    val: LabelledImages,
    resolution: int,
    *,
    k: int = 20,
    temperature: float = 0.07,
    adaptor: str | None = None,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    amp: bool = False,
    num_workers: int = 0,
    progress: bool = True,
) -> KNNResult:
    """kNN top-1/top-5 (%) of ``val`` against ``train``; class names are matched by name."""
    if list(train.classnames) != list(val.classnames):
        # Re-index val labels through the class names so a val folder with a subset of classes still works.
        index = {c: i for i, c in enumerate(train.classnames)}
        missing = [c for c in val.classnames if c not in index]
        if missing:
            raise ValueError(f"validation classes not present in the training set: {missing[:5]}")
        val = LabelledImages(
            val.paths, [index[val.classnames[lbl]] for lbl in val.labels], list(train.classnames), val.source
        )
    tr, trl = extract_embeddings(
        model,
        train,
        resolution,
        adaptor=adaptor,
        batch_size=batch_size,
        device=device,
        amp=amp,
        num_workers=num_workers,
        progress=progress,
        desc="kNN train",
    )
    va, val_l = extract_embeddings(
        model,
        val,
        resolution,
        adaptor=adaptor,
        batch_size=batch_size,
        device=device,
        amp=amp,
        num_workers=num_workers,
        progress=progress,
        desc="kNN val",
    )
    scores = knn_scores(tr, trl, va, k=k, temperature=temperature, num_classes=train.num_classes)
    top = scores.topk(min(5, scores.shape[1]), dim=1).indices
    hit = top == val_l[:, None]
    n = len(val_l)
    return KNNResult(
        resolution,
        min(k, len(trl)),
        100.0 * float(hit[:, 0].sum()) / n,
        100.0 * float(hit.any(dim=1).sum()) / n,
        len(trl),
        n,
    )
