"""Released RADIO versions as data: name -> weight source and resolution settings.

Values follow the official resource table (inference spec §1.5, families spec §9-§10). The
architecture is always built from each checkpoint's ``args`` (one loader serves every version);
``arch`` records the backbone name the release is known or inferred to carry, which says which
construction path (and which parity fixture) covers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

HF = "https://huggingface.co"


@dataclass(frozen=True)
class Version:
    name: str
    url: str
    patch_size: int
    max_resolution: int
    preferred_resolution: tuple[int, int]
    supports_vitdet: bool = True
    vitdet_num_windowed: Optional[int] = None
    vitdet_num_global: Optional[int] = None
    adaptors: tuple[str, ...] = ()
    family: str = "RADIO"
    note: str = ""
    arch: str = ""  # args.model of the release (see arch_known)
    arch_known: bool = True  # False: inferred (NVIDIA has not published these args)
    feature_head: str = "mlp"  # 'attn' where the release's dense heads are attention heads

    @property
    def construction(self) -> str:
        """How openradio builds it: the backbone path (and the attention feature head)."""
        # lazy: vit_families imports torch and timm; this module is plain data (the CLI checks --version with it)
        from openradio.model.vit_families import FAMILIES

        path = f"{self.arch} ({'RADIO name, timm blocks' if self.arch in FAMILIES else 'timm model'})"
        return path + (" + attn feature head" if self.feature_head == "attn" else "")

    @property
    def parity_fixtures(self) -> list[str]:
        """Official-output fixtures whose checkpoints take this release's construction path."""
        out = list(PARITY_FIXTURES.get(self.arch, []))
        if self.feature_head == "attn" and ATTN_HEAD_FIXTURE not in out:
            out.append(ATTN_HEAD_FIXTURE)
        return out

    @property
    def filename(self) -> str:
        """File name in torch.hub's checkpoint cache (the URL's last path element)."""
        return self.url.split("?")[0].rsplit("/", 1)[-1]


_V25_ADAPTORS = ("clip", "siglip", "dino_v2", "sam")
_V3_ADAPTORS = ("clip", "siglip2-g", "dino_v2", "sam")
_V4_ADAPTORS = ("siglip2-g", "dino_v3", "sam3")

# construction path (args.model) -> parity fixtures made with the official code that take it
# (tests/fixtures/: official-mini, official-families; the 69 MB official-v2.5 set lives in shared/)
PARITY_FIXTURES: dict[str, list[str]] = {
    "vit_base_patch16_224": ["official-mini/tiny_radio_v25_half", "official-mini/tiny_radio_v25_norm"],
    "vit_large_patch16_224": ["official-mini/tiny_radio_v25_half", "official-mini/tiny_radio_v25_norm"],
    "vit_huge_patch16_224_mlpnorm": ["official-families/radio_v2_mlpnorm_bf16"],
    "vit_huge_patch16_224": ["official-families/radio_v25h_huge_norm"],
    "dino_v2_g_student": ["official-families/radio_v25g_dinov2"],
    "vit_giant_patch16_224": ["official-families/c_radio_v2g_giant_half"],
    "vit_base_patch16_v2_224": ["official-families/c_radio_v3_vitv2_damp_half"],
    "vit_large_patch16_v2_224": ["official-families/c_radio_v3_vitv2_damp_half"],
    "vit_so400m_patch16_224": ["official-families/c_radio_v4_so400m_ema"],
    "vit_so400m_v2_patch16_224": ["official-families/c_radio_v4_so400m_v2"],
}
ATTN_HEAD_FIXTURE = "official-families/c_radio_v4_so400m_ema"
_C_LICENSE = "C-RADIO weights are under NVIDIA's C-RADIO licence terms; see the model card on Hugging Face."

