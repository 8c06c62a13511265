"""Released RADIO versions as data: name -> weight source and resolution settings.

Values follow the official resource table (inference spec §1.5). The architecture itself is
never listed here: it is read from each checkpoint's ``args`` so that one loader serves every
version.
"""
from __future__ import annotations

from dataclasses import dataclass, field
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

    @property
    def filename(self) -> str:
        """File name in torch.hub's checkpoint cache (the URL's last path element)."""
        return self.url.split("?")[0].rsplit("/", 1)[-1]


_V25_ADAPTORS = ("clip", "siglip", "dino_v2", "sam")
_C_LICENSE = "C-RADIO weights are under NVIDIA's C-RADIO licence terms; see the model card on Hugging Face."

VERSIONS: dict[str, Version] = {v.name: v for v in [
    Version("radio_v2.5-b", f"{HF}/nvidia/RADIO/resolve/main/radio-v2.5-b_half.pth.tar?download=true",
            16, 2048, (768, 768), vitdet_num_global=4, adaptors=_V25_ADAPTORS, family="RADIOv2.5"),
    Version("radio_v2.5-l", f"{HF}/nvidia/RADIO/resolve/main/radio-v2.5-l_half.pth.tar?download=true",
            16, 2048, (768, 768), vitdet_num_global=4, adaptors=_V25_ADAPTORS, family="RADIOv2.5"),
    Version("radio_v2.5-h", f"{HF}/nvidia/RADIO/resolve/main/radio_v2.5-h.pth.tar?download=true",
            16, 2048, (768, 768), vitdet_num_global=4, adaptors=_V25_ADAPTORS, family="RADIOv2.5"),
    Version("radio_v2.5-h-norm", f"{HF}/nvidia/RADIO/resolve/main/radio_v2.5-h-norm.pth.tar?download=true",
            16, 2048, (768, 768), vitdet_num_global=4, adaptors=_V25_ADAPTORS, family="RADIOv2.5"),
    Version("radio_v2.5-g", f"{HF}/nvidia/RADIO/resolve/main/radio_v2.5-g.pth.tar?download=true",
            14, 1792, (896, 896), vitdet_num_global=8, adaptors=_V25_ADAPTORS, family="RADIOv2.5"),
    Version("radio_v2.1", f"{HF}/nvidia/RADIO/resolve/main/radio_v2.1_bf16.pth.tar?download=true",
            16, 2048, (432, 432), vitdet_num_windowed=5, adaptors=("clip", "dino_v2", "sam"), family="RADIOv2"),
    Version("radio_v2", f"{HF}/nvidia/RADIO/resolve/main/radio_v2.pth.tar?download=true",
            16, 2048, (432, 432), vitdet_num_windowed=5, adaptors=("clip", "dino_v2", "sam"), family="RADIOv2"),
    Version("c-radio_v2-g", f"{HF}/nvidia/C-RADIOv2-g/resolve/main/c-radio_v2-g_half.pth.tar",
            16, 2048, (768, 768), vitdet_num_global=8, family="C-RADIOv2", note=_C_LICENSE),
    Version("c-radio_v2-vlm-h", f"{HF}/nvidia/C-RADIOv2-VLM-H/resolve/main/c-radio_v2-vlm-h.pth.tar",
            16, 2048, (768, 768), vitdet_num_global=8, family="C-RADIOv2", note=_C_LICENSE),
    *[Version(f"c-radio_v3-{s}", f"{HF}/nvidia/C-RADIOv3-{S}/resolve/main/{fn}?download=true",
              16, 2048, (512, 512), supports_vitdet=False, adaptors=("clip", "siglip2-g", "dino_v2", "sam"),
              family="C-RADIOv3", note=_C_LICENSE)
      for s, S, fn in [("b", "B", "c-radio_v3-b_half.pth.tar"), ("l", "L", "c-radio-v3_l_half.pth.tar"),
                       ("h", "H", "c-radio_v3-h_half.pth.tar"), ("g", "g", "c-radio_v3-g_half.pth.tar")]],
    Version("c-radio_v4-so400m", f"{HF}/nvidia/C-RADIOv4-SO400M/resolve/main/c-radio_v4-so400m_half.pth.tar?download=true",
            16, 2048, (512, 512), adaptors=("siglip2-g", "dino_v3", "sam3"), family="C-RADIOv4", note=_C_LICENSE),
    Version("c-radio_v4-h", f"{HF}/nvidia/C-RADIOv4-H/resolve/main/c-radio_v4-h_half.pth.tar?download=true",
            16, 2048, (512, 512), adaptors=("siglip2-g", "dino_v3", "sam3"), family="C-RADIOv4", note=_C_LICENSE),
]}

DEFAULT_VERSION = "radio_v2.5-b"


def get_version(name: str) -> Version:
    try:
        return VERSIONS[name]
    except KeyError:
        raise ValueError(
            f"Unknown RADIO version {name!r}. Known versions: {', '.join(VERSIONS)}; "
            "or pass the path of a local checkpoint file.") from None


def list_versions() -> list[Version]:
    return list(VERSIONS.values())
