"""GAN-SS: the K+1 discriminator, the generator, the per-pixel losses and the two-player training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pixelwise.config import config_from_dict
from pixelwise.engine.checkpoint import load_checkpoint
from pixelwise.engine.precision import float32
from pixelwise.engine.train import Trainer
from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model, model_info
from pixelwise.models.complexity import count_parameters
from pixelwise.tasks.base import Update
from pixelwise.tasks.gan_ss import fake_loss, generator_loss, real_loss, supervised_loss
from tests.test_engine import tiny_config
from tests.test_resume import assert_same_tensors

pytestmark = pytest.mark.usefixtures("one_thread")

# -- the network ---------------------------------------------------------------------------------


def test_discriminator_has_k_plus_1_outputs_and_the_model_k_in_train_and_eval():
    torch.manual_seed(0)
    model = build_model("gan_ss", 3)
    x = torch.randn(2, 3, 45, 61)
    assert model(x, with_fake=True).shape == (2, 4, 45, 61)
    assert model(x).shape == (2, 3, 45, 61)
    model.eval()
    with torch.no_grad():
        full = model(x, with_fake=True)
        # Eval drops the fake channel and nothing else: the K logits are D's first K.
        assert torch.equal(model(x), full[:, :3])


def test_generator_makes_images_of_any_size_in_minus_one_to_one():
    torch.manual_seed(0)
    generator = build_model("gan_ss", 3).generator
    noise = generator.sample_noise(2, (45, 61))
    assert noise.shape == (2, 100, 3, 4)  # 1/16 of the size, rounded up
    images = generator(noise, (45, 61))
    assert images.shape == (2, 3, 45, 61)
    assert images.abs().max() <= 1.0


def test_conditional_generator_uses_the_image_labels():
    torch.manual_seed(0)
    generator = build_model("gan_ss", 3, conditional=True).generator.eval()
    noise = generator.sample_noise(2, (32, 32))
    a = generator(noise, (32, 32), torch.tensor([[1.0, 0, 0], [1, 0, 0]]))
    b = generator(noise, (32, 32), torch.tensor([[0.0, 1, 1], [0, 1, 1]]))
    assert not torch.allclose(a, b)
    with pytest.raises(PixelwiseError, match="image-level labels of shape"):
        generator(noise, (32, 32))


def test_parameter_counts_of_the_two_players():
    info = model_info("gan_ss")
    assert info.task == "gan_ss"
    with torch.device("meta"):
        model = build_model("gan_ss", info.num_classes)
        enet = build_model("enet", info.num_classes + 1)
    parts = {k: count_parameters(v) for k, v in model.parts().items()}
    assert parts["discriminator"] == count_parameters(enet) == 363_856  # ENet, 12 outputs
    # 100*512*9 + 512*256*16 + 256*128*16 + 128*64*16 + 64*3*16 + 3, BN 2*(512+256+128+64)
    assert parts["generator"] == 3_218_307
    assert count_parameters(model) == sum(parts.values())


@pytest.mark.slow  # builds every registered network (on meta): seconds on a busy machine
def test_pixelwise_models_shows_each_players_parameters(capsys):
    from pixelwise.cli import main

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("gan_ss "))
    assert "3,582,163" in lines[row]
    assert lines[row + 1].split() == ["=", "discriminator", "363,856,", "generator", "3,218,307"]


def test_the_discriminator_is_any_catalogue_network():
    model = build_model(
        "gan_ss",
        3,
        discriminator="unet",
        discriminator_options={"padding": "same", "base_channels": 4},
    )
    assert model(torch.randn(1, 3, 33, 47), with_fake=True).shape == (1, 4, 33, 47)
    with pytest.raises(PixelwiseError, match="own discriminator"):
        build_model("gan_ss", 3, discriminator="gan_ss")


# -- the losses on hand-made logits ---------------------------------------------------------------


def pixel(*values: float) -> torch.Tensor:
    """One pixel's K+1 logits as a 1 x (K+1) x 1 x 1 tensor."""
    return torch.tensor(values, dtype=torch.float64).view(1, -1, 1, 1)


