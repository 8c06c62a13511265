"""Teachers and students side by side: one PCA picture grid per image.

Columns are input resolutions; rows are the model input, then per teacher the teacher's features
and each model's adaptor features, then the first model's backbone. A teacher block is coloured
with one PCA basis fitted on that teacher's maps at every resolution, so a colour means the same
feature in every panel of the block (teacher or student, any resolution); the backbone row has
its own basis, shared across resolutions.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from openradio.eval.mode_switch import align_teacher, teacher_resolution
from openradio.runtime import supported_resolution
from openradio.viz.features import model_features, prepare_input
from openradio.viz.pca import fit_pca_on_maps, pca_rgb
from openradio.viz.render import Rendered, model_grid

__all__ = ["teacher_student_grid"]


@torch.no_grad()
def teacher_student_grid(
    image: torch.Tensor,
    models: Mapping[str, torch.nn.Module],
    teachers: Mapping,
    resolutions: Sequence[int],
    panel: int = 128,
) -> Rendered:
    """The grid for one ``(3, H, W)`` image; ``models`` by label (the first is the main model),
    ``teachers`` by adaptor name. Inputs are square centre crops, so the teacher's and the
    students' token grids cover the same pixels."""
    main_label, main = next(iter(models.items()))
    disp = (panel, panel)
    resolutions = list(dict.fromkeys(supported_resolution(main, r) for r in resolutions))
    inputs = {r: prepare_input(image, main, r, square=True) for r in resolutions}
    rows: list[tuple[str, list]] = [("input", [(r, inputs[r]) for r in resolutions])]
    for tname, teacher in teachers.items():
        t_maps, s_maps = [], {label: [] for label in models}
        for r in resolutions:
            t_res = teacher_resolution(r, int(main.patch_size), int(teacher.patch_size))
            t_feat = teacher(inputs[r][None].to(teacher.pixel_mean.device), resolution=t_res).features.float().cpu()
            for label, model in models.items():
                s_maps[label].append(model_features(model, inputs[r], adaptor=tname).cpu())
            t_maps.append(align_teacher(t_feat, tuple(s_maps[main_label][-1].shape[-2:])))
        stats = fit_pca_on_maps(t_maps)
        rows.append((f"{tname} teacher", [(r, pca_rgb(m, disp, stats=stats)) for r, m in zip(resolutions, t_maps)]))
        for label, maps in s_maps.items():
            rows.append((f"{tname}: {label}", [(r, pca_rgb(m, disp, stats=stats)) for r, m in zip(resolutions, maps)]))
    b_maps = [model_features(main, inputs[r]).cpu() for r in resolutions]
    b_stats = fit_pca_on_maps(b_maps)
    rows.append(
        (f"backbone: {main_label}", [(r, pca_rgb(m, disp, stats=b_stats)) for r, m in zip(resolutions, b_maps)])
    )
    return model_grid(None, rows, panel_height=panel, font_size=13)
