"""The backbones the papers share, each written once, and the one path that loads their weights.

- :class:`VGGBackbone`: VGG-style stages of 3x3 (or kxk) conv [+ BN] + ReLU, a 2x2/2 max pool after
  each, declared by one stage table (:data:`VGG16_STAGES`). Its parameters are laid out exactly as
  torchvision's ``vgg16().features`` / ``vgg16_bn().features``, so ImageNet weights load by name.
  FCN (plain VGG16, ``conv1_1`` padded by 100), SegNet (VGG16-BN with pooling indices; SegNet-Basic
  is the same class with its own 4-stage 7x7 table) and G-FRNet (VGG16-BN) are built on it.
- :class:`ResNetBackbone`: torchvision's ResNet-18/34/50/101/152 without ``avgpool``/``fc``, output
  stride 32, 16 or 8 (the strides of ``layer4``/``layer3`` replaced by dilation), optionally with
  PSPNet's deep stem (three 3x3 convs). LinkNet, PSPNet and RefineNet are built on it.

Each backbone declares the outputs a decoder asks for (``return_layers``) with their channels and
strides (``out_channels``, ``strides``), so decoders are written against the declaration.

Weights: :func:`load_backbone` takes a torchvision weights enum, its name
(``"VGG16_BN_Weights.IMAGENET1K_V1"``), a path to a state dict, a state dict, or None; converts the
publisher's layout with a named pure function; and loads strictly, naming the keys that differ.
Nothing downloads unless an enum (or its name) is passed; a failed download is one sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import WeightsEnum, resnet
from torchvision.models.resnet import BasicBlock, Bottleneck

from pixelwise.errors import PixelwiseError

WeightsSource = WeightsEnum | str | Path | Mapping[str, Tensor] | None
StateDict = Mapping[str, Tensor]

# -- weights -----------------------------------------------------------------------------------


def resolve_weights(source: WeightsSource) -> WeightsSource:
    """A string that names an existing file stays a path; ``"<Arch>_Weights.<NAME>"`` becomes the enum.

    Raises:
        PixelwiseError: the string is neither an existing file nor a torchvision weights name.
    """
    if not isinstance(source, str | Path):
        return source
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if isinstance(source, str) and "_Weights." in source:
        from torchvision.models import get_weight

        try:
            return get_weight(source)
        except (ValueError, KeyError, AttributeError):
            pass
    if isinstance(source, Path) or "/" in source or path.suffix in (".pt", ".pth", ".bin"):
        raise PixelwiseError(
            f"Backbone weights file {path} does not exist; fix the path, pass a torchvision "
            "weights name such as 'VGG16_Weights.IMAGENET1K_V1', or set model.weights_backbone "
            "to null."
        )
    raise PixelwiseError(
        f"Backbone weights {str(source)!r} are neither an existing file nor a torchvision weights "
        "name such as 'VGG16_Weights.IMAGENET1K_V1'; fix the path or the name, or set "
        "model.weights_backbone to null."
    )


def _download(weights: WeightsEnum) -> dict[str, Tensor]:
    """torchvision's download (or its cached copy); a failure is one sentence with the way out."""
    try:
        return dict(weights.get_state_dict(progress=True))
    except (OSError, RuntimeError, ValueError) as error:  # URLError is an OSError
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
        raise PixelwiseError(
            f"Could not download {describe_source(weights)} from {weights.url} ({error}); "
            f"torchvision looks for a cached copy at {cached}: put the file there, or pass a local "
            "state-dict file as model.weights_backbone=/path/to/weights.pth, or train from scratch "
            "with model.weights_backbone=null."
        ) from None


def load_backbone_state_dict(source: WeightsSource) -> dict[str, Tensor] | None:
    """Resolve ``source`` to a state dict in the publisher's layout (None stays None)."""
    source = resolve_weights(source)
    if source is None:
        return None
    if isinstance(source, WeightsEnum):
        return _download(source)
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a corrupt or unsafe file
        raise PixelwiseError(
            f"Backbone weights file {path} could not be read ({error}); save it with "
            "torch.save(model.state_dict(), path)."
        ) from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise PixelwiseError(f"Backbone weights file {path} holds no state dict.")
    return dict(state)


