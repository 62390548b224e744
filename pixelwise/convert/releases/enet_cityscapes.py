"""ENet on Cityscapes, e-Lab's torch7 release ``model-cityscapes.net`` (e-lab/ENet-training).

The file is the whole trained network (encoder.lua's encoder without its classifier, then
decoder.lua's decoder) as an ``nn.Sequential`` tree, saved with ``torch.save``. Depth first, its
weighted modules run in the order of :class:`pixelwise.models.enet.ENet`'s registration: initial
conv, BN, PReLU; each bottleneck's main branch (ConcatTable's first entry) then its skip branch
(the decoder's 1x1 conv + BN before the unpooling), then the PReLU/ReLU after the sum; the final
2x2/2 SpatialFullConvolution. Two things the mapping does besides copying:

- torch7's ``nn.SpatialDropout`` multiplies by ``1 - p`` at test time (0.99 for the first five
  bottlenecks, 0.9 after) where PyTorch's dropout is the identity, so that factor is folded into
  the batch norm before it (gamma and beta times ``1 - p``): the same function in evaluation.
- The release has 20 outputs: ``Unlabeled`` first (loadCityscape.lua's class list, trained with
  weight 0), then the 19 Cityscapes train classes in trainId order. The first is dropped, so the
  checkpoint scores the 19 classes pixelwise's ``cityscapes`` dataset has.

The release pools in floor mode; pixelwise's ENet rounds up instead, which is the same computation
for inputs divisible by 8 (1024x512 and 512x256 are).
"""

from pixelwise.convert.release import Figure, InputConvention, Release
from pixelwise.convert.torch7 import (
    Torch7File,
    layers_with_weights,
    state_from_layers,
    weighted_modules,
)

# loadCityscape.lua: image.load (RGB in [0, 1]), image.scale to the training size, no mean or std
# (the "verify statistics" step only prints them).
ENET_INPUT = InputConvention(channels="rgb", scale=1.0, mean=(0.0, 0.0, 0.0))


def enet_state(parsed: Torch7File, model) -> dict:
    """The release's module tree -> :class:`~pixelwise.models.enet.ENet`'s state dict."""
    layers = layers_with_weights(parsed.root, parsed.path)
    return state_from_layers(
        layers,
        weighted_modules(model),
        parsed.path,
        keep_outputs={"fullconv": slice(1, None)},  # drop "Unlabeled"
    )


RELEASE = Release(
    name="enet-cityscapes",
    model="enet",
    model_options={},
    num_classes=19,
    dataset="cityscapes",
    format="t7",
    to_state_dict=enet_state,
    input=ENET_INPUT,
    file_name="model-cityscapes.net",
    url=None,
    sha256=None,
    size=None,
    licence="CC BY-NC 4.0 (personal and research use only; e-lab/ENet-training LICENSE)",
    where=(
        "e-Lab shares model-cityscapes.net in the Dropbox folder "
        "https://www.dropbox.com/sh/dywzk3gyb12hpe5/AAD5YkUa8XgMpHs2gCRgmCVCa (named in "
        "e-lab/ENet-training issue 58); download it there and pass its path as --weights."
    ),
    figures=(Figure("paper", "mIoU", 58.3, "Cityscapes", "test", "1024x512", "single-scale"),),
    input_size=(512, 1024),
)
