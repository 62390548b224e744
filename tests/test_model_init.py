"""model.init: a run starts from another checkpoint's network weights (fine-tuning)."""

from __future__ import annotations

import pytest
import torch

from pixelwise.config import config_from_dict
from pixelwise.engine.checkpoint import load_checkpoint
from pixelwise.engine.run import build_run
from pixelwise.errors import PixelwiseError
from tests.test_engine import tiny_config


def _config(tmp_path, **model):
    data = tiny_config(tmp_path / "runs", iters=2)
    data["name"] = "finetune"
    data["model"].update(model)
    return config_from_dict(data, "test")


def test_run_starts_from_the_checkpoints_weights(checkpoint, tmp_path):
    saved = load_checkpoint(checkpoint)["model"]
    run = build_run(_config(tmp_path, init=str(checkpoint)))
    state = run.model.state_dict()
    assert set(state) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    # Fine-tuning restarts the run: step 0, a fresh optimizer.
    assert run.step == 0
    assert not run.optimizer.state


def test_without_init_the_weights_are_fresh(checkpoint, tmp_path):
    saved = load_checkpoint(checkpoint)["model"]
    run = build_run(_config(tmp_path))
    differs = [
        n
        for n, t in run.model.state_dict().items()
        if t.is_floating_point() and not torch.equal(t, saved[n])
    ]
    assert differs


def test_init_of_another_shape_names_the_weight_and_the_fix(checkpoint, tmp_path):
    options = {"padding": "same", "base_channels": 8, "batch_norm": True}
    with pytest.raises(PixelwiseError, match=r"has another shape for the weight .* config.yaml"):
        build_run(_config(tmp_path, init=str(checkpoint), options=options))


def test_init_of_another_network_is_refused(checkpoint, tmp_path):
    with pytest.raises(PixelwiseError, match=r"holds unet .* asks for enet"):
        build_run(_config(tmp_path, name="enet", options={}, init=str(checkpoint)))


def test_init_with_an_option_that_changes_the_function_but_not_the_weights_is_refused(
    checkpoint, tmp_path
):
    saved = load_checkpoint(checkpoint)["meta"]["model_options"]
    options = {**saved, "padding": "valid" if saved.get("padding") == "same" else "same"}
    with pytest.raises(PixelwiseError, match=r"option padding: .* config.yaml"):
        build_run(_config(tmp_path, init=str(checkpoint), options=options))
