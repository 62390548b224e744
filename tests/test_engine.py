"""Trainer, schedules, resume, checkpoints: on a tiny U-Net over tiny synthetic shapes."""

from __future__ import annotations

import json

import pytest
import torch

from pixelwise.config import ScheduleConfig, config_from_dict
from pixelwise.engine.checkpoint import load_checkpoint
from pixelwise.engine.loader import EpochBatchSampler
from pixelwise.engine.schedule import build_optimizer, build_scheduler
from pixelwise.engine.train import Trainer
from pixelwise.errors import PixelwiseError


def tiny_config(tmp_path, **train) -> dict:
    return {
        "name": "tiny",
        "model": {"name": "unet", "options": {"padding": "same", "base_channels": 4, "batch_norm": True}},
        "data": {
            "dataset": "shapes",
            "options": {"image_size": [32, 32], "num_samples": 12},
            "val_options": {"num_samples": 4},
            "crop_size": [24, 24],
            "scale_range": [0.75, 1.25],
            "batch_size": 4,
            "val_batch_size": 4,
            "num_workers": 0,
        },
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "schedule": {"name": "poly"},
        "train": {"iters": 6, "eval_every": 3, "device": "cpu", "out_dir": str(tmp_path), "vis_samples": 2,
                  **train},
    }  # fmt: skip


@pytest.mark.parametrize("k", [0, 1, 7, 50, 99])
def test_poly_lr_after_k_steps(k):
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model.parameters(), config_from_dict({"train": {"iters": 1}}).optim)
    sched = build_scheduler(
        opt, ScheduleConfig(name="poly", power=0.9), total_iters=100, iters_per_epoch=10
    )
    for _ in range(k):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - k / 100) ** 0.9)


def test_step_schedule_in_epochs_and_warmup():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    cfg = ScheduleConfig(
        name="step", step_size=2, gamma=0.1, unit="epoch", warmup_iters=4, warmup_factor=0.0
    )
    sched = build_scheduler(opt, cfg, total_iters=100, iters_per_epoch=5)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert lrs[4:10] == pytest.approx([1.0] * 6) and lrs[10:] == pytest.approx([0.1, 0.1])


def test_a_staged_schedule_starts_again_with_its_warmup_at_each_stage():
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    cfg = ScheduleConfig(name="poly", power=1.0, warmup_iters=2, warmup_factor=0.0)
    sched = build_scheduler(opt, cfg, total_iters=10, iters_per_epoch=5, stage_starts=[0, 6])
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # stage 1: 6 iterations (warm-up 0, 1/2, then poly 1 - k/6); stage 2: 4 iterations, the same
    assert lrs == pytest.approx(
        [0.0, 0.5 * 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0, 0.5 * 3 / 4, 2 / 4, 1 / 4]
    )


def test_sampler_is_reproducible_and_shards_disjointly():
    a = list(EpochBatchSampler(10, 3, seed=1, epoch=2))
    assert a == list(EpochBatchSampler(10, 3, seed=1, epoch=2))
    assert list(EpochBatchSampler(10, 3, seed=1, epoch=2, start=1)) == a[1:]
    assert a != list(EpochBatchSampler(10, 3, seed=1, epoch=3))
    r0 = [i for b in EpochBatchSampler(8, 2, rank=0, world_size=2) for i, _ in b]
    r1 = [i for b in EpochBatchSampler(8, 2, rank=1, world_size=2) for i, _ in b]
    assert sorted(r0 + r1) == list(range(8))


def test_training_writes_the_run_folder(tmp_path):
    trainer = Trainer.from_config(config_from_dict(tiny_config(tmp_path)), progress=False)
    scores = trainer.fit()
    run = trainer.run_dir
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "predictions.png"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6]
    assert 0 <= scores.mean_iou <= 1
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["step"] == 6 and ckpt["meta"]["num_classes"] == 6
    # A second run of the same name never overwrites the first.
    assert (
        Trainer.from_config(config_from_dict(tiny_config(tmp_path)), progress=False).run_dir != run
    )


def test_vis_samples_0_trains_and_draws_no_picture(tmp_path):
    config = config_from_dict(tiny_config(tmp_path, iters=3, vis_samples=0))
    trainer = Trainer.from_config(config, progress=False)
    trainer.fit()
    assert (trainer.run_dir / "last.pt").is_file()
    assert not (trainer.run_dir / "predictions.png").exists()


def test_resume_gives_identical_parameters(tmp_path):
    straight = Trainer.from_config(config_from_dict(tiny_config(tmp_path / "a")), progress=False)
    straight.fit()
    half = Trainer.from_config(config_from_dict(tiny_config(tmp_path / "b")), progress=False)
    half.fit(max_steps=3)  # as if interrupted after step 3
    resumed = Trainer.from_config(
        config_from_dict(tiny_config(tmp_path / "b")),
        resume=half.run_dir / "last.pt",
        progress=False,
    )
    assert resumed.step == 3
    resumed.fit()
    for (name, p), q in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(p, q), name


