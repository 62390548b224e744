"""DecoupledNet: a classifier finds the image's classes, a deconvolution net segments each one.

Paper: Hong, Noh, Han, "Decoupled Deep Neural Network for Semi-supervised Semantic Segmentation",
NIPS 2015, arXiv:1506.04924.

Reference code followed: HyeonwooNoh/DecoupledNet, ``model/*/DecoupledNet_*_inference_deploy.prototxt``,
``training/00*_*/*.prototxt`` with ``gen_fp_bp_model.py`` (the frozen back-propagation path) and
``inference/DecoupledNet_inference.m`` (how the per-class maps are combined); read layer by layer in
docs/models.md. The released nets run at 320x320 (pool5 10x10, score map 4x4):

- Classification network: VGG16 ``conv1_1 .. pool5`` (2x2/2 max pools whose argmax the decoder
  keeps), ``fc6`` 7x7 conv 512->4096 without padding + ReLU, ``fc7`` 1x1 4096->4096 + ReLU,
  ``cls_score`` 1x1 4096->K (K = C - 1 foreground classes; class 0 is background), no dropout. The
  image-level score of a class is the average of its score map (the release fine-tunes the
  classifier with a 4x4 AVE pool); its sigmoid is the class's probability.
- Class-specific activation map ``pool5_bp``: the label-weighted score back-propagated through the
  classifier's own fc layers to pool5, stopping there: MAX-unpool at the score map's argmax, the
  transpose of ``cls_score``, x the fc7 ReLU mask, the transpose of ``fc7``, x the fc6 ReLU mask,
  the transpose of ``fc6``. It is computed with the classifier's weights, detached, and no biases
  (the release's frozen copies with biases zeroed), so it adds no parameters. The weight of class
  c is its label times a probability, as the release's ``cls-score-masked`` input is; which
  probability differs between training and inference in the release, and here as there:

  - training: ``sigmoid(max score_c)`` times the selected class's label (the training nets build
    ``cls-score-masked`` in-net from the MAX-pooled sigmoid: ``training/003_train_seg_25_anno/
    003_train_seg_25_anno.prototxt`` lines 185-192, the same in 002/004/005);
  - inference: ``sigmoid(mean score_c)`` (:meth:`DecoupledNet.class_probabilities`), the
    AVE-pooled sigmoid. The deploy net has both (``model/*/*_inference_deploy.prototxt`` lines
    143-147, AVE 4x4 -> ``cls-score-avg-sigmoid``, and 151-155, MAX 4x4 -> ``cls-score-sigmoid``)
    and Caffe lists its outputs in that order, so ``inference/DecoupledNet_inference.m`` lines 52-53
    read output 1 as ``cls_score`` (the average) and output 2 as ``cls_score_max``, which it never
    uses again. Detection (line 59, 73, 89) and the weights (line 59: ``cls_score .* (cls_score >
    0.5)``; line 75: ``label(j) = cls_score(j)``) are all ``cls_score``: the average over the
    single 4x4 score map of one pass (no crops, no flips).
- Bridging layers: ``BN(pool5)`` concatenated with ``BN(pool5_bp)`` (1024 channels), ``fc6_seg``
  7x7 conv 1024->2048 + BN + ReLU (10->4), ``fc7_seg`` 1x1 2048->2048 + BN + ReLU, ``fc6_deconv``
  7x7 deconvolution 2048->512 + BN + ReLU (4->10).
- Segmentation network (the deconvolution net): five stages of unpooling with the classifier's own
  pool argmax and 3x3 deconvolutions + BN + ReLU mirroring VGG16 (512,512,512 | 512,512,256 |
  256,256,128 | 128,64 | 64,64: 13 deconvs), then ``seg_score`` 1x1 64->2 (background,
  figure). The network is class-agnostic: which class it segments comes from ``pool5_bp``.
- Inference (``model(x)`` in eval mode), ``inference/DecoupledNet_inference.m`` lines 47-101: a
  class is detected when its probability (the AVE-pooled sigmoid above) exceeds ``threshold``
  (0.5, ``run_demo.m`` line 13). A background pass (every detected class weighted by its
  probability) gives the background map (channel 0 of its softmax); one pass per detected class
  gives that class's figure map (channel 1). Where the maps sum to 0, background and the detected
  classes get 1 each (line 91); the maps are divided by their sum over channels (line 94), and
  these *probabilities* are resized back to the image (line 96, ``imresize`` of
  ``norm_score_map``) before the argmax (line 101). The network returns the logarithm of the
  resized probabilities, so that its argmax and softmax are the release's; a class the
  classifier does not detect gets :data:`UNDETECTED_LOGIT` (-1e4, finite so averaging stays
  finite) and so never wins a pixel.

The authors' four Caffe files convert exactly (zoo releases ``decouplednet-full-voc`` and
``decouplednet-{25,10,5}anno-voc``, :mod:`pixelwise.convert.releases._decouplednet`): their
``*-bp`` layers are copies of the classifier's weights, which this network reuses, and their 3x3
deconvolutions load as the convolutions the decoder writes.

Any input size runs as the release's inference does: zero-padded at the bottom/right to a square,
resized bilinearly to ``input_size`` (the fixed unpooling sizes need it), and the output resized
back and cropped, so the maps come out at the input's size.

Deviations:

- The probabilities are resized bilinearly (``align_corners=False``); MATLAB's ``imresize`` with no
  method (line 96) is bicubic, whose overshoot can leave a resized map slightly outside [0, 1].
- Pretrained weights are torchvision's ImageNet VGG16 (RGB, ImageNet mean/std; classifier fc6/fc7
  converted by :func:`~pixelwise.models.fcn.vgg16_to_fcn_state_dict`) instead of the Caffe VGG16;
  the padding of the square is 0 in the normalised input (the mean colour), not black.
- Classification stage: its training recipe is unconfirmed (REFERENCE.md part C); here it is the
  multi-label BCE on the AVE-pooled scores, in the same run as the segmentation stage: first
  alone, then frozen (``train.classifier_iters``), or both at once (see
  :mod:`pixelwise.tasks.decoupled`).
- ``width_divisor`` and ``fc_kernel`` build narrower, smaller variants (all channel counts divided,
  the 7x7 fc kernels shrunk) for small inputs such as the built-in shapes, and ``batch_norm`` puts
  BN in the classifier's convs for training from scratch; the paper's setting is
  ``width_divisor=1, fc_kernel=7, input_size=320, batch_norm=False``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.errors import PixelwiseError
from pixelwise.models.backbones import (
    VGG16_STAGES,
    VGGBackbone,
    WeightsSource,
    load_backbone,
    rename_keys_on_load,
)
from pixelwise.models.fcn import vgg16_to_fcn_state_dict
from pixelwise.models.registry import register_model

__all__ = ["DecoupledNet", "DecoupledOutput", "UNDETECTED_LOGIT", "decouplednet"]

PAPER = (
    "Hong, Noh, Han, Decoupled Deep Neural Network for Semi-supervised Semantic Segmentation "
    "(arXiv:1506.04924)"
)

#: The log-score of a class the classifier does not detect: below any detected class's
#: (whose normalised map is clamped at :data:`_MIN_PROBABILITY`), so it never wins a pixel.
UNDETECTED_LOGIT = -1e4
_MIN_PROBABILITY = 1e-30


@dataclass(frozen=True)
class DecoupledOutput:
    """What a training forward (``model(x, pairs)``) returns.

    Attributes:
        class_logits: N x K image-level scores of the K = C - 1 foreground classes (before the
            sigmoid; the multi-label BCE takes them).
        figure_ground: P x 2 x H x W logits (background, figure) of the P ``(image, class)``
            pairs, at the input's size.
    """

    class_logits: Tensor
    figure_ground: Tensor


@dataclass
class _Features:
    """One classifier pass over N images: what the class-specific maps and the decoder reuse."""

    pool5: Tensor
    indices: list[Tensor]
    sizes: list[torch.Size]
    fc6: Tensor  # after ReLU
    fc7: Tensor  # after ReLU
    score_map: Tensor  # N x K x h x w

    @property
    def class_logits(self) -> Tensor:
        return self.score_map.mean(dim=(2, 3))


class ClassifierBackbone(nn.Module):
    """The classifier's backbone: VGG16 convs + ``fc6`` (kxk, no padding) + ``fc7`` (1x1); keys as
    torchvision's converted VGG16 (``vgg.features.N``, ``fc6``, ``fc7``), so ImageNet weights load
    with :func:`~pixelwise.models.fcn.vgg16_to_fcn_state_dict`."""

    def __init__(
        self,
        stages: Sequence[Sequence[int]],
        fc_channels: int,
        fc_kernel: int,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.vgg = VGGBackbone(stages=stages, batch_norm=batch_norm)
        self.fc6 = nn.Conv2d(stages[-1][-1], fc_channels, fc_kernel)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def convert(self, state) -> dict[str, Tensor]:
        return vgg16_to_fcn_state_dict(state)


def legacy_decouplednet_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys of DecoupledNet checkpoints written before the backbone was named so -> today's.

    ``trunk.*`` -> ``backbone.*``; other keys pass unchanged. Pure.
    """
    return {
        "backbone." + key.removeprefix("trunk.") if key.startswith("trunk.") else key: value
        for key, value in state.items()
    }