def test_losses_on_equal_logits():
    logits = pixel(0.0, 0.0, 0.0)  # K = 2: p = 1/3 each
    assert real_loss(logits).item() == pytest.approx(-math.log(2 / 3))
    assert fake_loss(logits).item() == pytest.approx(math.log(3))
    assert generator_loss(logits).item() == pytest.approx(-math.log(2 / 3))
    target = torch.tensor([[[0]]])
    assert supervised_loss(logits, target).item() == pytest.approx(math.log(2))


def test_losses_on_unequal_logits():
    logits = pixel(math.log(3), 0.0, math.log(2))  # exp: 3, 1, 2 of 6; p_fake = 1/3
    assert real_loss(logits).item() == pytest.approx(math.log(6 / 4))
    assert fake_loss(logits).item() == pytest.approx(math.log(6 / 2))
    # The supervised term ignores the fake logit: -log(1 / (3 + 1)).
    assert supervised_loss(logits, torch.tensor([[[1]]])).item() == pytest.approx(math.log(4))


def test_losses_stay_finite_for_huge_logits():
    logits = pixel(1000.0, 0.0, -1000.0)
    assert real_loss(logits).item() == pytest.approx(0.0, abs=1e-12)
    assert fake_loss(logits).item() == pytest.approx(2000.0)


def test_supervised_loss_averages_over_labelled_pixels_only_and_is_zero_without_any():
    logits = torch.cat([pixel(0.0, 0.0, 5.0), pixel(math.log(3), 0.0, 0.0)], dim=3)  # 1x3x1x2
    target = torch.tensor([[[255, 1]]])
    assert supervised_loss(logits, target).item() == pytest.approx(math.log(4))
    none = supervised_loss(logits.requires_grad_(), torch.full((1, 1, 2), 255))
    assert none.item() == 0.0
    none.backward()  # a graph, so a batch of unlabelled images trains the other terms only


# -- the two-player training through the engine ---------------------------------------------------


def gan_config(tmp_path, **train) -> dict:
    cfg = tiny_config(tmp_path, **train)
    cfg["name"] = "tiny_gan"
    cfg["model"] = {
        "name": "gan_ss",
        "options": {
            "discriminator": "unet",
            "discriminator_options": {"padding": "same", "base_channels": 4, "batch_norm": True},
            "noise_channels": 8,
            "generator_width": 4,
        },
    }
    cfg["data"]["crop_size"] = [32, 32]
    cfg["data"]["scale_range"] = [1.0, 1.0]
    cfg["optim"] = {"name": "adam", "lr": 2e-3, "betas": [0.5, 0.999]}
    return cfg


@pytest.mark.slow  # 16 two-player steps and 4 evaluations: ~8 s on a busy 2-core machine
def test_training_logs_both_players_and_lowers_ds_supervised_loss(tmp_path):
    cfg = gan_config(tmp_path, iters=16, eval_every=4, log_every=4)
    trainer = Trainer.from_config(config_from_dict(cfg), run_dir=tmp_path / "run", progress=False)
    assert trainer.task.name == "gan_ss"
    trainer.fit()
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    terms = [r["train"] for r in records]
    assert set(terms[0]) == {"loss", "d_supervised", "d_real", "d_fake", "g_adversarial"}
    assert terms[-1]["d_supervised"] < 0.9 * terms[0]["d_supervised"], terms
    # The generator's optimizer moved the generator; D's left it to G's.
    assert trainer.task.g_optimizer.state and all(
        id(p) not in {id(q) for q in trainer.model.generator.parameters()}
        for p in trainer.optimizer.state
    )


def test_weak_variant_trains_on_image_level_labels_of_a_labelled_subset(tmp_path):
    cfg = gan_config(tmp_path, iters=2, eval_every=2)
    cfg["model"]["options"]["conditional"] = True
    cfg["data"]["labeled_fraction"] = 0.5
    trainer = Trainer.from_config(config_from_dict(cfg), run_dir=tmp_path / "run", progress=False)
    image, target = trainer.train_set[0]
    assert set(target) == {"mask", "image_labels", "labeled"}
    assert len(trainer.train_set) == 12  # 6 labelled, 6 unlabelled: no repetition needed
    trainer.fit()
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert math.isfinite(record["train"]["g_adversarial"])


