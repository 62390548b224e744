"""DecoupledNet against the authors' released model: parts, counts, class-specific maps, inference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import vgg16

from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model, model_info
from pixelwise.models.backbones import VGG16_STAGES, load_backbone
from pixelwise.models.complexity import count_parameters
from pixelwise.models.decouplednet import UNDETECTED_LOGIT, ClassifierBackbone, DecoupledOutput
from tests.weights import random_torchvision_state

SMALL = {"width_divisor": 16, "fc_kernel": 2, "input_size": 96}


def small(num_classes: int = 6):
    torch.manual_seed(0)
    return build_model("decouplednet", num_classes, **SMALL)


def test_parts_match_the_released_model_on_voc():
    """REFERENCE.md part C: classifier 134,342,484; bridging 158,350,848; decoder 14,757,058."""
    with torch.device("meta"):
        model = build_model("decouplednet", 21)
    classifier = count_parameters(model.backbone) + count_parameters(model.cls_score)
    decoder = count_parameters(model.decoder) + count_parameters(model.seg_score)
    assert classifier == pytest.approx(134_342_484, rel=0.01)
    assert count_parameters(model.bridge) == pytest.approx(158_350_848, rel=0.01)
    assert decoder == pytest.approx(14_757_058, rel=0.01)
    assert model.cls_score.out_channels == 20  # the classifier has no background output
    # 13 3x3 deconvolutions (stride 1: written as convolutions), 5 unpoolings, a 2-way score.
    deconvs = [m for m in model.decoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.kernel_size for m in deconvs] == [(3, 3)] * 13 and len(model.decoder) == 5
    assert [m.out_channels for m in deconvs] == [
        512,
        512,
        512,
        512,
        512,
        256,
        256,
        256,
        128,
        128,
        64,
        64,
        64,
    ]
    assert model.seg_score.out_channels == 2
    info = model_info("decouplednet")
    assert info.task == "decoupled" and info.input_size == (320, 320)


def test_released_resolution_pool5_is_10_and_the_score_map_4():
    with torch.device("meta"):
        model = build_model("decouplednet", 21)
        feats = model.features(torch.zeros(1, 3, 320, 320))
        bp = model.class_specific_map(feats, torch.tensor([0]), torch.ones(1, 20))
    assert feats.pool5.shape == (1, 512, 10, 10) and feats.score_map.shape == (1, 20, 4, 4)
    assert bp.shape == (1, 512, 10, 10)  # pool5_bp: back at pool5, not past it


def test_class_specific_map_is_the_label_weighted_score_backpropagated_to_pool5():
    model = small().eval()
    x = torch.randn(2, 3, 96, 96)
    feats = model.features(x)
    weights = torch.tensor([[0.0, 0.7, 0.0, 0.2, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]])
    ours = model.class_specific_map(feats, torch.tensor([0, 1]), weights)
    # The same through autograd: d(sum_c w_c * max score_c)/d pool5, biases playing no part.
    pool5 = feats.pool5.detach().requires_grad_(True)
    score = model.cls_score(F.relu(model.backbone.fc7(F.relu(model.backbone.fc6(pool5)))))
    (weights * score.amax(dim=(2, 3))).sum().backward()
    torch.testing.assert_close(ours, pool5.grad, rtol=1e-4, atol=1e-6)
    assert not torch.equal(ours[0], torch.zeros_like(ours[0]))


def test_bridging_maps_have_one_channel_per_class():
    model = small(num_classes=6).eval()
    x = torch.randn(2, 3, 96, 96)
    maps = model.bridging_maps(x)
    assert maps.shape == (2, 5, 3, 3)  # K = 5 foreground classes at pool5's 3x3
    feats = model.features(x)
    third = model.class_specific_map(
        feats, torch.tensor([1]), F.one_hot(torch.tensor([2]), 5).float()
    )
    torch.testing.assert_close(maps[1, 2], third.abs().sum(dim=1)[0])
    assert not torch.allclose(maps[:, 0], maps[:, 1])  # each class its own map


def _detecting(model, classes: list[int]):
    """Make the classifier detect exactly ``classes`` (foreground indices) on any input."""
    with torch.no_grad():
        model.cls_score.weight.zero_()
        bias = torch.full((model.num_foreground,), -5.0)
        bias[classes] = 5.0
        model.cls_score.bias.copy_(bias)
    return model


@pytest.mark.parametrize("detected", [[0, 3], [], [4]])
def test_inference_segments_only_the_detected_classes(detected):
    model = _detecting(small(num_classes=6).eval(), detected)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 61, 45))
    assert logits.shape == (2, 6, 61, 45) and torch.isfinite(logits).all()
    allowed = {0} | {k + 1 for k in detected}
    assert set(logits.argmax(dim=1).unique().tolist()) <= allowed
    for c in range(6):
        undetected = bool((logits[:, c] == UNDETECTED_LOGIT).all())
        assert undetected == (c not in allowed)
    # The combined map is normalised: exp of the log-scores sums to 1 over the present classes.
    present = sorted(allowed)
    torch.testing.assert_close(logits[:, present].exp().sum(dim=1), torch.ones(2, 61, 45))


def test_a_detected_class_can_win_pixels():
    model = _detecting(small().eval(), [1])
    with torch.no_grad():
        model.seg_score.bias.copy_(torch.tensor([-3.0, 3.0]))  # figure everywhere
        labels = model(torch.randn(1, 3, 96, 96)).argmax(dim=1)
    assert bool((labels == 2).all())


def test_training_forward_gives_class_logits_and_per_pair_figure_ground():
    model = small().train()
    x = torch.randn(3, 3, 97, 131)
    pairs = torch.tensor([[0, 1], [2, 4], [2, 0]])
    out = model(x, pairs)
    assert isinstance(out, DecoupledOutput)
    assert out.class_logits.shape == (3, 5) and out.figure_ground.shape == (3, 2, 97, 131)
    # The figure-ground loss trains the bridge and decoder only (the classifier is frozen for it).
    F.cross_entropy(out.figure_ground, torch.zeros(3, 97, 131, dtype=torch.long)).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.cls_score.weight.grad is None
    assert (
        model.bridge.fc6_seg[0].weight.grad is not None and model.seg_score.weight.grad is not None
    )
    F.binary_cross_entropy_with_logits(out.class_logits, torch.ones(3, 5)).backward()
    assert model.backbone.vgg.features[0].weight.grad is not None


@pytest.mark.slow  # 138M random values for the state dict: ~15 s on a shared CPU
def test_imagenet_vgg16_loads_into_the_classifier():
    # The backbone alone, allocated without its random init (134M parameters): what the builder
    # hands to load_backbone.
    state = random_torchvision_state(vgg16)
    with torch.device("meta"):
        backbone = ClassifierBackbone(VGG16_STAGES, 4096, 7)
    backbone = backbone.to_empty(device="cpu")
    load_backbone(backbone, state)
    torch.testing.assert_close(
        backbone.fc6.weight, state["classifier.0.weight"].view(4096, 512, 7, 7)
    )
    torch.testing.assert_close(backbone.fc7.weight[:, :, 0, 0], state["classifier.3.weight"])
    torch.testing.assert_close(backbone.vgg.features[28].bias, state["features.28.bias"])


def test_checkpoints_that_name_the_backbone_trunk_still_load():
    # Written before the rename: the classifier's backbone under ``trunk.``.
    state = small().state_dict()
    old = {("trunk." + k.removeprefix("backbone.") if k.startswith("backbone.") else k): v
           for k, v in state.items()}  # fmt: skip
    assert "trunk.fc6.weight" in old and "backbone.fc6.weight" not in old
    model = build_model("decouplednet", 6, **SMALL)
    model.load_state_dict(old)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[key]), key


@pytest.mark.parametrize(
    ("options", "words"),
    [({"input_size": 100}, "multiple of 32"), ({"input_size": 224}, "fc_kernel (7)"),
     ({"width_divisor": 3}, "divisor of 64")],
)  # fmt: skip
def test_bad_options_are_one_sentence(options, words):
    with (
        torch.device("meta"),
        pytest.raises(PixelwiseError, match=words.replace("(", r"\(").replace(")", r"\)")),
    ):
        build_model("decouplednet", 21, **options)


# -- the task ------------------------------------------------------------------------------------
def test_pairs_come_from_labelled_images_and_their_foreground_classes():
    from pixelwise.tasks.decoupled import figure_ground_pairs, figure_ground_targets

    labels = torch.tensor([[1, 1, 0, 1], [1, 0, 1, 0], [1, 1, 1, 1.0]])
    pairs = figure_ground_pairs(labels, torch.tensor([True, False, True]))
    # Image 1 is unlabelled: its classes give no figure-ground pair, so its mask reaches no loss.
    assert pairs.tolist() == [[0, 0], [0, 2], [2, 0], [2, 1], [2, 2]]
    mask = torch.tensor([[[0, 1], [3, 255]], [[2, 2], [2, 2]], [[1, 2], [3, 0]]])
    targets = figure_ground_targets(mask, pairs[:2])
    assert targets.tolist() == [[[0, 1], [0, 255]], [[0, 0], [1, 255]]]


def test_a_batch_without_pairs_gives_a_zero_figure_ground_term_not_nan():
    from pixelwise.tasks.decoupled import decoupled_loss

    out = DecoupledOutput(
        torch.zeros(2, 3, requires_grad=True), torch.zeros(1, 2, 4, 4, requires_grad=True)
    )
    targets = {
        "image_labels": torch.tensor([[1, 0, 1, 0.0]] * 2),
        "mask": torch.zeros(2, 4, 4, dtype=torch.long),
    }
    terms = decoupled_loss(out, targets, torch.zeros(0, 2, dtype=torch.long))
    assert terms["figure_ground"].item() == 0.0 and terms["figure_ground"].requires_grad
    assert terms["classification"].item() == pytest.approx(0.6931, abs=1e-4)  # log 2 at logit 0


def _tiny_run(tmp_path, **train):
    from pixelwise.config import config_from_dict
    from tests.test_engine import tiny_config

    raw = tiny_config(tmp_path / "runs", **train)
    raw["model"] = {
        "name": "decouplednet",
        "options": {"width_divisor": 16, "fc_kernel": 1, "input_size": 64},
    }
    raw["data"].update(labeled_fraction=0.25, crop_size=None, scale_range=[1.0, 1.0])
    raw["data"]["val_options"] = {"num_samples": 2}
    return config_from_dict(raw)


def test_trains_through_the_engine_with_both_terms_logged_and_resumes(tmp_path, one_thread):
    import json

    from pixelwise.data.subset import SemiSupervised
    from pixelwise.engine.train import Trainer

    cfg = _tiny_run(tmp_path, iters=2, eval_every=2)
    trainer = Trainer.from_config(cfg, progress=False)
    source = trainer.train_set.source
    assert isinstance(source, SemiSupervised) and len(source) == 12
    assert len(source.labeled_indices) == 3  # 1/4 of 12 labelled, every image in the stream
    trainer.fit(max_steps=1)
    last = trainer.save("last.pt")
    resumed = Trainer.from_config(cfg, resume=last, progress=False)
    report = resumed.fit()
    assert resumed.step == 2 and report is not None and 0.0 <= report.score <= 1.0
    record = json.loads((last.parent / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"classification", "figure_ground"} <= set(record["train"])


def _changed(before: dict, after: dict, prefixes: tuple[str, ...]) -> set[str]:
    """Which of the state entries under ``prefixes`` differ between two state dicts."""
    return {k for k in before if k.startswith(prefixes) and not torch.equal(before[k], after[k])}


def _staged_run(tmp_path, iters: int = 4, classifier_iters: int = 2):
    cfg = _tiny_run(tmp_path, iters=iters, eval_every=iters)
    cfg.train.classifier_iters = classifier_iters
    cfg.data.labeled_fraction = 0.5  # 6 of the 12 images: a batch of 4 fits the labelled stream
    return cfg


def test_two_stages_train_the_classifier_then_the_segmentation_with_it_frozen(tmp_path, one_thread):
    from pixelwise.engine.train import Trainer

    trainer = Trainer.from_config(_staged_run(tmp_path), progress=False)
    classifier, segmentation = ("backbone.", "cls_score."), ("bridge.", "decoder.", "seg_score.")
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit(max_steps=2)
    stage1 = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit(max_steps=4)
    stage2 = trainer.model.state_dict()
    # stage 1 moved the classifier only (BN statistics of the stand-in pass aside)
    assert any(k.endswith(".weight") for k in _changed(start, stage1, classifier))
    assert not {
        k
        for k in _changed(start, stage1, segmentation)
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    }
    # stage 2 froze the classifier, its BatchNorm statistics included, and trained the rest
    assert not _changed(stage1, stage2, classifier)
    assert any(k.endswith(".weight") for k in _changed(stage1, stage2, segmentation))


def test_the_classifier_stage_draws_every_image_and_the_segmentation_stage_the_labelled_alone(
    tmp_path,
):
    from itertools import islice

    from pixelwise.engine.train import Trainer

    trainer = Trainer.from_config(
        _staged_run(tmp_path, iters=6, classifier_iters=3), progress=False
    )
    assert trainer.train_set.labeled_indices == sorted(trainer.train_set.labeled_indices)
    assert len(trainer.train_set) == 12  # no labelled repeats: each stage has its own stream
    # stage 1: 3 batches of 4 = one pass over all 12 images, the 6 unlabelled ones included
    stage1 = [batch[1] for batch in islice(trainer._train_loader(0), 3)]
    labelled = torch.cat([t["labeled"] for t in stage1])
    assert labelled.numel() == 12 and int(labelled.sum()) == 6
    # stage 2: every batch from the 6 labelled images (one batch of 4 an epoch), at every step
    for step in range(3, 6):
        batches = list(trainer._train_loader(step))
        assert len(batches) == 1 and bool(batches[0][1]["labeled"].all()), step


def test_a_staged_run_resumed_at_or_after_the_stage_change_ends_where_the_straight_run_does(
    tmp_path, one_thread
):
    from pixelwise.config import config_from_dict
    from pixelwise.engine.train import Trainer

    raw = _staged_run(tmp_path / "straight").to_dict()
    straight = Trainer.from_config(config_from_dict(raw), progress=False)
    straight.fit()  # must leave stage 1's loader at step 2, in the middle of its epoch
    for stop in (2, 3):  # resumed at the first step of stage 2, and inside it
        cfg = config_from_dict(
            {**raw, "train": {**raw["train"], "out_dir": str(tmp_path / f"r{stop}")}}
        )
        half = Trainer.from_config(cfg, progress=False)
        half.fit(max_steps=stop)
        resumed = Trainer.from_config(cfg, resume=half.save("last.pt"), progress=False)
        resumed.fit()
        for name, p in straight.model.state_dict().items():
            assert torch.equal(p, resumed.model.state_dict()[name]), (stop, name)


def test_a_batch_larger_than_the_labelled_stream_is_refused(tmp_path):
    from pixelwise.engine.train import Trainer

    cfg = _staged_run(tmp_path)
    cfg.data.labeled_fraction = 0.25  # 3 labelled images, batches of 4
    with pytest.raises(
        PixelwiseError,
        match="stage that starts at iteration 2 draws from 3 training samples.*batch_size 4",
    ):
        Trainer.from_config(cfg, progress=False)


def test_the_stages_are_refused_where_they_do_not_apply(tmp_path):
    from pixelwise.config import config_from_dict
    from pixelwise.engine.train import Trainer
    from tests.test_engine import tiny_config

    cfg = _tiny_run(tmp_path, iters=4)
    cfg.train.classifier_iters = 4
    with pytest.raises(PixelwiseError, match="classifier_iters is 4.*none for the segmentation"):
        Trainer.from_config(cfg, progress=False)
    unet = config_from_dict(tiny_config(tmp_path / "runs", iters=4))
    unet.train.classifier_iters = 2
    with pytest.raises(
        PixelwiseError,
        match="classifier_iters is 2.*trains in one stage.*networks trained in stages: decouplednet",
    ):
        Trainer.from_config(unet, progress=False)


# -- pinned function -----------------------------------------------------------------------------
PINNED = Path(__file__).parent / "data" / "logits" / "decouplednet.pt"


PAIRS = torch.tensor([[0, 0], [0, 2], [1, 1]])


def _pinned_inputs() -> torch.Tensor:
    """The pinned images: two seeded draws, one batch."""
    return torch.randn(2, 3, 37, 53, generator=torch.Generator().manual_seed(99))


def _pinned_forward() -> dict:
    """The variance-preserving fill of tests/test_stored_logits.py (calibrated on the pinned
    images and pairs), eval mode: the class logits and figure-ground logits, which no detection
    threshold touches."""
    from tests.test_stored_logits import fill_variance_preserving

    model = build_model("decouplednet", 4, **SMALL).eval()
    shapes, out = fill_variance_preserving(model, (_pinned_inputs(), PAIRS))
    return {
        "shapes": shapes,
        "class_logits": out.class_logits,
        "figure_ground": out.figure_ground[..., ::3, ::3],
    }


def test_outputs_are_the_stored_ones():
    stored = torch.load(PINNED, weights_only=True)
    got = _pinned_forward()
    assert got["shapes"] == [tuple(s) for s in stored["shapes"]], "parameter shapes/order changed"
    torch.testing.assert_close(got["class_logits"], stored["class_logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["figure_ground"], stored["figure_ground"], rtol=1e-4, atol=1e-4)


def test_pinned_outputs_see_the_input():
    """Both images of the pinned batch give clearly different outputs, so the pin would notice a
    layer that lost its input (a fill that let activations die would not)."""
    got = _pinned_forward()
    logits, ground = got["class_logits"], got["figure_ground"]
    assert (logits[0] - logits[1]).norm() > 0.3 * logits.norm() / 2**0.5
    # Pairs 0 and 1 both segment image 0; pair 2 segments image 1, for class 1 as pair 0 does
    # not, so compare pair 1 (image 0, class 2) with pair 2 (image 1, class 1).
    assert (ground[1] - ground[2]).abs().mean() > 0.1 * ground.abs().mean()


if __name__ == "__main__":  # python -m tests.test_decouplednet writes the pinned outputs
    PINNED.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_pinned_forward(), PINNED)
    print(f"wrote {PINNED}")
