"""Mask R-CNN: Faster R-CNN on a ResNet-50-FPN plus a per-class mask branch, from torchvision.

Paper: He, Gkioxari, Dollár, Girshick, "Mask R-CNN", arXiv:1703.06870 (2017). The ``_v2`` variant
keeps the network and adds torchvision's improved heads (a 2-conv RPN head, 4 conv + 1 fc box head
and BN in the FPN and heads) from Li et al., "Benchmarking Detection Transfer Learning with Vision
Transformers", arXiv:2111.11429 (2021).

The detector is torchvision's (``torchvision.models.detection.maskrcnn_resnet50_fpn`` and
``maskrcnn_resnet50_fpn_v2``), not written again: RoIAlign, the FPN, the RPN, the box head and the
mask head with its per-class sigmoid (binary cross-entropy) loss are torchvision's modules. What
this file adds is how pixelwise builds it:

- **Normalisation happens once, in pixelwise's data pipeline** (``data.mean``/``data.std``,
  ImageNet by default, like every other network). torchvision's ``GeneralizedRCNNTransform`` would
  normalise a second time, so it is built with ``image_mean=(0, 0, 0)`` and ``image_std=(1, 1, 1)``;
  it still resizes (``min_size``/``max_size``) and batches, and maps the outputs back to each
  image's own size.
- **Frozen BatchNorm by default for ``maskrcnn_resnet50_fpn``** (``frozen_bn=True``): the ResNet's
  BN layers are torchvision's ``FrozenBatchNorm2d`` (fixed ImageNet statistics and affine), the
  paper's practice (its minibatch is 2 images per GPU, too few for batch statistics) and the layout
  of torchvision's COCO-trained weights. 44,401,393 learnable parameters at 91 classes.
  ``frozen_bn=False`` gives trainable BN, what torchvision builds when no weights are given
  (44,454,513); use it to train from scratch, where frozen identity BN leaves the ResNet
  unnormalised. ``maskrcnn_resnet50_fpn_v2`` defaults to trainable BN, as its recipe trains BN
  (46,359,409 parameters); ``frozen_bn`` there freezes the ResNet's BN only.
- ``weights_backbone`` takes the ImageNet ResNet-50 weights as the other networks do (a
  torchvision enum or its name such as ``"ResNet50_Weights.IMAGENET1K_V1"``, a state-dict file);
  ``weights`` takes the COCO-trained detector (``"MaskRCNN_ResNet50_FPN_Weights.COCO_V1"``, or a
  file). Nothing downloads unless one of them names a torchvision enum.
- ``trainable_backbone_layers`` (0-5, counted from ``layer4`` down to ``conv1``) follows
  torchvision's rule: 3 when pretrained weights are loaded, 5 (everything) otherwise.
- Any ``num_classes`` (background included) sizes the box predictor (``cls_score``,
  ``bbox_pred``) and the mask predictor's ``mask_fcn_logits``. COCO weights loaded into another
  class count keep everything but those class-specific layers (fine-tuning, as the paper's
  Cityscapes model started from COCO).

Interface (torchvision's): ``model(images, targets)`` in train mode, ``images`` a list of 3xHxW
float tensors (normalised) and ``targets`` a list of dicts with ``boxes`` (Nx4 xyxy float),
``labels`` (N int64) and ``masks`` (NxHxW uint8), returns the loss dict (``loss_classifier``,
``loss_box_reg``, ``loss_mask``, ``loss_objectness``, ``loss_rpn_box_reg``); in eval mode
``model(images)`` returns one dict per image with ``boxes`` (Nx4), ``labels`` (N), ``scores`` (N)
and ``masks`` (Nx1xHxW probabilities in [0, 1]) at that image's size.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN, mask_rcnn
from torchvision.ops.misc import FrozenBatchNorm2d

from pixelwise.errors import PixelwiseError
from pixelwise.models.backbones import (
    WeightsSource,
    describe_source,
    load_backbone,
    load_backbone_state_dict,
    load_strict,
    resolve_weights,
)
from pixelwise.models.registry import register_model

__all__ = ["freeze_batchnorm", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"]

# The class-count-dependent layers: left out when COCO weights meet another num_classes.
CLASS_SPECIFIC = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
)
# torchvision's order of unfreezing, from the top of the ResNet down (_resnet_fpn_extractor).
BACKBONE_LAYERS = ("layer4", "layer3", "layer2", "layer1", "conv1")
# The released COCO_V1 weights of the v1 model were trained with BN eps 0 (torchvision resets it).
EPS_ZERO_WEIGHTS = ("MaskRCNN_ResNet50_FPN_Weights.COCO_V1",)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` inside ``module`` by a ``FrozenBatchNorm2d`` with its values.

    Frozen BN keeps its affine and statistics as buffers, so they are never trained and never
    updated; the module is changed in place and returned.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps).to(child.weight.device)
            with torch.no_grad():
                frozen.weight.copy_(child.weight)
                frozen.bias.copy_(child.bias)
                frozen.running_mean.copy_(child.running_mean)
                frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def _freeze_backbone_layers(body: nn.Module, trainable_layers: int) -> None:
    """torchvision's rule: only the top ``trainable_layers`` of the ResNet keep gradients."""
    train = BACKBONE_LAYERS[:trainable_layers]
    if trainable_layers == 5:
        train += ("bn1",)
    for name, parameter in body.named_parameters():
        if not name.startswith(train):
            parameter.requires_grad_(False)


