"""Mask R-CNN as pixelwise builds it on torchvision: counts, predictors, weights, normalisation, I/O."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.ops.misc import FrozenBatchNorm2d

from pixelwise.cli import main
from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model, model_info
from pixelwise.models.complexity import count_parameters
from tests.weights import random_torchvision_state

LOSSES = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


def meta_model(name: str = "maskrcnn_resnet50_fpn", num_classes: int = 91, **options) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, num_classes, **options)


# The heads run on every proposal and detection (1000 x the box head and 100 x the 4-conv mask
# head in eval: ~10 s on a CPU); a few of each keep a CPU test to about a second.
TINY = {
    "min_size": 64,
    "max_size": 96,
    "rpn_post_nms_top_n_train": 100,
    "rpn_post_nms_top_n_test": 50,
    "box_batch_size_per_image": 32,
    "box_detections_per_img": 5,
}


def tiny_model(**options) -> nn.Module:
    torch.manual_seed(0)
    return build_model("maskrcnn_resnet50_fpn", 3, **{**TINY, **options})


def test_registered_as_instance_models():
    assert model_info("maskrcnn_resnet50_fpn").task == "instance"
    assert model_info("maskrcnn_resnet50_fpn_v2").task == "instance"


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("maskrcnn_resnet50_fpn", {}, 44_401_393),  # frozen BN: torchvision's COCO_V1 layout
        ("maskrcnn_resnet50_fpn", {"frozen_bn": False}, 44_454_513),
        ("maskrcnn_resnet50_fpn_v2", {}, 46_359_409),
    ],
)
def test_parameter_counts_are_torchvisions(name, options, expected):
    assert count_parameters(meta_model(name, **options)) == expected


def test_frozen_bn_is_the_default_and_lives_in_the_resnet_only():
    body = meta_model().backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in body.modules()) == 53
    v2 = meta_model("maskrcnn_resnet50_fpn_v2", frozen_bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in v2.backbone.body.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in v2.roi_heads.mask_head.modules())


@pytest.mark.parametrize("name", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def test_num_classes_sizes_the_box_and_mask_predictors(name):
    heads = meta_model(name, num_classes=7).roi_heads
    assert heads.box_predictor.cls_score.out_features == 7
    assert heads.box_predictor.bbox_pred.out_features == 28
    assert heads.mask_predictor.mask_fcn_logits.out_channels == 7


def test_the_model_does_not_normalise_again():
    model = meta_model(min_size=320, max_size=480)
    assert model.transform.image_mean == [0.0, 0.0, 0.0]
    assert model.transform.image_std == [1.0, 1.0, 1.0]
    assert (model.transform.min_size, model.transform.max_size) == ((320,), 480)
    x = torch.randn(3, 5, 7)
    assert torch.equal(model.transform.normalize(x), x)


def test_several_shorter_sides_train_at_one_drawn_per_batch_and_evaluate_at_the_last():
    """The paper's Cityscapes recipe: shorter side drawn from [800, 1024] in training, 1024 at
    inference; torchvision draws one of the sizes per batch and evaluates at the last."""
    model = meta_model(min_size=[16, 24, 32], max_size=96)
    assert model.transform.min_size == (16, 24, 32)
    image = torch.zeros(3, 40, 60)
    model.transform.eval()
    assert model.transform([image])[0].image_sizes == [(32, 48)]
    model.transform.train()
    torch.manual_seed(0)
    drawn = {model.transform([image])[0].image_sizes[0] for _ in range(30)}
    assert drawn == {(16, 24), (24, 36), (32, 48)}
    for bad in ([], [0, 800]):
        with pytest.raises(PixelwiseError, match="min_size"):
            meta_model(min_size=bad)


def test_trainable_layers_follow_torchvisions_rule():
    def frozen(model: nn.Module) -> set[str]:
        names = {n.split(".")[0] for n, p in model.backbone.body.named_parameters()}
        trained = {n.split(".")[0] for n, p in model.backbone.body.named_parameters()
                   if p.requires_grad}  # fmt: skip
        return names - trained

    assert frozen(meta_model(frozen_bn=False)) == set()  # from scratch: everything trains
    assert frozen(meta_model(frozen_bn=False, trainable_backbone_layers=3)) == {
        "conv1",
        "bn1",
        "layer1",
    }
    with pytest.raises(PixelwiseError, match="use 0 to 5"):
        meta_model(trainable_backbone_layers=6)


def test_weights_backbone_loads_imagenet_resnet50_into_the_body_and_freezes_the_stem():
    state = random_torchvision_state(resnet50)  # has fc.* and num_batches_tracked
    model = build_model("maskrcnn_resnet50_fpn", 3, weights_backbone=state)
    body = model.backbone.body
    assert torch.equal(body.layer3[2].conv2.weight, state["layer3.2.conv2.weight"])
    assert torch.equal(body.bn1.running_var, state["bn1.running_var"])
    assert not body.layer1[0].conv1.weight.requires_grad  # 3 trainable layers once pretrained
    assert body.layer2[0].conv1.weight.requires_grad


def test_detector_weights_of_another_class_count_keep_all_but_the_predictors(tmp_path):
    torch.manual_seed(1)
    coco = build_model("maskrcnn_resnet50_fpn", 91)
    path = tmp_path / "coco.pth"
    torch.save(coco.state_dict(), path)
    fine = build_model("maskrcnn_resnet50_fpn", 4, weights=str(path), frozen_bn=False)
    assert torch.equal(fine.rpn.head.conv[0][0].weight, coco.rpn.head.conv[0][0].weight)
    assert torch.equal(fine.roi_heads.mask_head[0][0].weight, coco.roi_heads.mask_head[0][0].weight)
    assert fine.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 4
    assert not fine.backbone.body.layer1[0].conv1.weight.requires_grad


def tiny_batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images = [torch.randn(3, 60, 80), torch.randn(3, 50, 70)]
    masks = torch.zeros(1, 60, 80, dtype=torch.uint8)
    masks[0, 10:30, 20:50] = 1
    targets = [
        {"boxes": torch.tensor([[20.0, 10, 50, 30]]), "labels": torch.tensor([1]), "masks": masks},
        {  # an image without objects
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.long),
            "masks": torch.zeros(0, 50, 70, dtype=torch.uint8),
        },
    ]
    return images, targets


def test_train_mode_gives_torchvisions_loss_dict_and_eval_mode_detections(one_thread):
    model = tiny_model().train()
    images, targets = tiny_batch()
    losses = model(images, targets)
    assert set(losses) == LOSSES
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad is not None
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and all(len(d["boxes"]) <= 5 for d in detections)
    assert (
        model.rpn.post_nms_top_n() == 50
        and model.roi_heads.fg_bg_sampler.batch_size_per_image == 32
    )
    for found, image in zip(detections, images, strict=True):
        n = found["boxes"].shape[0]
        assert found["boxes"].shape == (n, 4) and found["labels"].shape == (n,)
        assert found["scores"].shape == (n,)
        assert found["masks"].shape == (n, 1, *image.shape[1:])
        assert found["masks"].min() >= 0 and found["masks"].max() <= 1


def test_models_lists_the_task_and_a_dash_for_the_detectors_flops(capsys, monkeypatch):
    # The listing builds (and with --flops counts) every network; two rows are enough here.
    monkeypatch.setattr("pixelwise.models.list_models", lambda: ["enet", "maskrcnn_resnet50_fpn"])
    assert main(["models", "--flops"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("maskrcnn_resnet50_fpn "))
    assert row.split()[1:6] == ["instance", "2017", "44,401,393", "-", "-"]
    assert next(line for line in lines if line.startswith("enet ")).split()[1:5] == [
        "semantic",
        "2016",
        "363,791",
        "3.4",
    ]