@pytest.mark.slow  # three short runs: ~6 s on a busy 2-core machine
def test_resume_continues_both_players_bit_identically(tmp_path):
    cfg = gan_config(tmp_path, iters=4, eval_every=4)
    straight = Trainer.from_config(config_from_dict(cfg), run_dir=tmp_path / "a", progress=False)
    straight.fit()
    half = Trainer.from_config(config_from_dict(cfg), run_dir=tmp_path / "b", progress=False)
    half.fit(max_steps=2)
    resumed = Trainer.from_config(
        config_from_dict(cfg), resume=tmp_path / "b" / "last.pt", progress=False
    )
    assert resumed.step == 2
    resumed.fit()
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert assert_same_tensors(a["model"], b["model"]) == len(a["model"])
    assert assert_same_tensors(a["optimizer"], b["optimizer"]) > 0
    assert assert_same_tensors(a["task"], b["task"]) == 3 * len(
        straight.task.g_optimizer.state
    )  # Adam: step, exp_avg, exp_avg_sq


class _Relabelled(torch.utils.data.Dataset):
    """A dataset whose masks are replaced by random labels for the ``indices`` given."""

    def __init__(self, base, indices, seed: int) -> None:
        self.base, self.indices, self.seed = base, set(indices), seed
        self.samples, self.classes, self.palette = base.samples, base.classes, base.palette
        self.num_classes, self.ignore_index = base.num_classes, base.ignore_index

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        image, mask = self.base[i]
        if i in self.indices:
            g = torch.Generator().manual_seed(self.seed + i)
            mask = torch.randint(0, self.num_classes, mask.shape, generator=g)
        return image, mask

    def load_mask(self, sample):
        return self[sample][1]


@pytest.mark.parametrize("conditional", [False, True])
def test_no_pixel_label_of_an_unlabelled_image_reaches_any_loss(tmp_path, conditional):
    from pixelwise.data import build_dataset
    from pixelwise.tasks import build_task as task_for

    cfg = gan_config(tmp_path)
    cfg["data"]["labeled_fraction"] = 0.25
    cfg["model"]["options"]["conditional"] = conditional
    config = config_from_dict(cfg)
    base = build_dataset("shapes", None, split="train", image_size=(32, 32), num_samples=12)
    task = task_for(config, base.num_classes, base.classes, base.palette)
    balanced = task.train_dataset(base)
    unlabelled = [i for i in range(12) if not balanced.is_labeled(i)]
    assert len(unlabelled) == 9
    # The 3 labelled images are repeated 3 times (9 / 3): half of the stream is labelled.
    assert len(balanced) == 18 and sum(map(balanced.is_labeled, range(18))) == 9

    def one_step(seed: int):
        torch.manual_seed(0)  # the same flips, weights and noise for both
        data = task.train_dataset(_Relabelled(base, unlabelled, seed))
        transform = task.train_transforms()
        batch = task.collate([transform(*data[i]) for i in range(8)])
        model = build_model("gan_ss", base.num_classes, **cfg["model"]["options"])
        task.setup(model, torch.device("cpu"), data, float32())
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        inputs, targets = task.to_device(batch, torch.device("cpu"))
        result = task.train_step(model, inputs, targets, Update(optimizer, scaler, float32()))
        return result.terms, model.state_dict()

    terms_a, state_a = one_step(1)
    terms_b, state_b = one_step(2)
    assert terms_a == terms_b and terms_a["d_supervised"] > 0
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_evaluation_picture_has_a_row_of_generated_images(tmp_path):
    cfg = gan_config(tmp_path, iters=1, eval_every=1)
    trainer = Trainer.from_config(config_from_dict(cfg), run_dir=tmp_path / "run", progress=False)
    semantic = super(type(trainer.task), trainer.task).picture(
        trainer.model.eval(), trainer.val_set, [0, 3], trainer.device
    )
    picture = trainer.prediction_picture()
    # The grid, a 4 px gap, a 16 px title and the row of 32x32 images enlarged 4x to 128.
    assert picture.shape[0] == semantic.shape[0] + 4 + 16 + 128
    assert np.array_equal(picture[: semantic.shape[0], : semantic.shape[1]], semantic)
    # The same fixed noise at every evaluation, whatever the global RNG did in between.
    torch.manual_seed(123)
    assert np.array_equal(trainer.prediction_picture(), picture)