def describe_source(source: WeightsSource) -> str:
    """How a weights source is named in error messages."""
    if isinstance(source, WeightsEnum):
        return f"{type(source).__name__}.{source.name}"
    if isinstance(source, str | Path):
        return str(source)
    return "the given state dict"


def load_strict(module: nn.Module, state: StateDict, source: str) -> None:
    """``load_state_dict(strict=True)`` whose failure names the keys and shapes that differ."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if wrong:
            parts.append(
                "shape mismatch "
                + ", ".join(
                    f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:5]
                )
            )
        raise PixelwiseError(
            f"Weights from {source} do not fit {type(module).__name__}: {'; '.join(parts)}. "
            "Pass weights of the architecture this model expects."
        )
    module.load_state_dict(state, strict=True)


def load_backbone(
    module: nn.Module,
    source: WeightsSource,
    convert: Callable[[StateDict], StateDict] | None = None,
) -> None:
    """Load pretrained weights into ``module``: resolve ``source``, ``convert`` it, load strictly.

    Args:
        module: the backbone (or the part of a model) the converted keys belong to.
        source: a torchvision weights enum or its name, a state-dict file, a state dict, or None
            (nothing happens).
        convert: pure function from the publisher's layout to ``module``'s keys; default: the
            backbone's own :meth:`convert` when it has one, else the identity.
    """
    state = load_backbone_state_dict(source)
    if state is None:
        return
    if convert is None:
        convert = getattr(module, "convert", dict)
    load_strict(module, convert(state), describe_source(source))


def _fill_num_batches_tracked(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Files saved before PyTorch 0.4.1 lack BN's ``num_batches_tracked``; it becomes 0."""
    for key in list(state):
        if key.endswith(".running_mean"):
            tracked = key.removesuffix("running_mean") + "num_batches_tracked"
            state.setdefault(tracked, torch.tensor(0, dtype=torch.long))
    return state


# -- VGG -----------------------------------------------------------------------------------------

# Output widths of the convs of each VGG16 stage (conv1_1 .. conv5_3); one max pool ends each stage.
VGG16_STAGES: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)


