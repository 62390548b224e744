"""RefineNet (4-cascaded) on a plain ResNet-50/101/152.

Paper: Lin, Milan, Shen, Reid, "RefineNet: Multi-Path Refinement Networks for High-Resolution
Semantic Segmentation", CVPR 2017, arXiv:1611.06612.

The parameter count follows the widely used PyTorch port of the released VOC model,
DrSleep/refinenet-pytorch ``models/resnet.py`` and ``utils/layer_factory.py`` (``rf101``: 118.05M
parameters at 21 classes), whose layer widths are those of the authors' MatConvNet code
(guosheng/refinenet ``main/gen_net_opts_model_type1.m``: adapted widths 512, 256, 256, 256;
``adapt_conv_num=2``, ``refine_block_conv_num_mainflow=3``, chained pools of size 5):

- Backbone: torchvision's ResNet, undilated (output stride 32); ``layer1``..``layer4`` (res2..res5,
  strides 4, 8, 16, 32) feed RefineNet-1..4.
- RefineNet-4 takes res5 alone; RefineNet-k (k = 3, 2, 1) takes res(k+1) and RefineNet-(k+1)'s
  output. Each input path: 3x3 dimension reduction (2048 -> 512 for res5, -> 256 for the others),
  then two residual conv units (RCU: ReLU, 3x3, ReLU, 3x3, plus the identity).
- Multi-resolution fusion (two inputs only): one 3x3 conv per path to the block's width, the
  coarser path bilinearly upsampled to the finer path's exact size, the two SUMMED.
- ReLU, then chained residual pooling: a chain of 4 blocks of [5x5 stride-1 max pool, 3x3 conv],
  each block fed by the previous one and each block's output added to the running sum.
- Output: three RCUs. After RefineNet-1 (stride 4, 256 channels): dropout 0.5, a 3x3 conv to the
  classes (the only conv with a bias besides each RCU's first), then bilinear up to the input.
- Dropout 0.5 on res5 and res4 before their dimension reductions, as the port.

Biases as the port: every 3x3 conv is bias-free except the first conv of each RCU and the
classifier. Initialisation: PyTorch's defaults for the refinement layers, as the port.

Where this departs from the port and the paper:

- The port places the coarser path's fusion conv (``mflow_conv_g{k}_b3_joint_varout_dimred``) at
  the end of RefineNet-(k+1), before the upsampling; here it belongs to the fusion of RefineNet-k,
  as in the paper's figure. Both apply the same conv at the same place in the graph, so the count
  and the function are the same.
- Chained residual pooling pools then convolves (the paper's text and the port); the authors'
  released MatConvNet code has an "improved version" that convolves before pooling
  (``gen_network_pool_block.m``, ``do_gen_block_convbeforepool``) and trains with 2 blocks
  (``chained_pool_num=2``); the port, whose count we follow, has 4.
- Upsampling uses ``align_corners=False`` everywhere (pixelwise's convention); the port uses True.
- The port returns logits at stride 4 and MatConvNet computes the loss there (labels resized by
  nearest neighbour); here the logits are bilinearly upsampled to the input size.
- Any input size works: every fusion upsamples to the finer path's exact size (a 97x131 input has a
  4x5 res5 and a 7x9 res4), and the logits to the input's.

Frozen BatchNorm (``freeze_bn``). The released training code normalises with the ImageNet
statistics during training and never updates them (``gen_net_opts_model_type1.m``:
``bnorm_moment_type_trn='global'``; ``My_net_util.fix_batch_norm_resnet`` sets each BN's moments
to ``trainMethod='fixed'``). ``freeze_bn="stats"`` does the same here: every BatchNorm of the
network stays in eval mode when ``train()`` is called. ``freeze_bn="all"`` (or ``True``) also
stops their scale and shift (``requires_grad=False``, so no optimizer sees them). The released
code keeps updating the scale and shift (their ``trainMethod`` stays ``'gradient'``, at the
backbone's learning-rate multiplier).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.errors import PixelwiseError
from pixelwise.models.backbones import (
    ResNetBackbone,
    WeightsSource,
    load_backbone,
    rename_keys_on_load,
)
from pixelwise.models.registry import register_model

__all__ = [
    "ChainedResidualPooling",
    "RefineNet",
    "RefineNetBlock",
    "ResidualConvUnit",
    "refinenet101",
    "refinenet152",
    "refinenet50",
]

PAPER = (
    "Lin, Milan, Shen, Reid, RefineNet: Multi-Path Refinement Networks for High-Resolution "
    "Semantic Segmentation (arXiv:1611.06612)"
)
# Width of RefineNet-4 .. RefineNet-1 (MatConvNet's input_adapt_dims, the port's dimreds).
WIDTHS: tuple[int, ...] = (512, 256, 256, 256)
ADAPT_RCUS = 2  # RCUs on each input path (adapt_conv_num)
OUTPUT_RCUS = 3  # RCUs after the chained pooling (refine_block_conv_num_mainflow)
CRP_BLOCKS = 4  # pool+conv blocks of the chained residual pooling (the port's _make_crp(..., 4))
POOL_SIZE = 5
DROPOUT = 0.5
FreezeBN = Literal["none", "stats", "all"]
FREEZE_BN: tuple[str, ...] = ("none", "stats", "all")


def legacy_refinenet_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys of RefineNet checkpoints written before the backbone was named so -> today's.

    ``encoder.*`` -> ``backbone.*``; other keys pass unchanged. Pure.
    """
    return {
        "backbone." + key.removeprefix("encoder.") if key.startswith("encoder.") else key: value
        for key, value in state.items()
    }


