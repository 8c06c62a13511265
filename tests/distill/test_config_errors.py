"""Issue 14 items 1-2: every bad override or impossible value is one line naming it in the config's
own words, exit 2, before anything (teachers, student) is built."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from openradio.distill.config import load_config

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"


@pytest.mark.parametrize(
    "override,message",
    [
        ("stages.5.steps=3", "stages.5.steps=3: there is no stages.5 (stages has 1 item: 0)"),
        (
            "stages.0.partitions.7.resolution=64",
            "stages.0.partitions.7.resolution=64: there is no stages.0.partitions.7 "
            "(stages.0.partitions has 2 items: 0..1)",
        ),
        (
            "stages.x.steps=1",
            "stages.x.steps=1: stages is a list, address its items by number (stages.0, stages.1, ...)",
        ),
        ("stages.0.steps=abc", "stages.0.steps=abc: expected an integer, got 'abc'"),
        ("stages.0.steps=2.5", "stages.0.steps=2.5: expected an integer, got 2.5"),
        ("optim.lr=fast", "optim.lr=fast: expected a number, got 'fast'"),
        ("student.model_kwargs=3", "student.model_kwargs=3: expected a mapping, got 3"),
        ("optim.lr.x=1", "optim.lr.x=1: optim.lr is a number, not a mapping"),
        (
            "partitions.1.resolution=100",
            "partitions.1.resolution=100: unknown key(s) ['partitions'] (partitions lives under stages.N.partitions)",
        ),
        (
            "stages.0.partitions.1.resolution=100",
            "stages.0.partitions.1.resolution=100: must be a multiple of 16 (the student's patch size)",
        ),
        ("stages.0.partitions.1.resolution=0", "stages.0.partitions.1.resolution=0: must be a positive multiple of 16"),
        ("stages.0.partitions.0.batch_size=0", "stages.0.partitions.0.batch_size=0: must be at least 1"),
        ("stages.0.steps=-1", "stages.0.steps=-1: must be at least 0"),
        (
            "stages.0.partitions.0.crop_scale=[0.5, 2]",
            "stages.0.partitions.0.crop_scale=[0.5, 2]: must be two numbers 0 < low <= high <= 1",
        ),
        ("optim.lr=-1", "optim.lr=-1: must be at least 0"),
        ("optim.accumulation=0", "optim.accumulation=0: must be at least 1"),
        ("ema_decay=1.5", "ema_decay=1.5: must be in [0, 1)"),
        ("vitdet_aug_prob=2", "vitdet_aug_prob=2: must be in [0, 1]"),
        ("checkpoint_every=0", "checkpoint_every=0: must be at least 1"),
        ("data.kind=zip", "data.kind=zip: must be one of auto, folder, list, shards"),
        ("teachers.0.type=clipper", "teachers.0.type=clipper: unknown teacher type; known types: "),
        ("stages.0.partitions.0.ranks=[-1]", "stages.0.partitions.0.ranks=[-1]: must be a list of rank numbers >= 0"),
    ],
)
def test_bad_override_is_one_line_in_the_configs_words(override, message):
    with pytest.raises(ValueError) as info:
        load_config(TINY, [override])
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(message), text


def test_bad_value_in_the_yaml_file_names_its_path(tmp_path):
    bad = TINY.read_text().replace("resolution: 128", "resolution: 100")
    (tmp_path / "c.yaml").write_text(bad)
    with pytest.raises(
        ValueError,
        match=r"^.*c\.yaml: stages\.0\.partitions\.1\.resolution=100: must be a multiple "
        r"of 16 \(the student's patch size\)$",
    ):
        load_config(tmp_path / "c.yaml")


def test_patch_size_comes_from_model_kwargs():
    cfg = load_config(TINY, ["student.model_kwargs.patch_size=8", "stages.0.partitions.1.resolution=104"])
    assert cfg.stages[0].partitions[1].resolution == 104
    with pytest.raises(ValueError, match="multiple of 8"):
        load_config(TINY, ["student.model_kwargs.patch_size=8", "stages.0.partitions.1.resolution=100"])


def test_train_command_rejects_before_building_anything(tmp_path):
    """One line on stderr, exit 2, no traceback, and nothing was built (no run folder written)."""
    code = (
        "import sys, openradio.cli as c\n"
        "rc = c.main(sys.argv[1:])\n"
        "assert 'openradio.distill.trainer' not in sys.modules, 'got as far as the trainer'\n"
        "sys.exit(rc)\n"
    )
    for ov in ("stages.5.steps=3", "stages.0.partitions.1.resolution=100"):
        p = subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                "train",
                str(TINY),
                f"data.path={tmp_path}",
                f"out_dir={tmp_path / 'run'}",
                ov,
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
        )
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"openradio train: error: {ov}:"), p.stderr
        assert not (tmp_path / "run").exists()
