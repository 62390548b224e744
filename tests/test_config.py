from pathlib import Path

import pytest

from pixelwise.config import Config, apply_overrides, config_from_dict, load_config
from pixelwise.errors import PixelwiseError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_unknown_key_lists_valid_keys():
    with pytest.raises(PixelwiseError, match=r"unknown key 'optim.lrr'.*valid keys: name, lr"):
        config_from_dict({"optim": {"lrr": 1}, "train": {"iters": 1}})


def test_overrides_are_typed_and_checked(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {epochs: 2}\noptim: {name: sgd}\n")
    cfg = load_config(path, ["optim.lr=1", "data.crop_size=[32,48]", "optim.name=adamw"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.data.crop_size == [32, 48] and cfg.optim.name == "adamw"
    with pytest.raises(PixelwiseError, match="optim.name is 'lion'"):
        load_config(path, ["optim.name=lion"])
    with pytest.raises(PixelwiseError, match="must be an integer"):
        load_config(path, ["data.batch_size=two"])
    with pytest.raises(PixelwiseError, match="key=value"):
        apply_overrides({}, ["optim.lr"], "cli")


def test_exactly_one_of_epochs_and_iters():
    with pytest.raises(PixelwiseError, match="exactly one"):
        config_from_dict({})
    with pytest.raises(PixelwiseError, match="exactly one"):
        config_from_dict({"train": {"epochs": 1, "iters": 1}})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(PixelwiseError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(PixelwiseError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_recipe_loads_and_names_registered_parts(path):
    from pixelwise.data import list_datasets
    from pixelwise.models import list_models

    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.model.name in list_models()
    assert cfg.data.dataset in list_datasets()
    assert path.read_text().startswith("#"), "a recipe opens with a comment naming its source"