def test_averaged_gradients_leave_unused_and_frozen_parameters_without_one(tmp_path):
    import torch.distributed as dist

    from pixelwise.tasks.gan_ss import average_gradients

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        used, unused, frozen = (torch.nn.Parameter(torch.ones(2)) for _ in range(3))
        frozen.requires_grad_(False)
        used.grad = torch.tensor([0.5, -2.0])
        mean = average_gradients([used, unused, frozen], torch.tensor(3.0))
        assert mean.item() == 3.0 and torch.equal(used.grad, torch.tensor([0.5, -2.0]))
        assert unused.grad is None and frozen.grad is None
    finally:
        dist.destroy_process_group()


def test_a_wrapped_step_updates_both_players_and_draws_noise_from_seed_step_and_rank(tmp_path):
    """Under DistributedDataParallel (a one-process group here; two processes: test_distributed)
    the step averages gradients itself and draws G's noise from (seed, step, rank)."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        config = config_from_dict(gan_config(tmp_path))
        from pixelwise.tasks import build_task as task_for

        task = task_for(config, 3, ["a", "b", "c"], [(0, 0, 0)] * 3)
        model = build_model("gan_ss", 3, **config.model.options)
        task.setup(model, torch.device("cpu"), None, float32())
        net = torch.nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.Adam(model.parameters())
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        noise = [task._noise(model, 2, (32, 32), torch.device("cpu"), True) for _ in range(2)]
        task.step = 1
        later = task._noise(model, 2, (32, 32), torch.device("cpu"), True)
        assert torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], later)
        before = {k: v.clone() for k, v in model.named_parameters()}
        images, masks = torch.randn(2, 3, 32, 32), torch.zeros(2, 32, 32).long()
        result = task.train_step(net, images, masks, Update(optimizer, scaler, float32()))
        assert result.stepped and all(math.isfinite(v) for v in result.terms.values())
        for player in ("discriminator.", "generator."):
            assert any(
                not torch.equal(before[k], v)
                for k, v in model.named_parameters()
                if k.startswith(player)
            ), player
    finally:
        dist.destroy_process_group()


def test_generated_batches_leave_the_discriminators_running_statistics_alone(tmp_path):
    import copy

    from pixelwise.tasks import build_task as task_for

    cfg = gan_config(tmp_path)
    cfg["model"]["options"]["discriminator_options"]["dropout"] = 0.0  # a deterministic forward
    config = config_from_dict(cfg)
    task = task_for(config, 3, ["a", "b", "c"], [(0, 0, 0)] * 3)
    torch.manual_seed(0)
    model = build_model("gan_ss", 3, **config.model.options)
    task.setup(model, torch.device("cpu"), None, float32())
    images, masks = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4, 32, 32))
    real_only = copy.deepcopy(model)
    real_only(images)  # what the real batch alone does to the statistics
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    task.train_step(model, images, masks, Update(optimizer, scaler, float32()))
    stats = [
        k for k in model.discriminator.state_dict() if k.endswith(("running_mean", "running_var"))
    ]
    assert stats
    for key in stats:
        assert torch.equal(
            model.discriminator.state_dict()[key], real_only.discriminator.state_dict()[key]
        ), key


@pytest.mark.slow
def test_a_gan_ss_checkpoint_exports_its_discriminators_class_logits(tmp_path, one_thread):
    """Its task is a semantic one: export traces the K-class discriminator, checked against torch."""
    import yaml

    from pixelwise.cli import main
    from pixelwise.export import read_metadata

    cfg = gan_config(tmp_path / "runs", iters=1, eval_every=1)
    config = tmp_path / "gan.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(config)]) == 0
    out = tmp_path / "gan.pt"
    checkpoint = tmp_path / "runs" / "tiny_gan" / "last.pt"
    argv = ["export", "--checkpoint", str(checkpoint), "--out", str(out), "--format", "torchscript"]
    assert main(argv) == 0
    meta = read_metadata(out)
    assert meta["model"] == "gan_ss" and meta["num_classes"] == len(meta["classes"])
    module = torch.jit.load(str(out))
    assert module(torch.randn(1, 3, 32, 32)).shape == (1, meta["num_classes"], 32, 32)
