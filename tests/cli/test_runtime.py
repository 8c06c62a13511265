"""The one home of the helpers every front room uses (openradio.runtime, openradio.inputs.imageio listing)."""

from __future__ import annotations

import pytest
import torch

from openradio import runtime
from openradio.inputs.imageio import expand_image_args, list_images
from openradio.model.radio import RadioOutput


def test_model_label_and_safe_names():
    assert runtime.model_label("radio_v2.5-b") == "radio_v2.5-b"
    assert runtime.model_label("/runs/a b/student.pth.tar") == "student"
    assert runtime.model_label("runs/model.safetensors") == "model"
    assert runtime.safe_name("a b/c?") == "a_b_c"


def test_parse_int_list_names_the_argument():
    assert runtime.parse_int_list("224, 432,768") == [224, 432, 768]
    for bad in ("", "a,b", "0,16", "-16"):
        with pytest.raises(ValueError, match="--resolutions must be"):
            runtime.parse_int_list(bad, "--resolutions")


class _Model(torch.nn.Module):
    preferred_resolution = None

    def get_nearest_supported_resolution(self, h, w):
        return (round(h / 32) * 32, round(w / 32) * 32)


def test_resolutions():
    m = _Model()
    assert runtime.default_resolution(m) == runtime.FALLBACK_RESOLUTION == 512
    m.preferred_resolution = (768, 1024)
    assert runtime.default_resolution(m) == 768
    assert runtime.supported_resolution(m, 500) == 512
    with pytest.raises(ValueError, match="positive"):
        runtime.supported_resolution(m, 0)


def test_select_output_and_device():
    out = RadioOutput(torch.zeros(1), torch.zeros(1))
    assert runtime.select_output(out, None) is out
    assert runtime.select_output({"backbone": out, "clip": out}, "clip") is out
    with pytest.raises(KeyError, match="adaptor_names"):
        runtime.select_output({"backbone": out}, "sam")
    with pytest.raises(KeyError, match="without adaptors"):
        runtime.select_output(out, "sam")
    assert runtime.pick_device("cpu") == torch.device("cpu")
    assert runtime.pick_device(None).type in ("cpu", "cuda")


def test_one_image_listing(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for rel in ("d/b.png", "d/a.jpg", "d/sub/c.webp", "d/.hidden.png", "d/notes.txt"):
        (tmp_path / rel).write_bytes(b"x")
    found = list_images(tmp_path / "d")
    assert [p.relative_to(tmp_path / "d").as_posix() for p in found] == ["a.jpg", "b.png", "sub/c.webp"]
    lst = tmp_path / "list.txt"
    lst.write_text("d/a.jpg\t3\n# comment\n\nd/missing.png\n")
    assert list_images(lst) == [tmp_path / "d/a.jpg", tmp_path / "d/missing.png"]
    with pytest.raises(FileNotFoundError, match="1 image"):
        list_images(lst, check_exists=True)
    assert [p.name for p in expand_image_args([str(tmp_path / "d"), str(tmp_path / "d/sub/c.webp")])] == [
        "a.jpg",
        "b.png",
        "c.webp",
    ]
    with pytest.raises(FileNotFoundError, match="image not found"):
        expand_image_args([str(tmp_path / "nope.png")])


def test_platform_line_names_the_cpu_kind_torch_and_threads(monkeypatch):
    for key in runtime.KERNEL_ENV:
        monkeypatch.delenv(key, raising=False)
    line = runtime.platform_line()
    assert line.startswith("cpu: ") and runtime.cpu_model() in line
    assert f"| torch {torch.__version__} |" in line and line.endswith(f"| {torch.get_num_threads()} threads")
    listed = line.split("| flags: ")[1].split(" | ")[0].split()
    assert listed == ["-"] or (set(listed) <= runtime.cpu_flags() and set(listed) <= set(runtime.PLATFORM_FLAGS))
    assert runtime.platform_line("cpu") == line  # a GPU name only for a CUDA device
    # kernels held below the CPU's own are named
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert runtime.platform_line() == line + " | ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16"
    # the flags in PLATFORM_FLAGS order, others left out; '-' when none of them is there
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"fma", "amx_tile", "avx2"})
    assert "| flags: avx2 amx_tile |" in runtime.platform_line()
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"neon"})
    assert "| flags: - |" in runtime.platform_line()