def _conv3x3(in_channels: int, out_channels: int, *, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)


class ResidualConvUnit(nn.Module):
    """ReLU, 3x3 conv (with bias), ReLU, 3x3 conv (without bias), plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(channels, channels, bias=True)
        self.conv2 = _conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        # The first ReLU must not act in place: x is also the identity path.
        y = self.conv1(F.relu(x))
        y = self.conv2(F.relu(y, inplace=True))
        return x + y


class ChainedResidualPooling(nn.Module):
    """``x + b1(x) + b2(b1(x)) + ...`` with each block ``b = conv3x3(maxpool5x5/1(.))``.

    Each block takes the previous block's output (not the running sum), and every block's output
    is added to the sum. The input is expected after a ReLU (the caller's).
    """

    def __init__(self, channels: int, num_blocks: int = CRP_BLOCKS) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(POOL_SIZE, stride=1, padding=POOL_SIZE // 2)
        self.convs = nn.ModuleList(_conv3x3(channels, channels) for _ in range(num_blocks))

    def forward(self, x: Tensor) -> Tensor:
        total, path = x, x
        for conv in self.convs:
            path = conv(self.pool(path))
            total = total + path
        return total


class RefineNetBlock(nn.Module):
    """One RefineNet: adapt the backbone feature, fuse with the coarser path, pool, refine.

    Args:
        in_channels: channels of the backbone feature this block takes.
        width: the block's feature width (512 for RefineNet-4, 256 for the others).
        coarse_channels: channels of the coarser RefineNet's output, or None for RefineNet-4
            (one input: no fusion convs).
    """

    def __init__(self, in_channels: int, width: int, coarse_channels: int | None = None) -> None:
        super().__init__()
        self.reduce = _conv3x3(in_channels, width)
        self.adapt = nn.Sequential(*(ResidualConvUnit(width) for _ in range(ADAPT_RCUS)))
        if coarse_channels is None:
            self.fuse_fine = self.fuse_coarse = None
        else:
            self.fuse_fine = _conv3x3(width, width)
            self.fuse_coarse = _conv3x3(coarse_channels, width)
        self.crp = ChainedResidualPooling(width)
        self.output = nn.Sequential(*(ResidualConvUnit(width) for _ in range(OUTPUT_RCUS)))

    def fuse(self, fine: Tensor, coarse: Tensor | None) -> Tensor:
        """Multi-resolution fusion: a 3x3 conv per path, the coarser upsampled, the two summed."""
        if coarse is None:
            return fine
        fine = self.fuse_fine(fine)
        coarse = F.interpolate(
            self.fuse_coarse(coarse), size=fine.shape[-2:], mode="bilinear", align_corners=False
        )
        return fine + coarse

    def forward(self, feature: Tensor, coarse: Tensor | None = None) -> Tensor:
        x = self.fuse(self.adapt(self.reduce(feature)), coarse)
        x = self.crp(F.relu(x))
        return self.output(x)


class RefineNet(nn.Module):
    """4-cascaded RefineNet; logits N x C x H x W for any input N x 3 x H x W.

    Attributes:
        backbone: ``ResNetBackbone(depth)`` at output stride 32 (torchvision keys without ``fc``),
            returning ``layer1``..``layer4``.
        refine: RefineNet-4, -3, -2, -1 in the order they run (``refine[0]`` takes res5).
        dropout: the port's Dropout(0.5) on res5, res4 and before the classifier.
        classifier: 3x3 conv 256 -> C with bias, at stride 4.
        freeze_bn: ``"none"``, ``"stats"`` (every BatchNorm stays in eval mode through
            ``train()``) or ``"all"`` (also its scale and shift frozen); see the module docstring.
    """

    def __init__(self, *, depth: int, num_classes: int, freeze_bn: FreezeBN = "none") -> None:
        super().__init__()
        if freeze_bn not in FREEZE_BN:
            raise PixelwiseError(
                f"RefineNet freeze_bn {freeze_bn!r} is not supported; use one of: "
                f"{', '.join(FREEZE_BN)} (true means all, false none)."
            )
        self.freeze_bn = freeze_bn
        self.backbone = ResNetBackbone(
            depth, return_layers=("layer1", "layer2", "layer3", "layer4")
        )
        # Checkpoints written before the rename name the backbone ``encoder``.
        self.register_load_state_dict_pre_hook(rename_keys_on_load(legacy_refinenet_keys))
        blocks: list[RefineNetBlock] = []
        coarse: int | None = None
        for in_channels, width in zip(reversed(self.backbone.out_channels), WIDTHS, strict=True):
            blocks.append(RefineNetBlock(in_channels, width, coarse))
            coarse = width
        self.refine = nn.ModuleList(blocks)
        self.dropout = nn.Dropout(DROPOUT)
        self.classifier = _conv3x3(WIDTHS[-1], num_classes, bias=True)
        if freeze_bn == "all":
            for norm in self._norms():
                norm.requires_grad_(False)

    def _norms(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True) -> RefineNet:
        """As ``nn.Module.train``, except that with ``freeze_bn`` every BatchNorm stays in eval
        mode: its running statistics are neither used for nor updated by training batches."""
        super().train(mode)
        if self.freeze_bn != "none":
            for norm in self._norms():
                norm.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        res2, res3, res4, res5 = self.backbone(x)
        features = (self.dropout(res5), self.dropout(res4), res3, res2)
        y: Tensor | None = None
        for block, feature in zip(self.refine, features, strict=True):
            y = block(feature, y)
        logits = self.classifier(self.dropout(y))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


_REGISTRY = {"paper": PAPER, "year": 2017, "input_size": (512, 512), "num_classes": 21}


def _register_refinenet(depth: int, summary: str) -> Callable[..., RefineNet]:
    """Register ``refinenet{depth}``: RefineNet on torchvision's ResNet-``depth``."""
    name = f"refinenet{depth}"

    def build(
        *,
        num_classes: int,
        weights_backbone: WeightsSource = None,
        freeze_bn: FreezeBN | bool = "none",
    ) -> RefineNet:
        if isinstance(freeze_bn, bool):
            freeze_bn = "all" if freeze_bn else "none"
        model = RefineNet(depth=depth, num_classes=num_classes, freeze_bn=freeze_bn)
        load_backbone(model.backbone, weights_backbone)
        return model

    # Named as the module attribute it is bound to, so it pickles and reads like a def.
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"""{summary}

    Args:
        num_classes: output classes (VOC: 21).
        weights_backbone: torchvision ``ResNet{depth}_Weights``, a path to a saved ``resnet{depth}``
            state dict, the state dict itself, or None (random backbone). ``fc`` is dropped.
        freeze_bn: ``"none"``, ``"stats"`` (BatchNorm on its running statistics through
            training, as the released code) or ``"all"`` (scale and shift frozen too); ``True``
            is ``"all"``, ``False`` ``"none"``.
    """
    return register_model(name, **_REGISTRY)(build)


refinenet50 = _register_refinenet(
    50, "RefineNet on ResNet-50 (the MatConvNet training demo's default backbone)."
)
refinenet101 = _register_refinenet(
    101, "RefineNet on ResNet-101, the released VOC model (118.05M parameters at 21 classes)."
)
refinenet152 = _register_refinenet(152, "RefineNet on ResNet-152 (the paper's deepest backbone).")
