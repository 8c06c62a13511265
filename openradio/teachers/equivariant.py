"""A teacher that is translation-equivariant by construction, for tests and demos.

A patchify convolution (kernel = stride = patch) followed by 1x1 convolutions: no position
information and no mixing between patches, so the feature at a grid position depends only on the
pixels of that patch.  Running a view alone or anywhere on a larger canvas (aligned to the patch
grid) therefore gives the same features, which is what the mosaic test relies on.
"""

from __future__ import annotations

from torch import Tensor, nn

from openradio.teachers.base import IMAGENET_MEAN, IMAGENET_STD, Teacher, load_state_dict_file

__all__ = ["TranslationEquivariantTeacher"]


class TranslationEquivariantTeacher(Teacher):
    """Summary = mean-pooled features through a Linear (so it has one, like CLIP); features NCHW."""

    multi_resolution = True

    def __init__(
        self,
        name: str = "equivariant",
        patch_size: int = 16,
        input_size: int = 64,
        feature_dim: int = 16,
        hidden_dim: int = 32,
        summary_dim: int | None = 8,
        weights: str | None = None,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__(name, patch_size, input_size, summary_dim, feature_dim, mean=mean, std=std)
        self.model = nn.Sequential(
            nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size),
            nn.GELU(),
            nn.Conv2d(hidden_dim, hidden_dim, kernel_size=1),
            nn.GELU(),
            nn.Conv2d(hidden_dim, feature_dim, kernel_size=1),
        )
        self.summary_head = nn.Linear(feature_dim, summary_dim) if summary_dim else None
        if weights is not None:
            self._load_into(self, load_state_dict_file(weights), source=str(weights))
        self.freeze()

    def _forward(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        feats = self.model(x)
        summary = self.summary_head(feats.mean(dim=(2, 3))) if self.summary_head is not None else None
        return summary, feats
