"""The typed training config: recipes load, overrides apply, mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from openradio.distill.config import dump_config, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("recipe", ["tiny", "radio_v2.5-b", "radio_v2.5-l"])
def test_recipes_load_and_round_trip(recipe, tmp_path):
    cfg = load_config(REPO / "configs" / f"{recipe}.yaml")
    assert {t.name for t in cfg.teachers} == {"clip", "siglip", "dino_v2", "sam"}
    assert cfg.teacher("sam").summary_weight == 0.0
    assert any(p.mosaic == ["sam"] for st in cfg.stages for p in st.partitions)
    assert cfg.total_steps == sum(s.steps for s in cfg.stages) > 0
    (tmp_path / "c.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "c.yaml").to_dict() == cfg.to_dict()


def test_release_recipes_follow_the_v25_schedule():
    for name, model in (("radio_v2.5-b", "vit_base_patch16_224"), ("radio_v2.5-l", "vit_large_patch16_224")):
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        assert cfg.student.model == model and cfg.student.mlp_hidden_size == 1520
        res = [[p.resolution for p in st.partitions] for st in cfg.stages]
        assert res == [[256], [432], [432, 1024]]
        low, high = cfg.stages[-1].partitions
        assert set(low.ranks).isdisjoint(high.ranks)
        assert cfg.phi_s.enabled and cfg.amp


def test_overrides_types_and_errors():
    cfg = load_config(
        REPO / "configs/tiny.yaml",
        ["optim.lr=1e-4", "stages.0.steps=7", "data.path=/x", "stages.0.partitions.0.ranks=[0, 1]", "ema_decay=0"],
    )
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.stages[0].steps == 7 and cfg.data.path == "/x" and cfg.ema_decay == 0.0
    assert cfg.stages[0].partitions[0].ranks == [0, 1]
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lrr'\]"):
        load_config(REPO / "configs/tiny.yaml", ["optim.lrr=1"])
    with pytest.raises(ValueError, match="expected a number"):
        load_config(REPO / "configs/tiny.yaml", ["optim.lr=fast"])
    with pytest.raises(ValueError, match="unknown teacher 'dino'"):
        load_config(REPO / "configs/tiny.yaml", ["stages.0.partitions.0.mosaic=[dino]"])
    with pytest.raises(ValueError, match="must have summary_weight 0"):
        load_config(REPO / "configs/tiny.yaml", ["stages.0.partitions.0.mosaic=[clip]"])
    with pytest.raises(ValueError, match="key.path=value"):
        load_config(REPO / "configs/tiny.yaml", ["optim.lr"])
    with pytest.raises(FileNotFoundError):
        load_config(REPO / "configs/nope.yaml")
