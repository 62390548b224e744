"""Checkpoints are data: nothing in a file runs code, old files still load, writes are durable."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pixelwise.cli import main
from pixelwise.config import config_from_dict
from pixelwise.engine import checkpoint as ckpt
from pixelwise.engine.train import Trainer
from pixelwise.errors import PixelwiseError
from tests.test_engine import tiny_config

META = {"model": "unet", "num_classes": 2}


class _Evil:
    """Unpickling this touches a marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


class _EvilSystem:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    trainer = Trainer.from_config(
        config_from_dict(tiny_config(root, iters=1, eval_every=1)), progress=False
    )
    trainer.fit()
    return trainer.run_dir


@pytest.mark.parametrize("evil", [_Evil, _EvilSystem])
def test_a_malicious_checkpoint_runs_nothing_in_eval_predict_or_resume(
    tmp_path, capsys, trained_run, evil
):
    marker = tmp_path / "marker"
    good = torch.load(trained_run / "last.pt", weights_only=True)
    path = tmp_path / "evil.pt"
    torch.save({**good, "meta": {**good["meta"], "x": evil(marker)}}, path)
    image = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(image)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(good["config"]))
    for argv in (
        ["eval", "--checkpoint", str(path)],
        ["predict", "--checkpoint", str(path), str(image), "--out", str(tmp_path / "out")],
        ["train", str(config), "--resume", str(path)],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert not marker.exists(), argv
        assert err.count("\n") == 1 and "Traceback" not in err
        assert "never runs code from a checkpoint" in err and str(path) in err


def test_checkpoints_load_with_weights_only(trained_run):
    payload = torch.load(trained_run / "last.pt", weights_only=True)  # no allow-list at all
    assert payload["version"] == ckpt.CHECKPOINT_VERSION == 2
    assert isinstance(payload["rng"]["numpy"]["keys"], torch.Tensor)


def test_rng_round_trips_through_a_file(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint(path, {"model": {}, "meta": META, "rng": ckpt.capture_rng()})
    expected = (random.random(), np.random.standard_normal(), torch.rand(2))
    ckpt.restore_rng(ckpt.load_checkpoint(path)["rng"])
    again = (random.random(), np.random.standard_normal(), torch.rand(2))
    assert expected[:2] == again[:2] and torch.equal(expected[2], again[2])


def test_a_version_1_checkpoint_still_resumes(tmp_path):
    """Version 1 stored the RNG states as random/numpy returned them (a numpy array inside)."""
    np.random.seed(7)
    path = tmp_path / "v1.pt"
    rng = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    torch.save({"version": 1, "model": {}, "meta": META, "rng": rng}, path)
    expected = np.random.rand(3)
    payload = ckpt.load_checkpoint(path)
    ckpt.restore_rng(payload["rng"])
    assert np.array_equal(np.random.rand(3), expected)


def test_save_is_fsynced_and_renamed(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    path = tmp_path / "last.pt"
    path.write_bytes(b"old")
    ckpt.save_checkpoint(path, {"model": {"w": torch.ones(2)}, "meta": META})
    assert len(synced) >= 1  # the file (and the folder where the platform allows)
    assert not path.with_name("last.pt.tmp").exists()
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.ones(2))


def test_a_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"model": {"w": torch.ones(2)}, "meta": META})

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "meta": META})
    monkeypatch.undo()
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.ones(2))


def test_a_truncated_checkpoint_is_one_sentence(tmp_path, trained_run):
    path = tmp_path / "cut.pt"
    path.write_bytes((trained_run / "last.pt").read_bytes()[:500])
    with pytest.raises(PixelwiseError, match="could not be read") as info:
        ckpt.load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_a_checkpoint_with_nonfinite_weights_is_refused(tmp_path, capsys, trained_run):
    """pixelwise before version 2 saved last.pt after the loss went NaN; such a file is named."""
    good = load_checkpoint_unchecked(trained_run / "last.pt")
    name = next(k for k, v in good["model"].items() if v.is_floating_point())
    good["model"][name] = torch.full_like(good["model"][name], float("nan"))
    path = tmp_path / "nan.pt"
    torch.save(good, path)
    assert main(["eval", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"non-finite weights ({name})" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "payload",
    [[1, 2], {"model": {"w": 1}, "meta": META}, {"model": {}, "meta": {"model": "unet"}}],
)
def test_a_file_that_is_not_a_checkpoint_is_one_sentence(tmp_path, payload):
    path = tmp_path / "x.pt"
    torch.save(payload, path)
    with pytest.raises(PixelwiseError, match="is not a pixelwise checkpoint"):
        ckpt.load_checkpoint(path)


def test_weights_that_do_not_fit_the_named_model_are_one_sentence(tmp_path, capsys, trained_run):
    payload = load_checkpoint_unchecked(trained_run / "last.pt")
    payload["model"].pop(next(iter(payload["model"])))
    path = tmp_path / "cut.pt"
    torch.save(payload, path)
    assert main(["eval", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert "weights do not fit the unet" in err and err.count("\n") == 1


def load_checkpoint_unchecked(path: Path) -> dict:
    return torch.load(path, weights_only=True)
