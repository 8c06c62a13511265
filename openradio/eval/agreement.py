"""Zero-shot agreement with a teacher: how often a student's adaptor, through the teacher's own
text tower, picks the class the teacher itself picks.

Without labelled data (or with teachers whose class names mean nothing, such as the demo's random
ones) this still measures how faithfully an adaptor reproduces its teacher's embedding. The
teacher's predictions are written as a labelled-image list, so ``openradio zero-shot --data`` on
that file reproduces the numbers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from openradio.atomicio import write_text
from openradio.eval.data import read_labelled_images
from openradio.eval.zero_shot import ZeroShotResult, build_classifier, evaluate_zero_shot, zero_shot_logits
from openradio.inputs.imageio import load_image, resize_center_crop

__all__ = ["teacher_labels", "teacher_agreement", "agreement_by_teacher", "summarize_agreement"]


@torch.no_grad()
def teacher_labels(
    teacher: torch.nn.Module, classifier: torch.Tensor, image_paths: Sequence[str | os.PathLike]
) -> list[int]:
    """The teacher's own zero-shot class for each image (its summary against ``classifier``)."""
    device = teacher.pixel_mean.device
    out = []
    for p in image_paths:
        x = resize_center_crop(load_image(p), int(teacher.input_size))[None]
        out.append(int(zero_shot_logits(teacher(x.to(device)).summary.float().cpu(), classifier)[0].argmax()))
    return out


def teacher_agreement(
    teacher: torch.nn.Module,
    tower: Any,
    models: Mapping[str, torch.nn.Module],
    adaptor: str,
    image_paths: Sequence[str | os.PathLike],
    classnames: Sequence[str],
    templates: Sequence,
    resolutions: Sequence[int],
    labels_path: str | os.PathLike,
    **kwargs,
) -> dict[str, list[ZeroShotResult]]:
    """Write the teacher's predictions to ``labels_path`` (``image<TAB>class``, paths relative to its
    folder) and return each model's agreement with them per resolution (``{model: [ZeroShotResult]}``;
    top-1 = agreement in %). ``tower`` has ``tokenize`` and ``encode_text``
    (:func:`openradio.model.text.load_text_tower`); ``kwargs`` go to :func:`evaluate_zero_shot`."""
    classes = list(classnames)
    clf = build_classifier(tower.tokenize, tower.encode_text, classes, templates, progress=False)
    labels_path = Path(labels_path)
    rows = [
        f"{os.path.relpath(p, labels_path.parent)}\t{classes[i]}"
        for p, i in zip(image_paths, teacher_labels(teacher, clf, image_paths))
    ]
    write_text(labels_path, "\n".join(rows) + "\n")
    data = read_labelled_images(labels_path, classes)
    return {
        label: evaluate_zero_shot(model, clf, data, list(resolutions), adaptor=adaptor, progress=False, **kwargs)
        for label, model in models.items()
    }


def agreement_by_teacher(
    teachers: Mapping[str, torch.nn.Module],
    towers: Mapping[str, Any],
    models: Mapping[str, torch.nn.Module],
    image_paths: Sequence[str | os.PathLike],
    classnames: Sequence[str],
    templates: Sequence,
    resolutions: Sequence[int],
    out_dir: str | os.PathLike,
    **kwargs,
) -> dict[str, dict[str, list[ZeroShotResult]]]:
    """:func:`teacher_agreement` for each teacher (by adaptor name, with its text tower in ``towers``):
    ``{teacher: {model: [ZeroShotResult]}}``; the labels go to ``out_dir/TEACHER_teacher_labels.tsv``."""
    return {
        name: teacher_agreement(
            teacher,
            towers[name],
            models,
            name,
            image_paths,
            classnames,
            templates,
            resolutions,
            Path(out_dir) / f"{name}_teacher_labels.tsv",
            **kwargs,
        )
        for name, teacher in teachers.items()
    }


def summarize_agreement(results: Mapping[str, Mapping[str, Sequence[ZeroShotResult]]]) -> dict:
    """``{teacher: {model: {resolution: {"top1", "top5"}}}}`` (JSON-ready)."""
    return {
        t: {label: {str(r.resolution): {"top1": r.top1, "top5": r.top5} for r in rs} for label, rs in per_model.items()}
        for t, per_model in results.items()
    }