class VGGBackbone(nn.Module):
    """VGG-style backbone: per stage, convs (+BN) + ReLU, then a 2x2/2 max pool.

    ``features`` is laid out as torchvision's ``vgg16(_bn)().features`` (conv, [BN], ReLU, ...,
    MaxPool), so its state dict has torchvision's keys. Outputs by name: ``"conv{s}"`` is stage s's
    last ReLU output (before its pool, stride 2^(s-1)), ``"pool{s}"`` the pooled map (stride 2^s).

    Args:
        stages: output widths of each stage's convs (default VGG16).
        batch_norm: BN after every conv (VGG16-BN). The convs keep their bias either way, as
            torchvision's and the Caffe models do.
        in_channels: input channels.
        kernel_size: conv kernel (3 for VGG; SegNet-Basic uses 7).
        first_padding: padding of the very first conv (FCN pads ``conv1_1`` by 100); default "same".
        ceil_mode: pooled sizes round up (Caffe's convention) so odd sizes unpool back exactly.
        return_layers: the outputs ``forward`` returns, in this order.
        dropout_after: stages (1-based) whose pooled output goes through ``Dropout(dropout)``
            (G-FRNet drops out after pool3, pool4 and pool5).
        dropout: the rate of those dropouts.
    """

    def __init__(
        self,
        *,
        stages: Sequence[Sequence[int]] = VGG16_STAGES,
        batch_norm: bool,
        in_channels: int = 3,
        kernel_size: int = 3,
        first_padding: int | None = None,
        ceil_mode: bool = True,
        return_layers: Sequence[str] = ("pool5",),
        dropout_after: Sequence[int] = (),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        self._stage_ranges: list[tuple[int, int]] = []  # features[start:end] = the stage's convs
        widths: list[int] = []
        for stage in stages:
            start = len(layers)
            for width in stage:
                padding = kernel_size // 2
                if not layers and first_padding is not None:
                    padding = first_padding
                layers.append(nn.Conv2d(in_channels, width, kernel_size, padding=padding))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                in_channels = width
            self._stage_ranges.append((start, len(layers)))
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=ceil_mode))
            widths.append(in_channels)
        self.features = nn.Sequential(*layers)
        self.ceil_mode = ceil_mode
        self.dropout_after = frozenset(dropout_after)
        self.dropout = nn.Dropout(dropout) if dropout_after else None
        self.batch_norm = batch_norm

        available = {f"conv{s + 1}": (w, 2**s) for s, w in enumerate(widths)}
        available |= {f"pool{s + 1}": (w, 2 ** (s + 1)) for s, w in enumerate(widths)}
        _check_names(return_layers, available, "VGGBackbone")
        self.return_layers = tuple(return_layers)
        self.out_channels = tuple(available[n][0] for n in self.return_layers)
        self.strides = tuple(available[n][1] for n in self.return_layers)

    @property
    def num_stages(self) -> int:
        return len(self._stage_ranges)

    def stage(self, index: int, x: Tensor) -> Tensor:
        """Run the convs of stage ``index`` (0-based), without its pool."""
        start, end = self._stage_ranges[index]
        for i in range(start, end):
            x = self.features[i](x)
        return x

    def _drop(self, index: int, x: Tensor) -> Tensor:
        return self.dropout(x) if index + 1 in self.dropout_after else x

    def forward(self, x: Tensor) -> list[Tensor]:
        wanted = set(self.return_layers)
        last = max(int(name[4:]) for name in wanted)
        found: dict[str, Tensor] = {}
        for s in range(last):
            x = self.stage(s, x)
            if f"conv{s + 1}" in wanted:
                found[f"conv{s + 1}"] = x
            x = self._drop(s, self.features[self._stage_ranges[s][1]](x))
            if f"pool{s + 1}" in wanted:
                found[f"pool{s + 1}"] = x
        return [found[name] for name in self.return_layers]

    def forward_with_indices(self, x: Tensor) -> tuple[Tensor, list[Tensor], list[torch.Size]]:
        """All stages; returns the last pooled map, each pool's argmax indices and pre-pool size.

        SegNet's decoder unpools with these (``max_unpool2d(..., output_size=size)`` restores an
        odd side exactly, which a ceil-mode pool alone would round up).
        """
        indices: list[Tensor] = []
        sizes: list[torch.Size] = []
        for s in range(self.num_stages):
            x = self.stage(s, x)
            sizes.append(x.shape[-2:])
            x, index = F.max_pool2d(x, 2, 2, ceil_mode=self.ceil_mode, return_indices=True)
            x = self._drop(s, x)
            indices.append(index)
        return x, indices, sizes

    def convert(self, state: StateDict) -> dict[str, Tensor]:
        """torchvision ``vgg16``/``vgg16_bn`` weights -> this backbone: ``features.*`` kept,
        ``classifier.*`` dropped. Pure."""
        return vgg_features_from_torchvision(state, batch_norm=self.batch_norm)


def vgg_features_from_torchvision(state: StateDict, *, batch_norm: bool) -> dict[str, Tensor]:
    """Keep torchvision VGG's ``features.*`` tensors (the classifier is ImageNet's).

    Raises:
        PixelwiseError: the file is VGG16 without BN where BN is needed, or the reverse.
    """
    has_bn = any(k.endswith("running_mean") for k in state)
    if has_bn != batch_norm:
        wanted, got = (
            ("vgg16_bn (VGG16_BN_Weights)", "without")
            if batch_norm
            else (
                "vgg16 (VGG16_Weights)",
                "with",
            )
        )
        raise PixelwiseError(
            f"These VGG16 weights are {got} BatchNorm; this network needs torchvision {wanted}."
        )
    features = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    return _fill_num_batches_tracked(features)


# -- ResNet --------------------------------------------------------------------------------------

