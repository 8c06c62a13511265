"""Zero-shot classification with a language-aligned adaptor (``clip`` / ``siglip``) at any resolution.

Recipe (the official ``zero_shot_imagenet.py``): for every class, fill each prompt template with the
class name, embed the prompts with the adaptor's text tower (L2-normalised), average over templates
and re-normalise. The classifier is the (D, C) matrix of these class embeddings; an image's logits are
``normalize(adaptor summary) @ classifier`` (no temperature: only the ranking matters).
Classifiers are cached on disk under a key of (text model, adaptor, templates, class names).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from openradio.atomicio import write_text
from openradio.eval.data import LabelledImages, iterate_batches, write_csv
from openradio.runtime import autocast, select_output, supported_resolution

Template = Union[str, Callable[[str], str]]

__all__ = [
    "get_templates",
    "default_cache_dir",
    "classifier_cache_key",
    "build_classifier",
    "zero_shot_classifier",
    "zero_shot_logits",
    "topk_correct",
    "ZeroShotResult",
    "evaluate_zero_shot",
    "write_zero_shot_report",
]


def get_templates(name: str | Sequence[Template]) -> list[Template]:
    """Prompt templates: ``'openai'`` (OpenAI's 80 ImageNet prompts), ``'simple'`` (open_clip's short
    set), ``'base'`` (one prompt), or your own list of strings with a ``{}``/``{c}`` placeholder."""
    # lazy: open_clip costs 1 s to import; 'base' and custom templates do not need it
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    if isinstance(name, str):
        key = name.lower()
        if key == "openai":
            return list(OPENAI_IMAGENET_TEMPLATES)
        if key == "simple":
            return list(SIMPLE_IMAGENET_TEMPLATES)
        if key == "base":
            return ["an image of a {c}."]
        raise ValueError(f"unknown template set {name!r}; use 'openai', 'simple', 'base' or a list of strings")
    templates = list(name)
    if not templates:
        raise ValueError("empty template list")
    for t in templates:
        if isinstance(t, str) and "{}" not in t and "{c}" not in t:
            raise ValueError(f"template {t!r} has no '{{}}' or '{{c}}' placeholder for the class name")
    return templates


def _fill(template: Template, classname: str) -> str:
    if callable(template):
        return template(classname)
    return template.replace("{c}", classname).replace("{}", classname)


def _template_text(template: Template) -> str:
    """A canonical string for a template (also for open_clip's lambda templates) — used in cache keys."""
    return _fill(template, "{c}")


def default_cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "openradio" / "classifiers"


def classifier_cache_key(model_key: str, adaptor: str, templates: Sequence[Template], classnames: Sequence[str]) -> str:
    h = hashlib.sha256()
    for part in (
        model_key,
        adaptor,
        "\x1f".join(_template_text(t) for t in templates),
        "\x1f".join(classnames),
        "normalized-mean-v1",
    ):
        h.update(part.encode("utf-8"))
        h.update(b"\x1e")  # separator so that ("ab","c") and ("a","bc") differ
    return h.hexdigest()


@torch.no_grad()
def build_classifier(
    tokenizer: Callable[[list[str]], torch.Tensor],
    encode_text: Callable[..., torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    *,
    batch_size: int = 256,
    progress: bool = True,
) -> torch.Tensor:
    """(D, C) matrix: per class, mean of normalised prompt embeddings, re-normalised."""
    if not classnames:
        raise ValueError("no class names to build a classifier for")
    texts = [_fill(t, c) for c in classnames for t in templates]
    embs = []
    for i in tqdm(range(0, len(texts), batch_size), desc="text prompts", disable=not progress, unit="batch"):
        tokens = tokenizer(texts[i : i + batch_size])
        embs.append(encode_text(tokens, normalize=True).float().cpu())
    emb = torch.cat(embs).reshape(len(classnames), len(templates), -1)
    # encode_text already normalised; normalising again is harmless and guards towers that ignore the flag
    emb = F.normalize(emb, dim=-1).mean(dim=1)
    return F.normalize(emb, dim=-1).T.contiguous()


def zero_shot_classifier(
    adaptor: torch.nn.Module,
    classnames: Sequence[str],
    templates: Sequence[Template],
    *,
    adaptor_name: str = "clip",
    model_key: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    batch_size: int = 256,
    progress: bool = True,
) -> torch.Tensor:
    """Classifier for an adaptor carrying ``tokenizer``/``encode_text`` (see ``openradio.model.text``), cached.

    ``model_key`` identifies the text weights; default: the attached text tower's key. When no key is
    known (e.g. a randomly initialised tower) the classifier is computed and not cached.
    """
    if not callable(getattr(adaptor, "encode_text", None)) or not callable(getattr(adaptor, "tokenizer", None)):
        raise ValueError(
            f"adaptor {adaptor_name!r} has no text tower (tokenizer/encode_text); zero-shot needs a "
            "language-aligned adaptor such as 'clip' or 'siglip' "
            "(see openradio.model.text.attach_text_tower)"
        )
    if model_key is None:
        # set by openradio.model.text when a tower is attached (also by a lazy attach, before the tower is built)
        model_key = getattr(adaptor, "text_tower_key", None)
    path = None
    if use_cache and model_key:
        cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        path = cdir / f"{classifier_cache_key(model_key, adaptor_name, templates, classnames)[:32]}.pt"
        if path.is_file():
            try:
                cached = torch.load(path, map_location="cpu", weights_only=True)
                if cached.dim() == 2 and cached.shape[1] == len(classnames):
                    return cached
            except Exception:  # a corrupt/partial cache file is simply rebuilt
                pass
    clf = build_classifier(
        adaptor.tokenizer, adaptor.encode_text, classnames, templates, batch_size=batch_size, progress=progress
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(clf, tmp)
        os.replace(tmp, path)  # atomic: concurrent runs never read a half-written file
    return clf


def zero_shot_logits(summary: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """(B, D) adaptor summaries x (D, C) classifier -> (B, C) cosine logits."""
    if summary.shape[-1] != classifier.shape[0]:
        raise ValueError(
            f"adaptor summary has {summary.shape[-1]} dims but the text embeddings have "
            f"{classifier.shape[0]}; the text tower does not belong to this adaptor's teacher"
        )
    return F.normalize(summary.float(), dim=-1) @ classifier.to(summary.device, torch.float32)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> list[int]:
    """Number of samples whose label is among the top-k logits, for each k (k capped at #classes)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top == labels.to(top.device)[:, None]
    return [int(hit[:, : min(k, kmax)].any(dim=1).sum()) for k in ks]


@dataclass
class ZeroShotResult:
    resolution: int
    top1: float
    top5: float
    num_images: int
    vitdet_window: int | None = None

    @property
    def row_label(self) -> str:
        return f"{self.resolution}" + (f" - ViTDet {self.vitdet_window}" if self.vitdet_window else "")


@torch.no_grad()
def evaluate_zero_shot(
    model: torch.nn.Module,
    classifier: torch.Tensor,
    data: LabelledImages,
    resolutions: Sequence[int],
    *,
    adaptor: str = "clip",
    batch_size: int = 32,
    device: torch.device | str | None = None,
    amp: bool = False,
    num_workers: int = 0,
    vitdet_window: int | None = None,
    progress: bool = True,
) -> list[ZeroShotResult]:
    """Top-1/top-5 accuracy (%) of the zero-shot classifier at each resolution."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if classifier.shape[1] != data.num_classes:
        raise ValueError(f"classifier has {classifier.shape[1]} classes but the data has {data.num_classes}")
    results = []
    for res_req in resolutions:
        res = supported_resolution(model, res_req)
        if res != res_req:
            print(
                f"note: resolution {res_req} is not supported by this model (step "
                f"{getattr(model, 'min_resolution_step', '?')}); using {res}"
            )
        n = c1 = c5 = 0
        for images, labels, _ in tqdm(
            iterate_batches(data, res, batch_size, num_workers),
            total=-(-len(data) // batch_size),
            desc=f"zero-shot @{res}",
            disable=not progress,
            unit="batch",
        ):
            images = images.to(device, non_blocking=True)
            with autocast(device, amp):
                out = model(images)
            logits = zero_shot_logits(select_output(out, adaptor).summary.float(), classifier.to(device))
            a, b = topk_correct(logits, labels)
            c1, c5, n = c1 + a, c5 + b, n + len(labels)
        results.append(ZeroShotResult(res, 100.0 * c1 / n, 100.0 * c5 / n, n, vitdet_window))
    return results


def write_zero_shot_report(
    results: dict[str, list[ZeroShotResult]], out_dir: str | os.PathLike, stem: str = "zero_shot"
) -> tuple[Path, Path]:
    """CSV (one row per model x resolution) and a markdown table like the tech report's
    (rows = resolution, one top-1 column per model)."""
    out_dir = Path(out_dir)
    rows = [
        (model, r.resolution, r.vitdet_window or "", f"{r.top1:.3f}", f"{r.top5:.3f}", r.num_images)
        for model, rs in results.items()
        for r in rs
    ]
    csv_path = write_csv(
        out_dir / f"{stem}.csv", ["Model", "Resolution", "ViTDetWindow", "Top1", "Top5", "NumImages"], rows
    )
    models = list(results)
    row_labels: list[str] = []
    table: dict[tuple[str, str], float] = {}
    for m, rs in results.items():
        for r in rs:
            if r.row_label not in row_labels:
                row_labels.append(r.row_label)
            table[(r.row_label, m)] = r.top1
    lines = ["| Resolution | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for rl in row_labels:
        cells = [f"{table[(rl, m)]:.3f}" if (rl, m) in table else "-" for m in models]
        lines.append(f"| {rl} | " + " | ".join(cells) + " |")
    md_path = out_dir / f"{stem}.md"
    write_text(md_path, "Zero-shot top-1 accuracy (%)\n\n" + "\n".join(lines) + "\n")
    return csv_path, md_path