def _fit_batchnorm_keys(
    state: Mapping[str, Tensor], own: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Frozen BN has no ``num_batches_tracked``; trainable BN does: add or drop it to fit ``own``."""
    fitted = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked") or k in own}
    for key in own:
        if key.endswith("num_batches_tracked") and key not in fitted:
            fitted[key] = torch.zeros((), dtype=torch.long)
    return fitted


def _imagenet_to_body(body: nn.Module) -> Callable[[Mapping[str, Tensor]], dict[str, Tensor]]:
    """torchvision ``resnet50`` keys -> the FPN body's (the same names, without ``fc``)."""

    def convert(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        kept = {k: v for k, v in state.items() if not k.startswith("fc.")}
        return _fit_batchnorm_keys(kept, body.state_dict())

    return convert


def _load_detector(model: MaskRCNN, source: WeightsSource, num_classes: int) -> None:
    """Load a whole detector's weights; another class count keeps all but the predictors."""
    state = load_backbone_state_dict(source)
    if state is None:
        return
    own = model.state_dict()
    state = _fit_batchnorm_keys(state, own)
    if state["roi_heads.box_predictor.cls_score.weight"].shape[0] != num_classes:
        for key in list(state):
            if key.startswith(CLASS_SPECIFIC):
                state[key] = own[key]  # the model's own fresh initialisation
    load_strict(model, state, describe_source(source))
    if describe_source(source) in EPS_ZERO_WEIGHTS:
        mask_rcnn.overwrite_eps(model, 0.0)


PAPER = "He et al., Mask R-CNN (arXiv:1703.06870)"
# The paper trains and tests at a shorter side of 800 pixels (longer side at most 1333).
INPUT_SIZE = (800, 1333)


def _register_maskrcnn(
    name: str,
    torchvision_builder: Callable[..., MaskRCNN],
    *,
    paper: str,
    frozen_bn_default: bool,
    summary: str,
) -> Callable[..., MaskRCNN]:
    """Register the builder of one torchvision variant; the variants differ only in the detector
    torchvision builds and in ``frozen_bn``'s default."""

    def build(
        *,
        num_classes: int = 91,
        weights: WeightsSource = None,
        weights_backbone: WeightsSource = None,
        trainable_backbone_layers: int | None = None,
        frozen_bn: bool = frozen_bn_default,
        min_size: int | Sequence[int] = 800,
        max_size: int = 1333,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_test: int = 1000,
        box_batch_size_per_image: int = 512,
        box_detections_per_img: int = 100,
        box_score_thresh: float = 0.05,
    ) -> MaskRCNN:
        """
        Args:
            num_classes: classes including the background (COCO: 91 ids, background 0).
            weights: a whole detector (the variant's torchvision COCO weights, such as
                ``"MaskRCNN_ResNet50_FPN_Weights.COCO_V1"``, or a file).
            weights_backbone: ImageNet ResNet-50 weights for the backbone.
            trainable_backbone_layers: ResNet stages that train (0-5); default 3 with pretrained
                weights, else 5.
            frozen_bn: ``FrozenBatchNorm2d`` in the ResNet (the paper) instead of trainable BN.
            min_size: the shorter side images are resized to inside the model; several sizes:
                training draws one per batch, evaluation takes the last (torchvision's rule).
            max_size: the cap on the longer side.
            rpn_post_nms_top_n_train: RPN proposals kept per image in training (torchvision's
                name).
            rpn_post_nms_top_n_test: RPN proposals kept per image in eval.
            box_batch_size_per_image: RoIs sampled per image for the box and mask losses.
            box_detections_per_img: detections returned per image (COCO's AP counts up to 100).
            box_score_thresh: detections scoring below it are not returned.
                These five are torchvision's names and defaults; the box and mask heads run on
                every proposal/detection, so small counts make CPU tests fast.
        """
        sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
        if not sizes or not all(isinstance(s, int) and s > 0 for s in sizes):
            raise PixelwiseError(
                f"min_size is {min_size!r}; give the shorter side in pixels (800) or the sizes to "
                "draw from in training, the last also the evaluation size ([800, 832, ..., 1024])."
            )
        if num_classes < 2:
            raise PixelwiseError(
                f"Mask R-CNN needs num_classes >= 2 (background and at least one class), got "
                f"{num_classes}; count the background as class 0."
            )
        weights, weights_backbone = resolve_weights(weights), resolve_weights(weights_backbone)
        pretrained = weights is not None or weights_backbone is not None
        if trainable_backbone_layers is None:
            trainable_backbone_layers = 3 if pretrained else 5
        if not 0 <= trainable_backbone_layers <= 5:
            raise PixelwiseError(
                f"trainable_backbone_layers is {trainable_backbone_layers}; it counts ResNet stages "
                "from layer4 down to conv1, so use 0 to 5."
            )
        # Built without weights so that torchvision neither downloads nor picks BN and freezing by
        # itself; both are decided here, the same way whatever the weights' source.
        model = torchvision_builder(
            weights=None,
            weights_backbone=None,
            num_classes=num_classes,
            min_size=sizes,
            max_size=max_size,
            image_mean=[0.0, 0.0, 0.0],  # pixelwise's data pipeline has normalised already
            image_std=[1.0, 1.0, 1.0],
            rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
            rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
            box_batch_size_per_image=box_batch_size_per_image,
            box_detections_per_img=box_detections_per_img,
            box_score_thresh=box_score_thresh,
        )
        body = model.backbone.body
        if frozen_bn:
            freeze_batchnorm(body)
        load_backbone(body, weights_backbone, convert=_imagenet_to_body(body))
        _load_detector(model, weights, num_classes)
        _freeze_backbone_layers(body, trainable_backbone_layers)
        return model

    # Named as the module attribute it is bound to, so it pickles and reads like a def.
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{summary}\n\n{inspect.cleandoc(build.__doc__ or '')}"
    return register_model(
        name, paper=paper, year=2017, input_size=INPUT_SIZE, num_classes=91, task="instance"
    )(build)


maskrcnn_resnet50_fpn = _register_maskrcnn(
    "maskrcnn_resnet50_fpn",
    mask_rcnn.maskrcnn_resnet50_fpn,
    paper=PAPER,
    frozen_bn_default=True,
    summary="torchvision's Mask R-CNN ResNet-50-FPN; frozen BN by default (see the module "
    'docstring); ``weights`` takes ``"MaskRCNN_ResNet50_FPN_Weights.COCO_V1"``.',
)
maskrcnn_resnet50_fpn_v2 = _register_maskrcnn(
    "maskrcnn_resnet50_fpn_v2",
    mask_rcnn.maskrcnn_resnet50_fpn_v2,
    paper=PAPER + "; v2 heads from Li et al. (arXiv:2111.11429)",
    frozen_bn_default=False,
    summary="torchvision's improved Mask R-CNN ResNet-50-FPN (v2); trainable BN by default; "
    '``weights`` takes ``"MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1"``.',
)
