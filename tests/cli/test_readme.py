"""Every command in the README runs: its Python examples against a tiny checkpoint (released names
swapped for a local file, the text tower for a tiny open_clip model), and its CLI table's commands."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import torch

from _evalutils import make_tiny_text_model

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_the_two_commands_first():
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1)
    lines = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert lines == ["make demo", "make test"]
    assert README.index("make demo") < README.index("## Python API")


def test_readme_python_examples_run(tiny_checkpoint, monkeypatch):
    import open_clip

    import openradio.model.text as text

    def tiny_tower(model_name, pretrained=None, **kw):
        tok = open_clip.tokenizer.SimpleTokenizer(context_length=24)
        return text.TextTower(make_tiny_text_model(seed=0), tok, key=None, name=model_name)

    monkeypatch.setattr(text, "load_text_tower", tiny_tower)
    # the README's towers (ViT-H, SO400M) are swapped for a tiny one of the adaptors' width: skip the
    # width check that would (rightly) refuse the real towers for this tiny checkpoint
    monkeypatch.setattr(text, "text_tower_problem", lambda *a, **k: None)
    blocks = python_blocks()
    assert len(blocks) >= 5  # plain, NCHW, autocast, external preprocessor, adaptors with text
    ns: dict = {}
    for i, code in enumerate(blocks):
        code = code.replace('"radio_v2.5-b"', repr(str(tiny_checkpoint)))
        # small input keeps the test fast; same code path
        code = code.replace("torch.rand(1, 3, 500, 700)", "torch.rand(1, 3, 50, 70)")
        exec(compile(code, f"README.md python block {i}", "exec"), ns)
    assert ns["summary"].ndim == 2
    assert ns["probs"].shape == (1, 2)
    torch.testing.assert_close(ns["probs"].sum(-1), torch.ones(1))
    assert set(ns["out"]) == {"backbone", "clip", "sam"}


def test_readme_cli_table_commands_exist():
    from openradio.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    table_cmds = re.findall(r"^\| `openradio ([a-z-]+)", README, flags=re.M)
    assert len(table_cmds) >= 12
    for cmd in table_cmds:
        assert cmd in sub.choices, f"README lists `openradio {cmd}` but the CLI has no such command"
    # and every CLI command is in the README
    assert set(sub.choices) <= set(table_cmds)


def test_readme_single_machine_train_command(tmp_path, monkeypatch):
    """The README's one-machine training command, on a few sample photos and 2 steps."""
    from PIL import Image
    from skimage import data

    from openradio.cli import main
    block = re.search(r"```bash\n(openradio train .*?)```", README, flags=re.S).group(1)
    argv = shlex.split(block.strip())[1:]
    assert argv[:2] == ["train", "configs/tiny.yaml"]
    images = tmp_path / "images"
    images.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()[..., :3]).save(images / f"{name}.png")
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("configs/tiny.yaml", str(REPO / "configs/tiny.yaml")) for a in argv]
    rc = main(argv + ["stages.0.steps=2", "stages.0.partitions.1.batch_size=1", f"out_dir={tmp_path / 'run'}",
                      "progress=false", "tensorboard=false"])
    assert rc == 0
    import openradio
    m = openradio.radio_model(str(tmp_path / "tiny_radio.pth.tar"), adaptor_names=["sam"])
    assert m(torch.rand(1, 3, 64, 64))["sam"].features.shape[-1] == 32
