"""Every command and code block in README.md and docs/*.md: the Python examples of the README and of
docs/api.md run against a tiny checkpoint (released names swapped for a local file, the text tower
for a tiny open_clip model); every Python block of every page compiles; every `openradio ...` command
parses with the CLI's own parser (the command and each flag exist), every `make` target, script and
recipe a page names exists; the CLI table lists every command; the README's train command runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from _evalutils import make_tiny_text_model

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
PAGES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))  # every page, whoever wrote it
RUNNABLE = ("README.md", "api.md")  # pages whose Python blocks run, in order, against a tiny checkpoint


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def shell_commands(text: str) -> list[str]:
    """The commands of every ```bash block (continuation lines joined, comments and prompts dropped)."""
    out = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", text, flags=re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.strip().removeprefix("$ ")
            if cmd and not cmd.startswith("#"):
                out.append(cmd)
    return out


def test_readme_has_the_two_commands_first():
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1)
    lines = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert lines == ["make demo", "make test"]
    assert README.index("make demo") < README.index("## Quickstart") < README.index("```python")


def test_readme_is_a_front_page_that_links_every_page():
    assert len(README.splitlines()) <= 250
    for page in sorted((REPO / "docs").glob("*.md")):
        if page.name in (
            "api.md",
            "cli.md",
            "demo.md",
            "training.md",
            "formats.md",
            "parity.md",
            "hostile-input.md",
            "performance.md",
            "architecture.md",
        ):
            assert f"docs/{page.name}" in README, f"README does not link docs/{page.name}"


def test_every_relative_link_resolves():
    bad = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).exists():
                bad.append(f"{page.relative_to(REPO)} -> {target}")
    assert not bad, f"links to missing files: {bad}"


@pytest.mark.parametrize("page", RUNNABLE)
def test_python_examples_run(page, tiny_checkpoint, monkeypatch):
    import open_clip

    import openradio.model.text as text

    def tiny_tower(model_name, pretrained=None, **kw):
        tok = open_clip.tokenizer.SimpleTokenizer(context_length=24)
        return text.TextTower(make_tiny_text_model(seed=0), tok, key=None, name=model_name)

    monkeypatch.setattr(text, "load_text_tower", tiny_tower)
    # the pages' towers (ViT-H, SO400M) are swapped for a tiny one of the adaptors' width: skip the
    # width check that would (rightly) refuse the real towers for this tiny checkpoint
    monkeypatch.setattr(text, "text_tower_problem", lambda *a, **k: None)
    path = REPO / page if page == "README.md" else REPO / "docs" / page
    blocks = python_blocks(path.read_text())
    assert blocks, f"{page} has no Python example"
    ns: dict = {}
    for i, code in enumerate(blocks):
        code = code.replace('"radio_v2.5-b"', repr(str(tiny_checkpoint)))
        # small input keeps the test fast; same code path
        code = code.replace("torch.rand(1, 3, 500, 700)", "torch.rand(1, 3, 50, 70)")
        exec(compile(code, f"{page} python block {i}", "exec"), ns)
    assert ns["summary"].ndim == 2
    assert ns["probs"].shape == (1, 2)
    torch.testing.assert_close(ns["probs"].sum(-1), torch.ones(1))
    assert set(ns["out"]) == {"backbone", "clip", "sam"}


def test_every_python_block_of_every_page_compiles():
    for page in PAGES:
        for i, code in enumerate(python_blocks(page.read_text())):
            compile(code, f"{page.relative_to(REPO)} python block {i}", "exec")


def _subparsers():
    from openradio.cli import build_parser

    parser = build_parser()
    return parser, next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")


def test_every_command_on_every_page_exists():
    """`openradio ...` lines parse with the CLI's parser (placeholders like `...` aside); `make X`
    targets, `python benchmarks/X.py` scripts and the recipes torchrun is given exist."""
    parser, sub = _subparsers()
    makefile = (REPO / "Makefile").read_text()
    problems = []
    for page in PAGES:
        where = page.relative_to(REPO)
        for cmd in shell_commands(page.read_text()):
            try:
                argv = shlex.split(cmd, comments=True)
            except ValueError as e:
                problems.append(f"{where}: {cmd!r}: {e}")
                continue
            if not argv:
                continue
            if argv[0] == "make":
                problems += [
                    f"{where}: no make target {t!r}"
                    for t in argv[1:]
                    if "=" not in t and not re.search(rf"^{re.escape(t)}:", makefile, re.M)
                ]
            elif argv[0] in ("python", "python3", ".venv/bin/python") and argv[1:2] and argv[1].endswith(".py"):
                if not (REPO / argv[1]).is_file():
                    problems.append(f"{where}: no script {argv[1]}")
            elif argv[0] == "torchrun" and "openradio.train" in argv:
                config = argv[argv.index("openradio.train") + 1]
                if not (REPO / config).is_file():
                    problems.append(f"{where}: no recipe {config}")
            elif argv[0] == "openradio" and "..." not in argv and "|" not in argv:
                try:
                    parser.parse_args(argv[1:])
                except SystemExit:
                    problems.append(f"{where}: `{cmd}` does not parse (see `openradio {argv[1]} --help`)")
    assert not problems, "\n".join(problems)


def test_cli_table_lists_every_command():
    _, sub = _subparsers()
    table_cmds = set()
    for page in PAGES:
        table_cmds |= set(re.findall(r"^\| `openradio ([a-z-]+)", page.read_text(), flags=re.M))
    assert len(table_cmds) >= 12
    for cmd in table_cmds:
        assert cmd in sub.choices, f"the docs list `openradio {cmd}` but the CLI has no such command"
    assert set(sub.choices) <= table_cmds, f"not in the CLI table (docs/cli.md): {set(sub.choices) - table_cmds}"


def test_readme_single_machine_train_command(tmp_path, monkeypatch):
    """The README's one-machine training command, on a few sample photos and 2 steps."""
    from PIL import Image
    from skimage import data

    from openradio.cli import main

    cmd = next(c for c in shell_commands(README) if c.startswith("openradio train "))
    argv = shlex.split(cmd)[1:]
    assert argv[:2] == ["train", "configs/tiny.yaml"]
    images = tmp_path / "images"
    images.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()[..., :3]).save(images / f"{name}.png")
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("configs/tiny.yaml", str(REPO / "configs/tiny.yaml")) for a in argv]
    rc = main(
        argv
        + [
            "stages.0.steps=2",
            "stages.0.partitions.1.batch_size=1",
            f"out_dir={tmp_path / 'run'}",
            "progress=false",
            "tensorboard=false",
        ]
    )
    assert rc == 0
    import openradio

    m = openradio.radio_model(str(tmp_path / "tiny_radio.pth.tar"), adaptor_names=["sam"])
    assert m(torch.rand(1, 3, 64, 64))["sam"].features.shape[-1] == 32
