"""FC-DenseNet, "The One Hundred Layers Tiramisu" (Jégou, Drozdzal, Vazquez, Romero, Bengio).

Paper: *The One Hundred Layers Tiramisu: Fully Convolutional DenseNets for Semantic Segmentation*,
CVPR Workshops 2017, arXiv:1611.09326. Reference code followed: SimJeg/FC-DenseNet (Theano/Lasagne)
``FC-DenseNet.py``, ``layers.py`` and ``config/FC-DenseNet103.py``.

Topology (reference code): a 3x3 conv (48 maps, with bias) starts the "stack"; ``n_pool = 5``
dense blocks each followed by a transition down go down; a bottleneck dense block sits in the
middle; five transitions up, each followed by a dense block, come back; a 1x1 conv gives the
logits. A dense layer is BN-ReLU-Conv3x3(growth)-Dropout and its output is concatenated onto the
stack. A transition down is BN-ReLU-Conv1x1 (m -> m)-Dropout-MaxPool 2x2. A transition up is a
3x3 stride-2 transposed conv applied to the *new* maps of the block before it only
(``growth x n_layers`` channels, not the block's input), concatenated as ``[upsampled, skip]``.
Dense blocks of the upsampling path (and the bottleneck) therefore pass on only their new maps,
except the last one, whose full stack (its input and its new maps) feeds the 1x1 classifier.

Everything with learnable weights has a bias as in Lasagne (``Conv2DLayer``/``Deconv2DLayer``
default ``b``), weights are He-uniform (Lasagne's ``HeUniform(gain='relu')`` equals
``kaiming_uniform_(nonlinearity='relu')``, fan-in from the same weight axes for the transposed
conv), and BN uses Lasagne's ``epsilon=1e-4``. With 11 classes this gives 1,376,795 / 3,463,243 /
9,322,091 learnable parameters for FC-DenseNet56 / 67 / 103, the reference's counts less the BN
running statistics that Lasagne stores as parameters.

Deviations:
    * Batch norm: the paper uses the current batch statistics at training, validation *and* test
      time (``batch_norm_use_averages=False`` in the reference's ``train.py``). Here BN is ordinary
      PyTorch BN: batch statistics in ``train()``, running averages in ``eval()``, so that
      evaluation is deterministic and independent of the batch. To reproduce the paper's test
      protocol, evaluate with only the ``BatchNorm2d`` modules switched to ``train()``.
    * Odd sizes: Lasagne centre-crops the transposed conv's output to the skip's size. With floor
      pooling the output ``2 * floor(s / 2) + 1`` is ``s`` or ``s + 1``, so the centre crop starts
      at offset 0 and equals our top-left crop: identical for every size, and the logits always
      have the input's size (inputs must be at least 32x32 for five 2x2 poolings).
    * ``memory_efficient=True`` (not in the reference) recomputes each dense layer's
      concatenation, BN and ReLU in the backward pass (Pleiss et al. 2017, "Memory-Efficient
      Implementation of DenseNets", arXiv:1707.06990) with ``torch.utils.checkpoint``; outputs,
      gradients and BN running statistics are the same as without it.
    * The reference ends in a softmax; we return logits (the loss applies log-softmax).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pixelwise.errors import PixelwiseError
from pixelwise.models.registry import register_model

#: Lasagne's ``BatchNormLayer`` default epsilon, used throughout the reference network.
_BN_EPS = 1e-4


@contextmanager
def _frozen_running_stats(norm: nn.BatchNorm2d) -> Iterator[None]:
    """Let ``norm`` normalise exactly as before but leave its running statistics where they are.

    The checkpointed recomputation in backward runs BN a second time on the same batch; without
    this the running mean/var would take two momentum steps per training step instead of one.
    BN must still be called with its buffers (the recomputation has to save the same tensors as
    the original forward, or checkpoint refuses it), so the update is made a no-op instead:
    momentum 0 keeps ``running = 1 * running + 0 * batch`` exact, and the count that BN adds one
    to is put back.
    """
    momentum, count = norm.momentum, norm.num_batches_tracked.clone()
    norm.momentum = 0.0
    try:
        yield
    finally:
        norm.momentum = momentum
        norm.num_batches_tracked.copy_(count)


class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3-Dropout over the concatenation of all earlier maps; returns ``growth`` maps.

    Args:
        in_channels: channels of the concatenated inputs.
        growth_rate: maps this layer adds (k in the paper).
        dropout: dropout probability after the conv (0.2 in the paper).
        memory_efficient: recompute the concatenation, BN and ReLU in backward instead of storing
            them, which turns the block's quadratic activation memory into linear.
    """

    def __init__(
        self, in_channels: int, growth_rate: int, *, dropout: float, memory_efficient: bool
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels, eps=_BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, growth_rate, 3, padding=1, bias=True)
        self.drop = nn.Dropout(dropout)
        self.memory_efficient = memory_efficient

    def _bn_relu_conv(self, *features: Tensor) -> Tensor:
        return self.conv(self.relu(self.norm(torch.cat(features, dim=1))))

    def _checkpoint_contexts(self) -> tuple[AbstractContextManager, AbstractContextManager]:
        # (context of the original forward, context of the recomputation in backward)
        return nullcontext(), _frozen_running_stats(self.norm)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        if self.memory_efficient and torch.is_grad_enabled():
            # Only the layer's inputs (already kept by earlier layers) and its conv output are
            # saved; the concatenation and the BN/ReLU output are recomputed in backward.
            # Dropout stays outside so that its mask is drawn once, exactly as without it.
            out = checkpoint(
                self._bn_relu_conv,
                *features,
                use_reentrant=False,
                context_fn=self._checkpoint_contexts,
            )
        else:
            out = self._bn_relu_conv(*features)
        return self.drop(out)


