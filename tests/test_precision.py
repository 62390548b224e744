"""One precision policy for every task, device and dtype (pixelwise.engine.precision).

The decision is a table (device × asked × native bf16); each task trains and validates in what
the table decides, with a GradScaler for every optimizer exactly where float16 needs one; and an
evaluation of a checkpoint decides as its run's validation did, so both score the same. The CPU's
bfloat16 is forced with PIXELWISE_CPU_BF16 (autocast runs bf16 on any x86 CPU, only slower), and
CUDA's float16 decision is run on the CPU (autocast has float16 CPU kernels) with its scaler.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pixelwise.config import config_from_dict
from pixelwise.engine import run as run_module
from pixelwise.engine.evaluate import evaluate_checkpoint
from pixelwise.engine.precision import CPU_BF16_VARIABLE, Precision, decide_precision
from pixelwise.engine.train import Trainer
from pixelwise.errors import PixelwiseError
from tests.test_engine import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("device", "asked", "native", "dtype", "scaled"),
    [
        ("cpu", False, "1", None, False),
        ("cpu", True, "1", torch.bfloat16, False),
        ("cpu", True, "0", None, False),
        ("cuda", False, "0", None, False),
        ("cuda", True, "0", torch.float16, True),
        ("cuda", True, "1", torch.float16, True),
    ],
)
def test_the_decision_table(monkeypatch, device, asked, native, dtype, scaled):
    monkeypatch.setenv(CPU_BF16_VARIABLE, native)
    precision = decide_precision(asked, device)
    assert (precision.device_type, precision.dtype, precision.scales_gradients) == (
        device,
        dtype,
        scaled,
    )
    # Asked for and left off is said once, in a sentence; otherwise nothing is said.
    assert (precision.note is not None) == (asked and dtype is None)
    assert precision.name == ("float32" if dtype is None else str(dtype).removeprefix("torch."))


def test_a_wrong_override_is_one_sentence(monkeypatch):
    monkeypatch.setenv(CPU_BF16_VARIABLE, "maybe")
    with pytest.raises(PixelwiseError, match="PIXELWISE_CPU_BF16='maybe' is not one of 1, 0"):
        decide_precision(True, "cpu")


def test_the_scaler_is_enabled_for_float16_only():
    assert not Precision("cpu").grad_scaler().is_enabled()
    assert not Precision("cpu", torch.bfloat16).grad_scaler().is_enabled()
    assert Precision("cpu", torch.float16).grad_scaler().is_enabled()


def _semantic(tmp_path) -> dict:
    return tiny_config(tmp_path / "runs", iters=1, eval_every=1)


def _decoupled(tmp_path) -> dict:
    cfg = tiny_config(tmp_path / "runs", iters=1, eval_every=1)
    cfg["model"] = {
        "name": "decouplednet",
        "options": {"width_divisor": 16, "fc_kernel": 1, "input_size": 64},
    }
    cfg["data"].update(labeled_fraction=0.25, crop_size=None, scale_range=[1.0, 1.0])
    cfg["data"]["val_options"] = {"num_samples": 2}
    return cfg


def _gan(tmp_path) -> dict:
    from tests.test_gan_ss import gan_config

    cfg = gan_config(tmp_path / "runs", iters=1, eval_every=1)
    cfg["data"]["val_options"] = {"num_samples": 2}
    return cfg


def _instance(tmp_path) -> dict:
    from tests.test_instance_engine import instance_config, write_tiny_coco

    cfg = instance_config(tmp_path, write_tiny_coco(tmp_path / "coco"), iters=1, eval_every=1)
    cfg["data"]["batch_size"] = 1
    return cfg


TASK_CONFIGS = {
    "semantic": _semantic,
    "decoupled": _decoupled,
    "gan_ss": _gan,
    "instance": _instance,
}
# (what the run asks, what the machine offers) -> the autocast dtype its forwards must run in.
PRECISIONS = {
    "float32": (False, None),
    "bfloat16 (cpu, native)": (True, torch.bfloat16),
    "float16 (cuda's decision)": (True, torch.float16),
}


@pytest.mark.slow
@pytest.mark.parametrize("precision_name", list(PRECISIONS))
@pytest.mark.parametrize("task_name", list(TASK_CONFIGS))
def test_every_task_trains_and_validates_in_the_decided_precision(
    tmp_path, monkeypatch, task_name, precision_name
):
    asked, dtype = PRECISIONS[precision_name]
    if task_name == "instance" and dtype is torch.float16:
        pytest.skip("torchvision's detection ops have no float16 CPU kernels; CUDA only")
    monkeypatch.setenv(CPU_BF16_VARIABLE, "1")
    if dtype is torch.float16:  # CUDA's decision, on the CPU
        monkeypatch.setattr(
            run_module, "decide_precision",
            lambda asked, device: Precision("cpu", torch.float16, asked=True),
        )  # fmt: skip
    cfg = TASK_CONFIGS[task_name](tmp_path)
    cfg["train"]["amp"] = asked
    trainer = Trainer.from_config(config_from_dict(cfg), progress=False)
    assert trainer.task.name == task_name and trainer.precision.dtype is dtype
    seen: dict[bool, set[torch.dtype]] = {True: set(), False: set()}

    def record(module: nn.Module, inputs, output) -> None:
        seen[module.training].add(output.dtype)

    conv = next(m for m in trainer.model.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(record)
    trainer.fit()
    expected = {dtype or torch.float32}
    assert seen[True] == expected and seen[False] == expected, seen  # training, validation
    # Every optimizer's scaler is enabled exactly where float16 is (GAN-SS: both players').
    scalers = [trainer.scaler] + [getattr(trainer.task, "g_scaler", trainer.scaler)]
    assert {s.is_enabled() for s in scalers} == {dtype is torch.float16}
    record_ = json.loads((trainer.run_dir / "run.json").read_text())["run"]
    assert record_["precision"] == trainer.precision.name and record_["amp"] is (dtype is not None)


@pytest.mark.slow
def test_eval_of_a_bf16_run_scores_what_its_validation_reported(tmp_path, monkeypatch):
    """The bug this policy ended: validation in bf16, `pixelwise eval` of the same weights in
    float32, two mIoUs for one checkpoint (compare's table against eval of its run folders)."""
    monkeypatch.setenv(CPU_BF16_VARIABLE, "1")
    # channels_last too: under bf16 the memory layout picks other kernels, whose rounding moves
    # pixels (the demo's 85.28 scored 0.8527966 in training and 0.8527698 in a contiguous eval).
    cfg = tiny_config(tmp_path / "runs", iters=2, eval_every=2, amp=True, channels_last=True)
    trainer = Trainer.from_config(config_from_dict(cfg), progress=False)
    reported = trainer.fit()
    result = evaluate_checkpoint(trainer.run_dir / "last.pt", device="cpu")
    assert result.report.mean_iou == reported.mean_iou
    assert torch.equal(result.metric.matrix, trainer.evaluator().run(
        trainer.model, trainer.device, precision=trainer.precision, channels_last=True
    ).metric.matrix)  # fmt: skip
    # In float32 the same weights may score otherwise: the precision is part of the score.
    monkeypatch.setenv(CPU_BF16_VARIABLE, "0")
    fp32 = evaluate_checkpoint(trainer.run_dir / "last.pt", device="cpu")
    assert fp32.metric.matrix.sum() == result.metric.matrix.sum()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("task_name", list(TASK_CONFIGS))
def test_on_cuda_every_task_trains_in_float16_with_every_player_scaled(tmp_path, task_name):
    """The real CUDA path: float16 autocast, a GradScaler per optimizer (GAN-SS's generator too,
    which once trained unscaled), and `eval` of the checkpoint scoring what validation reported."""
    cfg = TASK_CONFIGS[task_name](tmp_path)
    cfg["train"].update(amp=True, device="cuda", iters=2, eval_every=2)
    trainer = Trainer.from_config(config_from_dict(cfg), progress=False)
    assert trainer.precision.dtype is torch.float16
    scalers = [trainer.scaler] + [getattr(trainer.task, "g_scaler", trainer.scaler)]
    assert all(s.is_enabled() for s in scalers)
    reported = trainer.fit()
    result = evaluate_checkpoint(trainer.run_dir / "last.pt", device="cuda")
    assert result.report.score == pytest.approx(reported.score, abs=1e-12)
