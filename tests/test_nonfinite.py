"""Non-finite values: the run stops naming the step and keeps the last good checkpoint, or with
``train.skip_nonfinite`` skips the batch."""

from __future__ import annotations

import pytest
import torch

from pixelwise.config import config_from_dict
from pixelwise.engine.checkpoint import all_finite, first_nonfinite, load_checkpoint
from pixelwise.engine.train import Trainer
from pixelwise.errors import PixelwiseError
from tests.test_engine import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


class _NanLoss(torch.nn.Module):
    """Wraps the loss; call ``at`` (1-based) returns NaN."""

    def __init__(self, criterion: torch.nn.Module, at: int) -> None:
        super().__init__()
        self.criterion, self.at, self.calls = criterion, at, 0

    def forward(self, output, target):
        self.calls += 1
        loss = self.criterion(output, target)
        return loss * float("nan") if self.calls == self.at else loss


def _trainer(tmp_path, what: str, at: int, **train) -> Trainer:
    cfg = tiny_config(tmp_path, iters=6, eval_every=3, log_every=100, **train)
    trainer = Trainer.from_config(config_from_dict(cfg), progress=False)
    if what == "loss":
        trainer.criterion = _NanLoss(trainer.criterion, at)
    else:  # BatchNorm statistics gone to inf: the training loss (batch statistics) stays finite
        bn = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        steps = []

        def poison(optimizer, args, kwargs) -> None:
            steps.append(1)
            if len(steps) == at:
                bn.running_var.fill_(float("inf"))

        trainer.optimizer.register_step_post_hook(poison)
    return trainer


@pytest.mark.parametrize("what", ["loss", "buffer"])
def test_a_nonfinite_value_stops_and_keeps_the_last_good_checkpoint(tmp_path, what):
    trainer = _trainer(tmp_path, what, at=4)
    with pytest.raises(PixelwiseError) as info:
        trainer.fit()
    message = str(info.value)
    assert "\n" not in message
    # The loss is caught at its own step; a buffer at the next check (a log step or a save: here
    # the evaluation at step 6 that would have saved best.pt and last.pt).
    assert f"step {4 if what == 'loss' else 6}" in message
    assert "last.pt keeps step 3" in message
    if what == "buffer":
        assert "running_var" in message
    for name in ("last.pt", "best.pt"):
        payload = load_checkpoint(trainer.run_dir / name)
        assert payload["step"] == 3, name
        assert all_finite(list(payload["model"].values())), name


def test_skip_nonfinite_skips_the_batch(tmp_path, capsys):
    trainer = _trainer(tmp_path, "loss", at=2, skip_nonfinite=True)
    trainer.fit(max_steps=1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items() if v.is_floating_point()}
    momentum = [s["momentum_buffer"].clone() for s in trainer.optimizer.state.values()]
    trainer.fit(max_steps=2)  # the poisoned step: no update
    assert trainer.step == 2 and trainer.skipped == 1
    params = dict(trainer.model.named_parameters())
    for name, value in before.items():
        if name in params:
            assert torch.equal(params[name], value), name
    for old, state in zip(momentum, trainer.optimizer.state.values(), strict=True):
        assert torch.equal(old, state["momentum_buffer"])
    trainer.fit()
    assert trainer.step == 6
    assert first_nonfinite(load_checkpoint(trainer.run_dir / "last.pt")["model"]) is None
    # A warning: shown under any progress mode, on stderr when the run is quiet (as here).
    assert "batch skipped" in capsys.readouterr().err


def test_first_nonfinite_names_the_tensor():
    state = {"a": torch.ones(3), "n": torch.tensor(3), "b": torch.tensor([1.0, float("-inf")])}
    assert first_nonfinite(state) == "b"
    assert first_nonfinite({"a": torch.full((2,), 3e38)}) is None  # large but finite
