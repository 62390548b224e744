import re
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


@pytest.mark.parametrize("lr", ["0", "0.0", "-0.01", "-1e-3"])
def test_a_learning_rate_of_0_or_below_is_refused(tmp_path, lr):
    path = tmp_path / "c.yaml"
    path.write_text("train: {iters: 1}\n")
    with pytest.raises(
        PixelwiseError, match=r"optim\.lr is .*; it must be a number above 0, e\.g\."
    ):
        load_config(path, [f"optim.lr={lr}"])
    for spelling in (".nan", ".inf"):  # YAML's NaN and infinity: refused as not a number
        with pytest.raises(PixelwiseError, match=r"optim\.lr is .* but must be a number"):
            load_config(path, [f"optim.lr={spelling}"])
    assert load_config(path, ["optim.lr=1e-6"]).optim.lr == 1e-6


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


@pytest.mark.parametrize("spelling", ["1e-3", "1E-3", "1.0e-3", ".001", "+1e-3"])
def test_numbers_in_exponent_spelling_are_floats(tmp_path, spelling):
    # YAML 1.1 reads 1e-3 (no dot) as a string; the README's own example writes it so.
    path = tmp_path / "c.yaml"
    path.write_text(f"train: {{iters: 1}}\noptim: {{lr: {spelling}}}\n")
    for cfg in (load_config(path), load_config(tmp_path / "c.yaml", [f"optim.lr={spelling}"])):
        assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)


BAD_VALUES = [
    ("optim.lr", "abc", "must be a number"),
    ("optim.lr", ".inf", "must be a number"),
    ("optim.lr", "true", "must be a number"),
    ("data.mean", "[a, b, c]", "must be a list of 3 numbers"),
    ("data.mean", "[0.5, 0.5]", "must be a list of 3 numbers"),
    ("data.std", "0.2", "must be a list of 3 numbers"),
    ("optim.betas", "[0.9]", "must be a list of 2 numbers"),
    ("data.crop_size", "[224]", "must be null or a list of 2 integers"),
    ("data.crop_size", "[224.5, 224]", "must be null or a list of 2 integers"),
    ("train.epochs", "ten", "must be null or an integer"),
    ("model.num_classes", "[3]", "must be null or an integer"),
    ("model.options", "3", "must be a mapping"),
    ("data.options", "[a]", "must be a mapping"),
    ("schedule.unit", "day", "must be one of epoch, iter"),
    ("data.hflip", "maybe", "must be true or false"),
    ("train.seed", "1.5", "must be an integer"),
    ("name", "123", "must be a string"),
    ("loss.class_weights", "7", "must be null or a string or a list of numbers"),
    ("data.batch_size", "0", "must be at least 1"),
    ("data.crop_size", "[0, 8]", "must be at least 1"),
    ("data.std", "[0, 1, 1]", "std 0"),
    ("data.scale_range", "[2, 1]", "0 < low <= high"),
]


@pytest.mark.parametrize(
    ("key", "raw", "expected"), BAD_VALUES, ids=[f"{k}={v}" for k, v, _ in BAD_VALUES]
)
def test_every_field_is_checked_in_yaml_and_overrides(tmp_path, key, raw, expected):
    section, _, name = key.rpartition(".")
    body = f"{section}:\n  {name}: {raw}\n" if section else f"{name}: {raw}\n"
    path = tmp_path / "c.yaml"
    path.write_text(body + ("train: {iters: 1}\n" if section != "train" else "  iters: 1\n"))
    with pytest.raises(PixelwiseError, match=re.escape(expected)) as from_file:
        load_config(path)
    plain = tmp_path / "plain.yaml"
    plain.write_text("train: {iters: 1}\n")
    with pytest.raises(PixelwiseError, match=re.escape(expected)) as from_override:
        load_config(plain, [f"{key}={raw}"])
    for error in (from_file.value, from_override.value):
        text = str(error)
        assert key in text and text.replace("e.g. ", "").count(". ") == 0 and text.endswith(".")
        if "must be" in expected and "at least" not in expected:
            assert f"write it like {key}=" in text


def test_values_are_converted_to_their_types():
    cfg = config_from_dict(
        {
            "train": {"iters": 1},
            "data": {"mean": [0, 1, 0], "scale_range": [1, 2]},
            "optim": {"lr": 1},
        }
    )
    assert cfg.data.mean == [0.0, 1.0, 0.0] and all(type(v) is float for v in cfg.data.mean)
    assert cfg.data.scale_range == [1.0, 2.0] and type(cfg.optim.lr) is float


def test_a_bad_value_writes_no_run_folder(tmp_path, capsys):
    from pixelwise.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(f"train: {{iters: 1, out_dir: {tmp_path / 'runs'}}}\n")
    assert main(["train", str(path), "data.mean=[a,b,c]"]) == 2
    err = capsys.readouterr().err
    assert (
        "data.mean is [a, b, c] but must be a list of 3 numbers" in err and "Traceback" not in err
    )
    assert not (tmp_path / "runs").exists()


def test_a_config_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(PixelwiseError, match="must hold a mapping"):
        load_config(path, ["optim.lr=0.1"])
