"""`pixelwise convert` end to end, `pixelwise models --zoo`, and each bad input as one sentence.

SegNet-Basic CamVid is the release used here: its file in the release's layout is 5.6 MB, small
enough to write in every test. The converted checkpoint is then loaded by `pixelwise eval` and
`pixelwise predict` like a trained one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.cli import main
from pixelwise.convert import convert as convert_module
from pixelwise.convert.caffe import CaffeLayer, encode_net, layers_from_state
from pixelwise.convert.releases.segnet_basic_camvid import segnet_basic_table
from pixelwise.convert.zoo import get_release
from pixelwise.models import build_model
from tests.test_shapes_and_camvid import _write_camvid

NAME = "segnet-basic-camvid"


@pytest.fixture
def caffemodel(tmp_path: Path) -> Path:
    model = build_model("segnet_basic", 11)
    path = tmp_path / "segnet_basic_camvid.caffemodel"
    path.write_bytes(encode_net(layers_from_state(model.state_dict(), segnet_basic_table())))
    return path


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    return err


def test_convert_then_eval_and_predict(tmp_path, caffemodel, capsys):
    out = tmp_path / "segnet.pt"
    assert main(["convert", "--model", NAME, "--weights", str(caffemodel), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    payload = torch.load(out, weights_only=True)
    meta = payload["meta"]
    assert meta["release"]["name"] == NAME and len(meta["release"]["sha256"]) == 64
    assert meta["classes"][0] == "Sky" and len(meta["palette"]) == 11
    # BGR 0-255 without a mean: in RGB [0, 1] units, mean 0 and std 1/255.
    assert meta["mean"] == [0.0, 0.0, 0.0] and meta["std"] == pytest.approx([1 / 255] * 3)
    assert payload["config"]["data"]["mean"] == meta["mean"]

    root = tmp_path / "CamVid"
    _write_camvid(root, ["a.png", "b.png"])
    assert main(["eval", "--checkpoint", str(out), "--root", str(root), "--split", "train"]) == 0
    assert "mIoU" in capsys.readouterr().out
    image = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 255, (30, 26, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image)
    pred = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(out), str(image), "--out", str(pred)]) == 0
    assert Image.open(pred / "photo_label.png").size == (26, 30)


def test_models_zoo_lists_every_release(capsys):
    assert main(["models", "--zoo"]) == 0
    out = capsys.readouterr().out
    for name in ("pspnet50-ade20k", "fcn8s-voc", NAME):
        assert name in out
    assert "non-commercial" in out


def test_wrong_model_name_is_one_sentence(tmp_path, caffemodel, capsys):
    out = tmp_path / "m.pt"
    args = ["convert", "--model", "pspnet50-ade", "--weights", str(caffemodel), "--out", str(out)]
    assert main(args) == 2
    assert "did you mean 'pspnet50-ade20k'" in _error(capsys) and not out.exists()


def test_file_of_another_model_is_refused(tmp_path, caffemodel, capsys):
    out = tmp_path / "m.pt"
    args = ["convert", "--model", "fcn8s-voc", "--weights", str(caffemodel), "--out", str(out)]
    assert main(args) == 2
    err = _error(capsys)
    assert "does not hold the fcn8s-voc release" in err and "'conv1_1'" in err
    assert not out.exists()


def test_truncated_file_is_refused(tmp_path, caffemodel, capsys):
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(caffemodel.read_bytes()[:100_000])
    out = tmp_path / "m.pt"
    assert main(["convert", "--model", NAME, "--weights", str(cut), "--out", str(out)]) == 2
    assert "may be truncated" in _error(capsys) and not out.exists()


def test_layer_of_another_shape_is_refused(tmp_path, capsys):
    layers = layers_from_state(build_model("segnet_basic", 12).state_dict(), segnet_basic_table())
    path = tmp_path / "twelve.caffemodel"
    path.write_bytes(encode_net(layers))
    out = tmp_path / "m.pt"
    assert main(["convert", "--model", NAME, "--weights", str(path), "--out", str(out)]) == 2
    assert "classifier.weight: (12, 64, 1, 1) vs (11, 64, 1, 1)" in _error(capsys)
    assert not out.exists()


def test_existing_out_is_kept(tmp_path, caffemodel, capsys):
    out = tmp_path / "m.pt"
    out.write_bytes(b"mine")
    assert main(["convert", "--model", NAME, "--weights", str(caffemodel), "--out", str(out)]) == 2
    assert "already exists; pass --overwrite" in _error(capsys)
    assert out.read_bytes() == b"mine"
    args = ["convert", "--model", NAME, "--weights", str(caffemodel), "--out", str(out)]
    assert main([*args, "--overwrite"]) == 0 and out.stat().st_size > 1000


def test_missing_weights_file_says_where_it_is_published(tmp_path, capsys):
    out = tmp_path / "m.pt"
    args = ["convert", "--model", NAME, "--weights", str(tmp_path / "no.caffemodel")]
    assert main([*args, "--out", str(out)]) == 2
    assert "segnet_basic_camvid.caffemodel" in _error(capsys) and not out.exists()


def test_missing_prototxt_where_the_release_needs_one(tmp_path, caffemodel, capsys, monkeypatch):
    release = dataclasses.replace(get_release(NAME), needs_prototxt=True)
    monkeypatch.setattr(convert_module, "get_release", lambda name: release)
    out = tmp_path / "m.pt"
    assert main(["convert", "--model", NAME, "--weights", str(caffemodel), "--out", str(out)]) == 2
    assert "pass --prototxt" in _error(capsys) and not out.exists()
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text('name: "segnet" layer { name: "conv1" type: "Convolution" }\n')
    args = ["convert", "--model", NAME, "--weights", str(caffemodel), "--out", str(out)]
    assert main([*args, "--prototxt", str(deploy)]) == 0


def test_sha256_other_than_the_published_one_is_refused(tmp_path, caffemodel, capsys, monkeypatch):
    release = dataclasses.replace(get_release(NAME), sha256="0" * 64)
    monkeypatch.setattr(convert_module, "get_release", lambda name: release)
    out = tmp_path / "m.pt"
    assert main(["convert", "--model", NAME, "--weights", str(caffemodel), "--out", str(out)]) == 2
    assert f"not the {'0' * 64} published" in _error(capsys) and not out.exists()


def test_a_prototxt_given_as_weights_is_refused(tmp_path, capsys):
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text('name: "segnet"\ninput: "data"\n')
    out = tmp_path / "m.pt"
    assert main(["convert", "--model", NAME, "--weights", str(deploy), "--out", str(out)]) == 2
    err = _error(capsys)
    assert "deploy.prototxt" in err and not out.exists()


def test_empty_layer_list_refused_before_mapping(tmp_path, capsys):
    path = tmp_path / "empty.caffemodel"
    path.write_bytes(encode_net([CaffeLayer("relu", "ReLU", [])]))
    out = tmp_path / "m.pt"
    assert main(["convert", "--model", NAME, "--weights", str(path), "--out", str(out)]) == 2
    assert "hold no layer with weights" in _error(capsys)


def test_model_zoo_page_is_generated_from_the_releases():
    from pixelwise.convert.zoo import GENERATED, zoo_markdown

    page = (Path(__file__).resolve().parents[1] / "docs" / "model-zoo.md").read_text()
    assert GENERATED in page
    generated = page[page.index(GENERATED) :].rstrip("\n")
    assert generated == zoo_markdown().rstrip("\n"), (
        "docs/model-zoo.md is out of date: replace everything from its generated-comment on with "
        "the output of `python -m pixelwise.convert.zoo`"
    )


def test_converted_checkpoint_starts_a_fine_tuning_run(tmp_path, caffemodel, capsys):
    import yaml

    out = tmp_path / "segnet.pt"
    assert main(["convert", "--model", NAME, "--weights", str(caffemodel), "--out", str(out)]) == 0
    root = tmp_path / "CamVid"
    _write_camvid(root, ["a.png", "b.png"])
    config = {
        "name": "tune",
        "model": {"name": "segnet_basic", "init": str(out)},
        "data": {"dataset": "camvid", "root": str(root), "val_split": "train", "batch_size": 2,
                 "val_batch_size": 2, "num_workers": 0, "mean": [0.0] * 3, "std": [1 / 255] * 3},
        "train": {"iters": 1, "eval_every": 1, "device": "cpu", "out_dir": str(tmp_path / "runs"),
                  "vis_samples": 1},
    }  # fmt: skip
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path)]) == 0
    assert (tmp_path / "runs" / "tune" / "last.pt").is_file()