def _norm_relu(layer: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(layer, nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class Bridge(nn.Module):
    """pool5 and its class-specific map -> the deconvolution net's input (pool5's width and size)."""

    def __init__(self, channels: int, width: int, kernel: int) -> None:
        super().__init__()
        self.bn_pool5 = nn.BatchNorm2d(channels)
        self.bn_pool5_bp = nn.BatchNorm2d(channels)
        self.fc6_seg = _norm_relu(nn.Conv2d(2 * channels, width, kernel), width)
        self.fc7_seg = _norm_relu(nn.Conv2d(width, width, 1), width)
        self.fc6_deconv = _norm_relu(nn.ConvTranspose2d(width, channels, kernel), channels)

    def forward(self, pool5: Tensor, pool5_bp: Tensor) -> Tensor:
        x = torch.cat([self.bn_pool5(pool5), self.bn_pool5_bp(pool5_bp)], dim=1)
        return self.fc6_deconv(self.fc7_seg(self.fc6_seg(x)))


def _decoder(stages: Sequence[Sequence[int]]) -> nn.ModuleList:
    """Deepest stage first; a stage has as many 3x3 deconvs as its VGG stage, all at the
    stage's width except the last, which narrows to the shallower stage's (``deconv4_3`` 512->256).

    A 3x3 deconvolution with stride 1 and padding 1 is a 3x3 convolution with the kernel flipped
    and its in/out axes swapped: the same functions and parameter count. It is written as
    ``Conv2d``, which runs on oneDNN on a CPU, where ``ConvTranspose2d`` took the slow reference
    path (3x the time of the whole step at the shapes recipe's size). A Caffe ``deconv*`` weight
    loads as ``weight.transpose(0, 1).flip(2, 3)``."""
    blocks = []
    for index in reversed(range(len(stages))):
        widths = stages[index]
        narrow = stages[index - 1][-1] if index > 0 else widths[-1]
        layers = []
        for position in range(len(widths)):
            out = narrow if position == len(widths) - 1 else widths[-1]
            layers.append(_norm_relu(nn.Conv2d(widths[-1], out, 3, padding=1), out))
        blocks.append(nn.Sequential(*layers))
    return nn.ModuleList(blocks)


class DecoupledNet(nn.Module):
    """Classification network, bridging layers and a class-agnostic deconvolution network.

    ``model(x)`` (N x 3 x H x W, any size) returns N x C x H x W log-probabilities of the combined
    map, resized as probabilities (see the module docstring); ``model(x, pairs)`` returns a
    :class:`DecoupledOutput` for training (the class logits and the figure-ground logits of the
    given pairs). Training goes through ``forward`` so that DistributedDataParallel sees it.

    Args:
        num_classes: C, background (class 0) included; the classifier has C - 1 outputs.
        stages: VGG conv widths per stage.
        fc_channels: width of ``fc6``/``fc7`` (4096).
        fc_kernel: kernel of ``fc6``, ``fc6_seg`` and ``fc6_deconv`` (7).
        bridge_channels: width of ``fc6_seg``/``fc7_seg`` (2048).
        input_size: the square side the network runs at (320); a multiple of 32 with
            ``input_size / 32 > fc_kernel`` (pool5 10x10 -> fc6 4x4 at 320).
        threshold: a class is detected where its probability exceeds it (0.5).
        batch_norm: BN after every VGG conv of the classifier (not in the paper, whose
            classifier starts from ImageNet; for training from scratch).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        stages: Sequence[Sequence[int]] = VGG16_STAGES,
        fc_channels: int = 4096,
        fc_kernel: int = 7,
        bridge_channels: int = 2048,
        input_size: int = 320,
        threshold: float = 0.5,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise PixelwiseError(
                f"DecoupledNet needs background and at least one class, got num_classes={num_classes}."
            )
        stride = 2 ** len(stages)
        # fc6's map must be at least 2x2: BatchNorm in the bridge needs more than one value per
        # channel when a training batch holds a single (image, class) pair.
        if input_size % stride or input_size // stride <= fc_kernel:
            raise PixelwiseError(
                f"DecoupledNet input_size {input_size} must be a multiple of {stride} with "
                f"input_size/{stride} > fc_kernel ({fc_kernel}); e.g. 320 with fc_kernel 7, or "
                f"64 with fc_kernel 1."
            )
        self.num_classes = num_classes
        self.input_size = input_size
        self.threshold = threshold
        self.backbone = ClassifierBackbone(stages, fc_channels, fc_kernel, batch_norm)
        # Checkpoints written before the rename name the backbone ``trunk``.
        self.register_load_state_dict_pre_hook(rename_keys_on_load(legacy_decouplednet_keys))
        self.cls_score = nn.Conv2d(fc_channels, num_classes - 1, 1)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.zeros_(self.cls_score.bias)
        self.bridge = Bridge(stages[-1][-1], bridge_channels, fc_kernel)
        self.decoder = _decoder(stages)
        self.seg_score = nn.Conv2d(stages[0][-1], 2, 1)
        self._init_segmentation()

    def _init_segmentation(self) -> None:
        """The release's fillers for the new layers: gaussian std 0.01, bias 0, BN scale 1 and
        shift 0.001."""
        for part in (self.bridge, self.decoder, self.seg_score):
            for module in part.modules():
                if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                    nn.init.normal_(module.weight, std=0.01)
                    nn.init.zeros_(module.bias)
                elif isinstance(module, nn.BatchNorm2d):
                    nn.init.ones_(module.weight)
                    nn.init.constant_(module.bias, 0.001)

    def parts(self) -> dict[str, nn.Module]:
        """The three networks of the paper, for ``pixelwise models`` (parameters of each)."""
        return {
            "classifier": nn.ModuleList([self.backbone, self.cls_score]),
            "bridging": self.bridge,
            "segmentation": nn.ModuleList([self.decoder, self.seg_score]),
        }

    @property
    def num_foreground(self) -> int:
        return self.num_classes - 1

    # -- geometry ------------------------------------------------------------------------------
    def to_network(self, x: Tensor) -> Tensor:
        """Pad bottom/right to a square, resize to ``input_size`` (the release's preprocessing)."""
        height, width = x.shape[-2:]
        side = max(height, width)
        if (height, width) == (self.input_size, self.input_size):
            return x
        x = F.pad(x, (0, side - width, 0, side - height))
        if side == self.input_size:
            return x
        return F.interpolate(
            x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
        )

    def from_network(self, y: Tensor, size: Sequence[int]) -> Tensor:
        """The inverse of :meth:`to_network` for maps: resize to the padded square, crop."""
        height, width = int(size[0]), int(size[1])
        side = max(height, width)
        if side != y.shape[-1]:
            y = F.interpolate(y, size=(side, side), mode="bilinear", align_corners=False)
        return y[..., :height, :width]

    # -- the three parts -------------------------------------------------------------------------
    def features(self, x: Tensor) -> _Features:
        """The classification network on inputs already at ``input_size``."""
        pool5, indices, sizes = self.backbone.vgg.forward_with_indices(x)
        fc6 = F.relu(self.backbone.fc6(pool5))
        fc7 = F.relu(self.backbone.fc7(fc6))
        return _Features(pool5, indices, sizes, fc6, fc7, self.cls_score(fc7))

    def class_specific_map(self, feats: _Features, image: Tensor, weights: Tensor) -> Tensor:
        """``pool5_bp`` of P rows: image ``image[p]`` with the label weights ``weights[p]`` (K).

        The gradient of ``sum_c weights[p, c] * max score_c`` with respect to pool5 through the
        classifier's fc layers, written out (the release's frozen deconvolution copies): no
        gradient reaches the classifier's weights through it.
        """
        score = feats.score_map[image]
        count, classes, height, width = score.shape
        flat = score.detach().flatten(2)
        grad = torch.zeros_like(flat).scatter_(
            2, flat.argmax(2, keepdim=True), weights[..., None].to(flat.dtype)
        )
        grad = grad.view(count, classes, height, width)
        backbone = self.backbone
        d7 = F.conv_transpose2d(grad, self.cls_score.weight.detach())
        d7 = d7 * (feats.fc7[image] > 0).to(d7.dtype)
        d6 = F.conv_transpose2d(d7, backbone.fc7.weight.detach())
        d6 = d6 * (feats.fc6[image] > 0).to(d6.dtype)
        return F.conv_transpose2d(d6, backbone.fc6.weight.detach())

    def segment(self, feats: _Features, image: Tensor, weights: Tensor) -> Tensor:
        """Figure-ground logits P x 2 x S x S for the rows (``image[p]``, ``weights[p]``).

        pool5 enters the bridge detached: the classifier is the release's frozen one for the
        segmentation loss, which trains the bridge and the deconvolution net only.
        """
        pool5 = feats.pool5[image].detach()
        x = self.bridge(pool5, self.class_specific_map(feats, image, weights))
        for block, index, size in zip(
            self.decoder, reversed(feats.indices), reversed(feats.sizes), strict=True
        ):
            x = F.max_unpool2d(x, index[image], 2, 2, output_size=size)
            x = block(x)
        return self.seg_score(x)

    def label_weights(self, feats: _Features) -> Tensor:
        """N x K: ``sigmoid(max score_c)``, the scale of class c's map in training (the release's
        training nets' ``cls-score-masked`` before the label vector multiplies it)."""
        return torch.sigmoid(feats.score_map.detach().amax(dim=(2, 3)))

    def class_probabilities(self, feats: _Features) -> Tensor:
        """N x K: ``sigmoid(mean score_c)``, the release's inference ``cls_score`` (the deploy
        net's AVE-pooled sigmoid): what detection thresholds and what weighs class c's map at
        inference."""
        return torch.sigmoid(feats.class_logits.detach())

    @torch.no_grad()
    def bridging_maps(self, x: Tensor) -> Tensor:
        """N x K x h x w (pool5's size): one channel per foreground class, the magnitude of its
        class-specific map (``pool5_bp`` with the class's label alone, summed over channels).

        What the bridging layers see of each class; drawn as a picture, it shows where the
        classifier found the class.
        """
        feats = self.features(self.to_network(x))
        count, classes = feats.score_map.shape[:2]
        image = torch.arange(count, device=x.device).repeat_interleave(classes)
        cls = torch.arange(classes, device=x.device).repeat(count)
        weights = F.one_hot(cls, classes).to(feats.score_map.dtype)
        maps = self.class_specific_map(feats, image, weights).abs().sum(dim=1)
        return maps.view(count, classes, *maps.shape[-2:])

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x: Tensor, pairs: Tensor | None = None) -> Tensor | DecoupledOutput:
        """Combined log-scores N x C x H x W, or, with ``pairs``, a :class:`DecoupledOutput`.

        Args:
            x: N x 3 x H x W normalised images.
            pairs: P x 2 long ``(image index, foreground class index 0..K-1)``: the figure-ground
                maps training asks for (class index k is the model's class k + 1).
        """
        size = x.shape[-2:]
        feats = self.features(self.to_network(x))
        if pairs is not None:
            image, cls = pairs[:, 0], pairs[:, 1]
            one_hot = F.one_hot(cls, self.num_foreground).to(feats.score_map.dtype)
            weights = one_hot * self.label_weights(feats)[image]
            logits = self.segment(feats, image, weights)
            return DecoupledOutput(feats.class_logits, self.from_network(logits, size))
        probabilities, present = self.combine(feats)
        return self.log_scores(self.from_network(probabilities, size), present)

    @staticmethod
    def log_scores(probabilities: Tensor, present: Tensor) -> Tensor:
        """The log of the combined map (already at the image's size), undetected classes at
        :data:`UNDETECTED_LOGIT`.

        The release resizes the normalised probabilities and takes their argmax; the log comes
        after the resize, so the argmax is the release's (a resized log is the log of a geometric,
        not an arithmetic, mean of the neighbours). The constant is set after the resize too, which
        would blur it into its neighbours' values.
        """
        logits = probabilities.clamp_min(_MIN_PROBABILITY).log()
        return logits.masked_fill(~present[..., None, None], UNDETECTED_LOGIT)

    def detect(self, feats: _Features) -> Tensor:
        """N x K booleans: the classes whose probability (:meth:`class_probabilities`) exceeds
        ``threshold``."""
        return self.class_probabilities(feats) > self.threshold

    def combine(self, feats: _Features) -> tuple[Tensor, Tensor]:
        """The combined map at network resolution: the normalised background and detected class
        maps (N x C x S x S probabilities, 0 for the classes not detected), and which of the C
        classes are present (N x C booleans: background and the detected classes)."""
        count = feats.pool5.shape[0]
        detected = self.detect(feats)
        scale = self.class_probabilities(feats)
        everyone = torch.arange(count, device=detected.device)
        background = self.segment(feats, everyone, scale * detected.to(scale.dtype))
        maps = feats.pool5.new_zeros(count, self.num_classes, *background.shape[-2:])
        maps[:, 0] = background.softmax(dim=1)[:, 0]
        image, cls = detected.nonzero(as_tuple=True)
        if image.numel():
            weights = F.one_hot(cls, self.num_foreground).to(scale.dtype) * scale[image]
            figure = self.segment(feats, image, weights).softmax(dim=1)[:, 1]
            maps[image, cls + 1] = figure.to(maps.dtype)
        present = torch.cat([detected.new_ones(count, 1), detected], dim=1)
        # Where every map is 0 (softmax underflow), the present classes tie instead of 0 / 0.
        empty = maps.sum(dim=1, keepdim=True) <= 0
        maps = maps + (empty & present[..., None, None]).to(maps.dtype)
        return maps / maps.sum(dim=1, keepdim=True), present


def _build_decouplednet(
    *,
    num_classes: int,
    width_divisor: int,
    fc_kernel: int,
    input_size: int,
    threshold: float,
    batch_norm: bool,
    weights_backbone: WeightsSource,
) -> DecoupledNet:
    if width_divisor < 1 or 64 % width_divisor:
        raise PixelwiseError(
            f"DecoupledNet width_divisor is {width_divisor}; use a divisor of 64 (1, 2, 4, 8, 16)."
        )
    stages = tuple(tuple(w // width_divisor for w in stage) for stage in VGG16_STAGES)
    model = DecoupledNet(
        num_classes,
        stages=stages,
        fc_channels=4096 // width_divisor,
        fc_kernel=fc_kernel,
        bridge_channels=2048 // width_divisor,
        input_size=input_size,
        threshold=threshold,
        batch_norm=batch_norm,
    )
    load_backbone(model.backbone, weights_backbone)
    return model


@register_model(
    "decouplednet", paper=PAPER, year=2015, input_size=(320, 320), num_classes=21, task="decoupled"
)
def decouplednet(
    *,
    num_classes: int = 21,
    width_divisor: int = 1,
    fc_kernel: int = 7,
    input_size: int = 320,
    threshold: float = 0.5,
    batch_norm: bool = False,
    weights_backbone: WeightsSource = None,
) -> DecoupledNet:
    """DecoupledNet of the authors' released model (VOC: 21 classes, 320x320).

    Args:
        num_classes: C, background included (VOC: 21).
        width_divisor: divide every channel count (1 = the paper; 8 for the shapes recipe).
        fc_kernel: kernel of the fc6-like layers (7 = the paper).
        input_size: square side the network runs at (320 = the release).
        threshold: detection probability above which a class is segmented (0.5 = the release).
        batch_norm: BN in the classifier's VGG convs (False = the paper; True trains from
            scratch far faster, as the shapes recipe does; ImageNet weights need False).
        weights_backbone: torchvision ``VGG16_Weights`` (its fc6/fc7 become the classifier's), a
            path to a saved ``vgg16`` state dict, the state dict, or None (random classifier).
    """
    return _build_decouplednet(
        num_classes=num_classes, width_divisor=width_divisor, fc_kernel=fc_kernel,
        input_size=input_size, threshold=threshold, batch_norm=batch_norm,
        weights_backbone=weights_backbone,
    )  # fmt: skip