_RESNETS: dict[int, tuple[Callable[..., resnet.ResNet], type[nn.Module]]] = {
    18: (resnet.resnet18, BasicBlock),
    34: (resnet.resnet34, BasicBlock),
    50: (resnet.resnet50, Bottleneck),
    101: (resnet.resnet101, Bottleneck),
    152: (resnet.resnet152, Bottleneck),
}
# Layers whose stride becomes dilation at each output stride, with their dilation.
_DILATIONS: dict[int, dict[str, int]] = {32: {}, 16: {"layer4": 2}, 8: {"layer3": 2, "layer4": 4}}
DEEP_STEM_WIDTHS = (64, 64, 128)


class ResNetBackbone(nn.Module):
    """torchvision's ResNet without ``avgpool``/``fc``; state-dict keys are torchvision's.

    Outputs by name: ``"stem"`` (after the max pool, stride 4), ``"layer1"`` .. ``"layer4"``
    (strides 4, 8, 16, 32 at output stride 32). Every stride-2 conv rounds up (padding 1): an
    H-pixel side becomes ceil(H/2).

    Args:
        depth: 18, 34, 50, 101 or 152.
        output_stride: 32, or 16 / 8 by replacing the stride of ``layer4`` / ``layer3`` and
            ``layer4`` with dilation 2 / 2 and 4. Every 3x3 conv of a dilated layer gets the
            dilation, the first block's included (as PSPNet's released nets; torchvision's
            ``replace_stride_with_dilation`` keeps the previous dilation in the first block).
            No weight changes shape.
        deep_stem: PSPNet's stem: 3x3/2 conv 64, 3x3 conv 64, 3x3 conv 128 (each BN + ReLU), then
            the max pool; ``layer1`` then takes 128 channels. Keys ``conv1..3``/``bn1..3`` as in
            the released ImageNet ResNets of PSPNet's PyTorch port (``resnet50_v2.pth``).
        return_layers: the outputs ``forward`` returns, in this order.
        caffe: compute the Caffe ResNets (PSPNet's released nets, ``conv3_1_1x1_reduce`` and
            ``conv3_1_1x1_proj`` with stride 2): a bottleneck's stride on its first 1x1 conv
            instead of its 3x3 (torchvision's "v1.5"), and the stem's max pool rounding up as
            Caffe's pooling does. The weights keep their shapes and keys.
    """

    def __init__(
        self,
        depth: int,
        *,
        output_stride: int = 32,
        deep_stem: bool = False,
        return_layers: Sequence[str] = ("layer1", "layer2", "layer3", "layer4"),
        caffe: bool = False,
    ) -> None:
        super().__init__()
        if depth not in _RESNETS:
            raise ValueError(f"ResNet depth must be one of {sorted(_RESNETS)}, got {depth}")
        if output_stride not in _DILATIONS:
            raise ValueError(f"output_stride must be 32, 16 or 8, got {output_stride}")
        build, block = _RESNETS[depth]
        net = build(weights=None)
        expansion = block.expansion
        self.depth, self.output_stride, self.deep_stem = depth, output_stride, deep_stem
        if deep_stem:
            a, b, c = DEEP_STEM_WIDTHS
            self.conv1, self.bn1 = nn.Conv2d(3, a, 3, 2, 1, bias=False), nn.BatchNorm2d(a)
            self.conv2, self.bn2 = nn.Conv2d(a, b, 3, 1, 1, bias=False), nn.BatchNorm2d(b)
            self.conv3, self.bn3 = nn.Conv2d(b, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c)
            _widen_first_block(net.layer1[0], c, block)
            stem_channels = c
        else:
            self.conv1, self.bn1 = net.conv1, net.bn1
            stem_channels = 64
        self.relu, self.maxpool = net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        for name, dilation in _DILATIONS[output_stride].items():
            _dilate(getattr(self, name), dilation)
        if caffe:
            self.maxpool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
            for layer in (self.layer2, self.layer3, self.layer4):
                _stride_in_1x1(layer[0])
        if deep_stem:
            for module in (self.conv1, self.bn1, self.conv2, self.bn2, self.conv3, self.bn3):
                _init_like_torchvision(module)
            _init_like_torchvision(self.layer1[0].conv1)
            _init_like_torchvision(self.layer1[0].downsample)

        strides = {"layer2": 8, "layer3": 16, "layer4": 32}
        for name in _DILATIONS[output_stride]:
            strides[name] = output_stride
        available = {
            "stem": (stem_channels, 4),
            "layer1": (64 * expansion, 4),
            "layer2": (128 * expansion, strides["layer2"]),
            "layer3": (256 * expansion, strides["layer3"]),
            "layer4": (512 * expansion, strides["layer4"]),
        }
        _check_names(return_layers, available, "ResNetBackbone")
        self.return_layers = tuple(return_layers)
        self.out_channels = tuple(available[n][0] for n in self.return_layers)
        self.strides = tuple(available[n][1] for n in self.return_layers)

    def stem(self, x: Tensor) -> Tensor:
        """The stem's convs, BN and ReLU (stride 2), before the max pool."""
        x = self.relu(self.bn1(self.conv1(x)))
        if self.deep_stem:
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        return x

    def forward(self, x: Tensor) -> list[Tensor]:
        wanted = set(self.return_layers)
        found: dict[str, Tensor] = {}
        x = self.maxpool(self.stem(x))
        found["stem"] = x
        order = ("layer1", "layer2", "layer3", "layer4")
        last = max((order.index(n) for n in wanted if n in order), default=-1)
        for name in order[: last + 1]:
            x = getattr(self, name)(x)
            found[name] = x
        return [found[name] for name in self.return_layers]

    def convert(self, state: StateDict) -> dict[str, Tensor]:
        """torchvision ``resnetN`` weights -> this backbone: the same keys without ``fc``. Pure."""
        return _fill_num_batches_tracked(
            {k: v for k, v in state.items() if not k.startswith("fc.")}
        )