class DenseBlock(nn.Module):
    """``n_layers`` dense layers, each seeing the block's input and every earlier layer's maps.

    Args:
        in_channels: channels of the block's input.
        growth_rate: maps each layer adds.
        n_layers: number of dense layers.
        keep_input: return ``[input, new maps]`` concatenated (downsampling path and the last
            block), or only the ``growth_rate * n_layers`` new maps (bottleneck and upsampling
            path, whose output is what the next transition up upsamples).
        dropout: dropout probability of each layer.
        memory_efficient: see :class:`DenseLayer`.
    """

    def __init__(
        self,
        in_channels: int,
        growth_rate: int,
        n_layers: int,
        *,
        keep_input: bool,
        dropout: float,
        memory_efficient: bool,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DenseLayer(
                in_channels + i * growth_rate,
                growth_rate,
                dropout=dropout,
                memory_efficient=memory_efficient,
            )
            for i in range(n_layers)
        )
        self.keep_input = keep_input
        self.new_channels = growth_rate * n_layers
        self.out_channels = self.new_channels + (in_channels if keep_input else 0)

    def forward(self, x: Tensor) -> Tensor:
        # A list instead of a growing tensor: each layer concatenates what it needs once, so the
        # stack itself is never copied layer after layer.
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features if self.keep_input else features[1:], dim=1)


class TransitionDown(nn.Sequential):
    """BN-ReLU-Conv1x1 (channels kept)-Dropout-MaxPool 2x2, halving the resolution (floor)."""

    def __init__(self, channels: int, *, dropout: float) -> None:
        super().__init__(
            nn.BatchNorm2d(channels, eps=_BN_EPS),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=True),
            nn.Dropout(dropout),
            nn.MaxPool2d(2),
        )