def test_loss_falls_on_shapes(tmp_path):
    cfg = tiny_config(tmp_path, iters=30, eval_every=30)
    cfg["optim"] = {"name": "adam", "lr": 0.01}
    trainer = Trainer.from_config(config_from_dict(cfg), progress=False)
    images, targets = next(iter(trainer._train_loader(0)))
    before = trainer.criterion(trainer.model(images), targets).item()
    trainer.fit()
    trainer.model.train()
    after = trainer.criterion(trainer.model(images), targets).item()
    assert after < 0.8 * before


def test_checkpoint_for_another_model_is_refused(tmp_path):
    trainer = Trainer.from_config(config_from_dict(tiny_config(tmp_path, iters=1)), progress=False)
    trainer.fit()
    cfg = tiny_config(tmp_path, iters=1)
    cfg["model"] = {"name": "enet"}
    with pytest.raises(PixelwiseError, match="model.name 'unet' -> 'enet'"):
        Trainer.from_config(
            config_from_dict(cfg), resume=trainer.run_dir / "last.pt", progress=False
        )


def test_valid_unet_trains_with_cropped_targets(tmp_path):
    cfg = tiny_config(tmp_path, iters=1, eval_every=1)
    cfg["model"] = {"name": "unet", "options": {"padding": "valid", "base_channels": 2}}
    cfg["data"]["options"] = {"image_size": [188, 188], "num_samples": 4}
    cfg["data"]["val_options"] = {"num_samples": 1}
    cfg["data"]["crop_size"] = None
    cfg["data"]["scale_range"] = [1.0, 1.0]
    scores = Trainer.from_config(config_from_dict(cfg), progress=False).fit()
    assert scores is not None


class _SignalOnFirstCall(torch.nn.Module):
    """A loss wrapper that sends SIGTERM to this process during the first step, like a scheduler's kill."""

    def __init__(self, criterion: torch.nn.Module) -> None:
        super().__init__()
        self.criterion = criterion
        self.sent = False

    def forward(self, output, target):
        import os
        import signal

        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return self.criterion(output, target)


def test_sigterm_saves_a_resumable_checkpoint(tmp_path):
    import signal

    before = signal.getsignal(signal.SIGTERM)
    trainer = Trainer.from_config(
        config_from_dict(tiny_config(tmp_path, iters=50, eval_every=50)), progress=False
    )
    trainer.criterion = _SignalOnFirstCall(trainer.criterion)
    trainer.fit()
    assert trainer.interrupted
    assert load_checkpoint(trainer.run_dir / "last.pt")["step"] == 1  # the running step finished
    assert signal.getsignal(signal.SIGTERM) == before  # the handler was put back


def test_mixed_sizes_in_a_batch_name_the_fix():
    from pixelwise.engine.loader import collate

    batch = [(torch.zeros(3, 4, 5), torch.zeros(4, 5)), (torch.zeros(3, 6, 5), torch.zeros(6, 5))]
    with pytest.raises(PixelwiseError, match="val_batch_size=1"):
        collate(batch)
    images, masks = collate(batch[:1] * 2)
    assert images.shape == (2, 3, 4, 5) and masks.shape == (2, 4, 5)


@pytest.mark.parametrize("fast_bf16", [False, True])
def test_amp_on_a_cpu_runs_only_where_bf16_is_fast_and_run_json_says_which(
    tmp_path, monkeypatch, capsys, fast_bf16
):
    # On an AVX2-only CPU bf16 autocast is ~10x slower than fp32: asked for, it is left off, said
    # once, and recorded; where bf16 is native it runs as asked.
    import json

    from pixelwise.engine.train import Trainer

    monkeypatch.setenv("PIXELWISE_CPU_BF16", "1" if fast_bf16 else "0")
    trainer = Trainer.from_config(
        config_from_dict(tiny_config(tmp_path, amp=True, iters=1)), progress=False
    )
    assert trainer.precision.enabled is fast_bf16
    assert ("no fast bfloat16" in capsys.readouterr().out) is not fast_bf16
    trainer.fit()
    assert json.loads((trainer.run_dir / "run.json").read_text())["run"]["amp"] is fast_bf16


@pytest.mark.slow
def test_the_training_loader_keeps_its_workers_from_epoch_to_epoch(tmp_path, monkeypatch):
    """One DataLoader per stage, its workers alive across epochs (they used to restart every
    epoch), and stopped when fit returns."""
    from pixelwise.engine.train import Trainer

    cfg = tiny_config(tmp_path, iters=9, eval_every=9)  # 12 samples, batch 4: 3 epochs
    cfg["data"]["num_workers"] = 2
    trainer = Trainer.from_config(config_from_dict(cfg), progress=False)
    passes: list[tuple[int, list[int]]] = []
    original = Trainer._train_loader

    def recording(self, step):
        loader = original(self, step)
        iterator = loader._iterator  # the persistent iterator of the previous pass, if any
        passes.append((id(loader), [w.pid for w in iterator._workers] if iterator else []))
        return loader

    monkeypatch.setattr(Trainer, "_train_loader", recording)
    trainer.fit()
    assert trainer.step == 9 and len(passes) == 3
    assert len({loader for loader, _ in passes}) == 1  # built once
    assert passes[0][1] == [] and passes[1][1] == passes[2][1] and len(passes[1][1]) == 2
    assert trainer._loaders == {}  # closed at the end of fit