def _dilate(layer: nn.Sequential, dilation: int) -> None:
    """Replace the layer's stride 2 by stride 1 and give every 3x3 conv ``dilation``."""
    for module in layer.modules():
        if isinstance(module, nn.Conv2d):
            if module.stride == (2, 2):
                module.stride = (1, 1)
            if module.kernel_size == (3, 3):
                module.dilation, module.padding = (dilation, dilation), (dilation, dilation)


def _stride_in_1x1(first: nn.Module) -> None:
    """Move a bottleneck's stride from its 3x3 conv to its first 1x1 conv (Caffe's ResNet)."""
    if isinstance(first, Bottleneck) and first.conv2.stride == (2, 2):
        first.conv2.stride, first.conv1.stride = (1, 1), (2, 2)


def _widen_first_block(first: nn.Module, in_channels: int, block: type[nn.Module]) -> None:
    """Make ``layer1``'s first block take the deep stem's wider output."""
    planes = first.conv1.out_channels
    if block is Bottleneck:
        first.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
    else:
        first.conv1 = nn.Conv2d(in_channels, planes, 3, 1, 1, bias=False)
    out = planes * block.expansion
    first.downsample = nn.Sequential(
        nn.Conv2d(in_channels, out, 1, bias=False), nn.BatchNorm2d(out)
    )


def _init_like_torchvision(model: nn.Module) -> None:
    """torchvision ResNet's init (He fan-out convs, BN 1/0) for the modules the deep stem adds."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _check_names(names: Sequence[str], available: Mapping[str, object], owner: str) -> None:
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise ValueError(
            f"{owner} has no output {unknown or names!r}; choose from {', '.join(available)}"
        )


def rename_keys_on_load(
    rename: Callable[[StateDict], StateDict],
) -> Callable[..., None]:
    """A ``load_state_dict`` pre-hook that passes the keys under the module's prefix through
    ``rename`` (a pure function, e.g. from a network's earlier layout to today's), so checkpoints
    written before a refactor still load. Keys already in today's layout must pass unchanged."""

    def hook(module, state_dict, prefix, *args) -> None:
        own = {
            k[len(prefix) :]: state_dict.pop(k) for k in list(state_dict) if k.startswith(prefix)
        }
        for key, value in rename(own).items():
            state_dict[prefix + key] = value

    return hook