class TransitionUp(nn.Module):
    """3x3 stride-2 transposed conv (channels kept), cropped to the skip, then ``[up, skip]``.

    Args:
        channels: the previous block's new maps (``growth x n_layers``), in and out.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(channels, channels, 3, stride=2, bias=True)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        up = self.upsample(x)
        # The skip of size s was pooled to floor(s/2), which comes back as 2*floor(s/2)+1, i.e.
        # s (odd s) or s+1 (even s): never smaller, so a crop suffices. Lasagne's centre crop of
        # an excess of 0 or 1 starts at offset 0, which is this top-left crop.
        up = up[..., : skip.shape[-2], : skip.shape[-1]]
        return torch.cat([up, skip], dim=1)


class FCDenseNet(nn.Module):
    """Fully convolutional DenseNet: logits ``N x num_classes x H x W`` for ``N x 3 x H x W``.

    Args:
        num_classes: output channels of the final 1x1 conv.
        growth_rate: maps each dense layer adds (k).
        layers_per_block: layers of the ``2 * n_pool + 1`` dense blocks, downsampling path first,
            then the bottleneck, then the upsampling path.
        first_channels: maps of the first 3x3 conv (48).
        dropout: dropout probability after every conv except the first and the classifier.
        memory_efficient: checkpoint the dense layers' BN-ReLU-Conv (see :class:`DenseLayer`).
        in_channels: input image channels.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        growth_rate: int,
        layers_per_block: Sequence[int],
        first_channels: int = 48,
        dropout: float = 0.2,
        memory_efficient: bool = False,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(layers_per_block) % 2 != 1:
            raise ValueError(
                f"layers_per_block needs 2 * n_pool + 1 entries, got {len(layers_per_block)}"
            )
        n_pool = len(layers_per_block) // 2
        self.n_pool = n_pool
        block = {"dropout": dropout, "memory_efficient": memory_efficient}

        self.first_conv = nn.Conv2d(in_channels, first_channels, 3, padding=1, bias=True)
        channels = first_channels
        self.down_blocks = nn.ModuleList()
        self.transitions_down = nn.ModuleList()
        skip_channels = []
        for n_layers in layers_per_block[:n_pool]:
            dense = DenseBlock(channels, growth_rate, n_layers, keep_input=True, **block)
            channels = dense.out_channels
            skip_channels.append(channels)
            self.down_blocks.append(dense)
            self.transitions_down.append(TransitionDown(channels, dropout=dropout))

        self.bottleneck = DenseBlock(
            channels, growth_rate, layers_per_block[n_pool], keep_input=False, **block
        )
        upsampled = self.bottleneck.out_channels

        self.transitions_up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i, n_layers in enumerate(layers_per_block[n_pool + 1 :]):
            self.transitions_up.append(TransitionUp(upsampled))
            channels = upsampled + skip_channels[-1 - i]
            last = i == n_pool - 1
            dense = DenseBlock(channels, growth_rate, n_layers, keep_input=last, **block)
            self.up_blocks.append(dense)
            upsampled = dense.out_channels

        self.classifier = nn.Conv2d(upsampled, num_classes, 1, bias=True)
        self._init_weights()

    def _init_weights(self) -> None:
        # Lasagne's HeUniform(gain='relu') on every conv and transposed conv, zero biases; BN
        # starts at gamma 1, beta 0 as in PyTorch.
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def _check_size(self, x: Tensor) -> None:
        smallest = 2**self.n_pool
        h, w = x.shape[-2:]
        if h < smallest or w < smallest:
            raise PixelwiseError(
                f"FC-DenseNet got a {h}x{w} input, but its {self.n_pool} 2x2 poolings need at "
                f"least {smallest}x{smallest}; resize or pad the image to at least that size."
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_size(x)
        x = self.first_conv(x)
        skips = []
        for dense, down in zip(self.down_blocks, self.transitions_down, strict=True):
            x = dense(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, dense in zip(self.transitions_up, self.up_blocks, strict=True):
            x = dense(up(x, skips.pop()))
        return self.classifier(x)


def _build_fcdensenet(
    *,
    num_classes: int,
    growth_rate: int,
    layers_per_block: Sequence[int],
    dropout: float,
    memory_efficient: bool,
) -> FCDenseNet:
    return FCDenseNet(
        num_classes=num_classes,
        growth_rate=growth_rate,
        layers_per_block=layers_per_block,
        dropout=dropout,
        memory_efficient=memory_efficient,
    )


_PAPER = "Jégou et al., The One Hundred Layers Tiramisu: FC-DenseNets (arXiv:1611.09326)"
_META = {"paper": _PAPER, "year": 2017, "input_size": (360, 480), "num_classes": 11}


@register_model("fcdensenet56", **_META)
def fcdensenet56(
    *, num_classes: int, dropout: float = 0.2, memory_efficient: bool = False
) -> FCDenseNet:
    """FC-DenseNet56: growth 12, 4 layers in each of the 11 dense blocks."""
    return _build_fcdensenet(
        num_classes=num_classes,
        growth_rate=12,
        layers_per_block=[4] * 11,
        dropout=dropout,
        memory_efficient=memory_efficient,
    )


@register_model("fcdensenet67", **_META)
def fcdensenet67(
    *, num_classes: int, dropout: float = 0.2, memory_efficient: bool = False
) -> FCDenseNet:
    """FC-DenseNet67: growth 16, 5 layers in each of the 11 dense blocks."""
    return _build_fcdensenet(
        num_classes=num_classes,
        growth_rate=16,
        layers_per_block=[5] * 11,
        dropout=dropout,
        memory_efficient=memory_efficient,
    )


@register_model("fcdensenet103", **_META)
def fcdensenet103(
    *, num_classes: int, dropout: float = 0.2, memory_efficient: bool = False
) -> FCDenseNet:
    """FC-DenseNet103: growth 16, blocks of 4, 5, 7, 10, 12 | 15 | 12, 10, 7, 5, 4 layers."""
    return _build_fcdensenet(
        num_classes=num_classes,
        growth_rate=16,
        layers_per_block=[4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4],
        dropout=dropout,
        memory_efficient=memory_efficient,
    )