VERSIONS: dict[str, Version] = {
    v.name: v
    for v in [
        Version(
            "radio_v2.5-b",
            f"{HF}/nvidia/RADIO/resolve/main/radio-v2.5-b_half.pth.tar?download=true",
            16,
            2048,
            (768, 768),
            vitdet_num_global=4,
            adaptors=_V25_ADAPTORS,
            family="RADIOv2.5",
            arch="vit_base_patch16_224",
        ),
        Version(
            "radio_v2.5-l",
            f"{HF}/nvidia/RADIO/resolve/main/radio-v2.5-l_half.pth.tar?download=true",
            16,
            2048,
            (768, 768),
            vitdet_num_global=4,
            adaptors=_V25_ADAPTORS,
            family="RADIOv2.5",
            arch="vit_large_patch16_224",
        ),
        Version(
            "radio_v2.5-h",
            f"{HF}/nvidia/RADIO/resolve/main/radio_v2.5-h.pth.tar?download=true",
            16,
            2048,
            (768, 768),
            vitdet_num_global=4,
            adaptors=_V25_ADAPTORS,
            family="RADIOv2.5",
            arch="vit_huge_patch16_224",
            arch_known=False,
        ),
        Version(
            "radio_v2.5-h-norm",
            f"{HF}/nvidia/RADIO/resolve/main/radio_v2.5-h-norm.pth.tar?download=true",
            16,
            2048,
            (768, 768),
            vitdet_num_global=4,
            adaptors=_V25_ADAPTORS,
            family="RADIOv2.5",
            arch="vit_huge_patch16_224",
            arch_known=False,
        ),
        Version(
            "radio_v2.5-g",
            f"{HF}/nvidia/RADIO/resolve/main/radio_v2.5-g.pth.tar?download=true",
            14,
            1792,
            (896, 896),
            vitdet_num_global=8,
            adaptors=_V25_ADAPTORS,
            family="RADIOv2.5",
            arch="dino_v2_g_student",
            arch_known=False,
        ),
        Version(
            "radio_v2.1",
            f"{HF}/nvidia/RADIO/resolve/main/radio_v2.1_bf16.pth.tar?download=true",
            16,
            2048,
            (432, 432),
            vitdet_num_windowed=5,
            adaptors=("clip", "openai_clip", "dino_v2", "sam"),
            family="RADIOv2",
            arch="vit_huge_patch16_224_mlpnorm",
        ),
        Version(
            "radio_v2",
            f"{HF}/nvidia/RADIO/resolve/main/radio_v2.pth.tar?download=true",
            16,
            2048,
            (432, 432),
            vitdet_num_windowed=5,
            adaptors=("clip", "openai_clip", "dino_v2", "sam"),
            family="RADIOv2",
            arch="vit_huge_patch16_224_mlpnorm",
        ),
        Version(
            "radio_v1",
            f"{HF}/nvidia/RADIO/resolve/main/radio_v1.pth.tar?download=true",
            14,
            1050,
            (378, 378),
            family="RADIOv1",
            arch="vit_huge_patch14_224",
        ),
        Version(
            "c-radio_v2-g",
            f"{HF}/nvidia/C-RADIOv2-g/resolve/main/c-radio_v2-g_half.pth.tar",
            16,
            2048,
            (768, 768),
            vitdet_num_global=8,
            family="C-RADIOv2",
            note=_C_LICENSE,
            arch="vit_giant_patch16_224",
            arch_known=False,
        ),
        Version(
            "c-radio_v2-vlm-h",
            f"{HF}/nvidia/C-RADIOv2-VLM-H/resolve/main/c-radio_v2-vlm-h.pth.tar",
            16,
            2048,
            (768, 768),
            vitdet_num_global=8,
            family="C-RADIOv2",
            note=_C_LICENSE,
            arch="vit_huge_patch16_224",
            arch_known=False,
        ),
        *[
            Version(
                f"c-radio_v3-{s}",
                f"{HF}/nvidia/C-RADIOv3-{S}/resolve/main/{fn}?download=true",
                16,
                2048,
                (512, 512),
                supports_vitdet=False,
                adaptors=_V3_ADAPTORS,
                family="C-RADIOv3",
                note=_C_LICENSE,
                arch=arch,
                arch_known=False,
            )
            for s, S, fn, arch in [
                ("b", "B", "c-radio_v3-b_half.pth.tar", "vit_base_patch16_v2_224"),
                ("l", "L", "c-radio-v3_l_half.pth.tar", "vit_large_patch16_v2_224"),
                ("h", "H", "c-radio_v3-h_half.pth.tar", "vit_huge_patch16_224"),
                ("g", "g", "c-radio_v3-g_half.pth.tar", "vit_giant_patch16_224"),
            ]
        ],
        Version(
            "c-radio_v4-so400m",
            f"{HF}/nvidia/C-RADIOv4-SO400M/resolve/main/c-radio_v4-so400m_half.pth.tar?download=true",
            16,
            2048,
            (512, 512),
            adaptors=_V4_ADAPTORS,
            family="C-RADIOv4",
            note=_C_LICENSE,
            arch="vit_so400m_patch16_224",
            arch_known=False,
            feature_head="attn",
        ),
        Version(
            "c-radio_v4-h",
            f"{HF}/nvidia/C-RADIOv4-H/resolve/main/c-radio_v4-h_half.pth.tar?download=true",
            16,
            2048,
            (512, 512),
            adaptors=_V4_ADAPTORS,
            family="C-RADIOv4",
            note=_C_LICENSE,
            arch="vit_huge_patch16_224",
            arch_known=False,
            feature_head="attn",
        ),
    ]
}

# The official torch.hub entry's default (an empty version) is C-RADIOv4-H.
DEFAULT_VERSION = "c-radio_v4-h"


def get_version(name: str) -> Version:
    try:
        return VERSIONS[name]
    except KeyError:
        raise ValueError(
            f"Unknown RADIO version {name!r}. Known versions: {', '.join(VERSIONS)}; "
            "or pass the path of a local checkpoint file."
        ) from None


def list_versions() -> list[Version]:
    return list(VERSIONS.values())
