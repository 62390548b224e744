"""A config may extend others with ``base:``: merge order, paths, errors, the run folder's copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pixelwise.config import config_from_dict, dump_config, load_config, load_config_data
from pixelwise.errors import PixelwiseError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))
SHARED_BASES = sorted((ROOT / "configs" / "base").glob("*.yaml"))


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


BASE = {
    "name": "base_run",
    "model": {"name": "unet", "options": {"base_channels": 8, "padding": "same"}},
    "data": {"dataset": "shapes", "crop_size": [32, 32], "mean": [0.5, 0.5, 0.5]},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "train": {"epochs": 10, "eval_every": 2},
}


def test_mapping_merge_and_list_replace(tmp_path: Path) -> None:
    """Mappings merge key by key (model.options too); lists and scalars replace."""
    _write(tmp_path / "base.yaml", BASE)
    leaf = _write(
        tmp_path / "leaf.yaml",
        {
            "base": "base.yaml",
            "name": "leaf_run",
            "model": {"options": {"base_channels": 16}},
            "data": {"crop_size": [24, 40]},
            "optim": {"lr": 0.01},
        },
    )
    expected = {
        "name": "leaf_run",
        "model": {"name": "unet", "options": {"base_channels": 16, "padding": "same"}},
        "data": {"dataset": "shapes", "crop_size": [24, 40], "mean": [0.5, 0.5, 0.5]},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "train": {"epochs": 10, "eval_every": 2},
    }
    assert load_config_data(leaf) == expected
    assert load_config(leaf) == config_from_dict(expected)


def test_a_list_replaces_even_when_shorter(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", {**BASE, "loss": {"aux_weights": [0.4, 0.4]}})
    leaf = _write(tmp_path / "leaf.yaml", {"base": "base.yaml", "loss": {"aux_weights": [1.0]}})
    assert load_config(leaf).loss.aux_weights == [1.0]


def test_a_chain_of_two_bases(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", BASE)
    _write(tmp_path / "b.yaml", {"base": "a.yaml", "optim": {"lr": 0.05}, "data": {"hflip": False}})
    c = _write(tmp_path / "c.yaml", {"base": "b.yaml", "optim": {"momentum": 0.0}})
    cfg = load_config(c)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.data.hflip) == (0.05, 0.0, False)
    assert cfg.name == "base_run" and cfg.train.epochs == 10
    assert "base" not in load_config_data(c)


def test_the_files_own_sections_come_after_all_its_bases(tmp_path: Path) -> None:
    _write(tmp_path / "model.yaml", {"model": {"name": "enet"}, "optim": {"lr": 0.5}})
    _write(tmp_path / "solver.yaml", {"optim": {"name": "adam", "lr": 5e-4}})
    leaf = _write(tmp_path / "leaf.yaml", {**BASE, "base": ["model.yaml", "solver.yaml"]})
    cfg = load_config(leaf)
    assert cfg.model.name == "unet"
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 0.1


def test_later_bases_merge_over_earlier_ones(tmp_path: Path) -> None:
    _write(tmp_path / "one.yaml", {"model": {"name": "enet"}, "optim": {"name": "sgd", "lr": 0.5}})
    _write(tmp_path / "two.yaml", {"optim": {"name": "adam"}})
    leaf = _write(tmp_path / "leaf.yaml", {"base": ["one.yaml", "two.yaml"], "train": {"iters": 5}})
    cfg = load_config(leaf)
    assert (cfg.model.name, cfg.optim.name, cfg.optim.lr) == ("enet", "adam", 0.5)


def test_a_base_path_is_relative_to_the_file_that_names_it(tmp_path: Path, monkeypatch) -> None:
    _write(tmp_path / "parts" / "solver.yaml", {"optim": {"lr": 0.02}})
    _write(tmp_path / "parts" / "common.yaml", {**BASE, "base": "solver.yaml"})
    leaf = _write(tmp_path / "recipes" / "sub" / "leaf.yaml", {"base": "../../parts/common.yaml"})
    monkeypatch.chdir(tmp_path / "recipes")  # the current directory plays no part
    cfg = load_config(leaf)
    assert cfg.optim.lr == 0.1  # common.yaml's own value over its base's
    assert cfg.data.crop_size == [32, 32]


def test_overrides_apply_over_the_merged_config(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", BASE)
    leaf = _write(tmp_path / "leaf.yaml", {"base": "base.yaml", "optim": {"lr": 0.01}})
    cfg = load_config(leaf, ["optim.lr=0.3", "model.options={depth: 2}"])
    assert cfg.optim.lr == 0.3
    # An override replaces a whole value, as it always has.
    assert cfg.model.options == {"depth": 2}


def test_an_iters_override_clears_the_epochs_of_a_base(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", BASE)
    leaf = _write(tmp_path / "leaf.yaml", {"base": "base.yaml"})
    cfg = load_config(leaf, ["train.iters=300"])
    assert (cfg.train.iters, cfg.train.epochs, cfg.train.eval_every) == (300, None, 30)


def test_a_file_setting_one_length_clears_its_bases_other(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", BASE)
    leaf = _write(tmp_path / "leaf.yaml", {"base": "base.yaml", "train": {"iters": 1000}})
    cfg = load_config(leaf)
    assert (cfg.train.iters, cfg.train.epochs, cfg.train.eval_every) == (1000, None, 100)
    both = _write(
        tmp_path / "both.yaml",
        {"base": "base.yaml", "train": {"iters": 1000, "epochs": None, "eval_every": 50}},
    )
    assert load_config(both).train.eval_every == 50


def test_dump_config_writes_the_merged_config_without_base(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", BASE)
    leaf = _write(tmp_path / "leaf.yaml", {"base": "base.yaml", "optim": {"lr": 0.01}})
    cfg = load_config(leaf)
    out = tmp_path / "run" / "config.yaml"
    out.parent.mkdir()
    dump_config(cfg, out)
    written = yaml.safe_load(out.read_text())
    assert "base" not in written
    assert written == cfg.to_dict()
    assert written["data"]["crop_size"] == [32, 32] and written["optim"]["lr"] == 0.01
    # The copy stands alone: moved away from its base, it loads to the same config.
    assert load_config(out) == cfg


# -- errors ---------------------------------------------------------------------------------------
def test_a_missing_base_names_where_it_was_looked_for_and_who_named_it(tmp_path: Path) -> None:
    leaf = _write(tmp_path / "sub" / "leaf.yaml", {"base": "../nope.yaml"})
    with pytest.raises(PixelwiseError) as error:
        load_config(leaf)
    message = str(error.value)
    assert str(leaf) in message and str(tmp_path / "nope.yaml") in message
    assert "'../nope.yaml'" in message and "relative to the folder" in message


def test_a_cycle_names_the_chain(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", {"base": "b.yaml"})
    _write(tmp_path / "b.yaml", {"base": "c.yaml"})
    _write(tmp_path / "c.yaml", {"base": "b.yaml"})
    with pytest.raises(PixelwiseError) as error:
        load_config(tmp_path / "a.yaml")
    chain = " -> ".join(str(tmp_path / f"{n}.yaml") for n in "abcb")
    assert f"({chain})" in str(error.value)
    assert "remove one of these base: keys" in str(error.value)


def test_a_file_that_is_its_own_base(tmp_path: Path) -> None:
    leaf = _write(tmp_path / "leaf.yaml", {"base": "./leaf.yaml"})
    with pytest.raises(PixelwiseError, match="already in its chain of bases"):
        load_config(leaf)


def test_the_same_base_twice_through_two_branches_is_no_cycle(tmp_path: Path) -> None:
    _write(tmp_path / "root.yaml", BASE)
    _write(tmp_path / "left.yaml", {"base": "root.yaml", "optim": {"lr": 0.2}})
    _write(tmp_path / "right.yaml", {"base": "root.yaml", "data": {"hflip": False}})
    leaf = _write(tmp_path / "leaf.yaml", {"base": ["left.yaml", "right.yaml"]})
    cfg = load_config(leaf)
    # right.yaml brings root.yaml's lr back over left.yaml's: each base is merged whole.
    assert cfg.optim.lr == 0.1 and cfg.data.hflip is False


def test_a_base_that_is_not_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("- 1\n- 2\n")
    leaf = _write(tmp_path / "leaf.yaml", {"base": "base.yaml"})
    with pytest.raises(PixelwiseError) as error:
        load_config(leaf)
    assert str(error.value) == (
        f"Config file {tmp_path / 'base.yaml'} (the base of {leaf}) must hold a mapping of "
        "sections, got [1, 2]."
    )


def test_a_base_that_is_not_yaml_is_named(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("optim: [1,\n")
    leaf = _write(tmp_path / "leaf.yaml", {"base": "base.yaml"})
    with pytest.raises(PixelwiseError) as error:
        load_config(leaf)
    assert str(error.value).startswith(
        f"Config file {tmp_path / 'base.yaml'} (the base of {leaf}) is not valid YAML at line 2"
    )


@pytest.mark.parametrize("value", [3, ["a.yaml", 2], [], "", {"file": "a.yaml"}, True])
def test_base_of_a_wrong_type(tmp_path: Path, value) -> None:
    leaf = _write(tmp_path / "leaf.yaml", {**BASE, "base": value})
    with pytest.raises(PixelwiseError) as error:
        load_config(leaf)
    message = str(error.value)
    assert message.startswith(f"Config file {leaf}: base is ")
    assert "write it like base: fcdensenet56_camvid.yaml." in message


def test_base_null_is_no_base(tmp_path: Path) -> None:
    leaf = _write(tmp_path / "leaf.yaml", {**BASE, "base": None})
    assert load_config(leaf) == config_from_dict(BASE)


def test_a_key_error_in_a_base_names_the_base(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", {**BASE, "optim": {"lrr": 0.1}})
    leaf = _write(tmp_path / "leaf.yaml", {"base": "base.yaml", "optim": {"lr": 0.1}})
    with pytest.raises(PixelwiseError) as error:
        load_config(leaf)
    assert str(error.value).startswith(f"{tmp_path / 'base.yaml'}: unknown key 'optim.lrr'")


def test_a_type_error_in_a_base_names_the_base(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", {**BASE, "data": {"crop_size": [24]}})
    leaf = _write(tmp_path / "leaf.yaml", {"base": "base.yaml"})
    with pytest.raises(PixelwiseError, match=f"^{tmp_path / 'base.yaml'}: data.crop_size is"):
        load_config(leaf)


def test_a_value_error_of_the_merged_config_names_the_file_and_its_bases(tmp_path: Path) -> None:
    _write(tmp_path / "base.yaml", {**BASE, "optim": {"name": "lion"}})
    leaf = _write(tmp_path / "leaf.yaml", {"base": "base.yaml"})
    with pytest.raises(PixelwiseError) as error:
        load_config(leaf)
    assert str(error.value).startswith(
        f"{leaf} (with its base {tmp_path / 'base.yaml'}): optim.name is 'lion'"
    )


def test_base_is_no_override_key(tmp_path: Path) -> None:
    leaf = _write(tmp_path / "leaf.yaml", BASE)
    with pytest.raises(PixelwiseError, match="unknown key 'base'"):
        load_config(leaf, ["base=other.yaml"])


# -- the recipes ----------------------------------------------------------------------------------
def test_every_shared_base_is_used_by_a_recipe() -> None:
    """configs/base/ holds only what recipes extend; a recipe is the file you run."""
    named = set()
    for recipe in RECIPES:
        bases = yaml.safe_load(recipe.read_text()).get("base") or []
        for base in [bases] if isinstance(bases, str) else bases:
            named.add((recipe.parent / base).resolve())
    assert {p.resolve() for p in SHARED_BASES} <= named


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_a_recipe_with_bases_loads_as_one_file(recipe: Path, tmp_path: Path) -> None:
    """Written out merged (as a run folder's config.yaml is), a recipe loads to the same Config."""
    cfg = load_config(recipe)
    copy = tmp_path / "config.yaml"
    dump_config(cfg, copy)
    assert load_config(copy) == cfg


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_the_merged_mapping_builds_the_recipes_config(recipe: Path) -> None:
    """``pixelwise compare`` builds a recipe from load_config_data; it must match load_config."""
    data = load_config_data(recipe)
    assert "base" not in data
    assert config_from_dict(data, str(recipe)) == load_config(recipe)
