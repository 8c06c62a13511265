"""The trainer checks its config when it is built, whoever made the config (issue 26): a mistake is
the config's own one-line error before any teacher, student or output folder exists."""

from __future__ import annotations

import pytest
import yaml

from openradio.distill.config import ConfigError, TrainConfig, from_dict, shipped_recipe
from openradio.distill.trainer import Trainer


def test_a_config_built_in_code_is_validated_before_anything_is_built(tmp_path):
    recipe = yaml.safe_load(shipped_recipe("tiny").read_text())
    recipe["out_dir"] = str(tmp_path / "run")
    recipe["stages"][0]["partitions"][1]["resolution"] = 100  # not a multiple of the student's patch size
    cfg = from_dict(TrainConfig, recipe)  # from_dict converts types; the value checks are validate()'s
    with pytest.raises(ConfigError, match=r"stages\.0\.partitions\.1\.resolution.*multiple of 16"):
        Trainer(cfg)
    assert not (tmp_path / "run").exists()
