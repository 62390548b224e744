"""LinkNet on Cityscapes, e-Lab's torch7 release ``model-cs-IoU.net`` (e-lab/LinkNet, release v1.0).

models/model.lua nests the network: the ResNet-18 stem (fb.resnet.torch's conv1, BN, ReLU, max
pool), then ``bypass2dec`` blocks, each ``ConcatTable(Sequential(layer k, deeper bypass, decoder
k), Identity) -> CAddTable -> ReLU``. Depth first its weighted modules therefore run: stem,
layer1..layer4 (each basic block's conv-BN-conv-BN before its 1x1 shortcut conv-BN, as
torchvision's ``BasicBlock`` registers them), decoder 4, 3, 2, 1 (conv, BN, full conv, BN, conv,
BN each), then the head (full conv, BN, conv, BN, full conv). The mapping zips that order with
:class:`pixelwise.models.linknet.LinkNet` by name.

fb.resnet.torch drops the convolution biases of its ResNets (they are nil, or zero with an old
cuDNN); a non-zero one would have no place in torchvision's ResNet and is refused.

The release has 20 outputs, ``Unlabeled`` first (data/loadCityscapes.lua), trained as a class of
its own (model.lua leaves ``classWeights[1] = 0`` commented out); the checkpoint keeps the other
19, in trainId order, so a pixel the release would call Unlabeled gets its best real class.
"""

from torch import nn

from pixelwise.convert.release import Figure, InputConvention, Release
from pixelwise.convert.torch7 import (
    Torch7File,
    layers_with_weights,
    state_from_layers,
    weighted_modules,
)

# data/loadCityscapes.lua: image.load (RGB in [0, 1]) scaled to 1024x512, minus the training
# set's per-channel mean, which the release saved to stat.t7 but does not publish. These are the
# Cityscapes train-set channel means in [0, 1] as PyTorch ports compute them; no std.
LINKNET_INPUT = InputConvention(
    channels="rgb", scale=1.0, mean=(0.28689529, 0.32513294, 0.28389176)
)


def linknet_targets(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Our weighted modules in the order model.lua's tree runs them (decoders deepest first)."""
    targets = weighted_modules(model.encoder, "encoder.")
    for k in reversed(range(len(model.decoder))):
        targets += weighted_modules(model.decoder[k], f"decoder.{k}.")
    for name in ("head_up", "head_bn", "head_conv", "classifier"):
        targets += weighted_modules(getattr(model, name), f"{name}.")
    return targets


def linknet_state(parsed: Torch7File, model: nn.Module) -> dict:
    """The release's module tree -> :class:`~pixelwise.models.linknet.LinkNet`'s state dict."""
    layers = layers_with_weights(parsed.root, parsed.path)
    return state_from_layers(
        layers,
        linknet_targets(model),
        parsed.path,
        keep_outputs={"classifier": slice(1, None)},  # drop "Unlabeled"
    )


RELEASE = Release(
    name="linknet-cityscapes",
    model="linknet",
    model_options={},
    num_classes=19,
    dataset="cityscapes",
    format="t7",
    to_state_dict=linknet_state,
    input=LINKNET_INPUT,
    file_name="model-cs-IoU.net",
    url=None,
    sha256=None,
    size=None,
    licence="CC BY-NC 4.0 (personal and research use only; e-lab/LinkNet README)",
    where=(
        "e-Lab publishes model-cs-IoU.net on the v1.0 release page of e-lab/LinkNet "
        "(https://github.com/e-lab/LinkNet/releases/tag/v1.0); download it there and pass its "
        "path as --weights."
    ),
    figures=(
        Figure("paper", "mIoU", 76.4, "Cityscapes", "test", "1024x512", "single-scale"),
        Figure("release", "mIoU", 58.60, "Cityscapes", "val", "1024x512", "single-scale"),
    ),
    input_size=(512, 1024),
)
