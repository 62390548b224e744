"""What the FCN Caffe releases share (shelhamer/fcn.berkeleyvision.org ``voc-fcn{32,16,8}s/``,
``nyud-fcn32s-color/``): their layer names, which pixelwise's FCN keeps (``score_fr``,
``upscore2`` ...), VGG16's ``conv1_1``..``conv5_3`` in ``backbone.vgg.features``, and ``fc6``/``fc7``
already convolutional. Every Convolution has a bias; the Deconvolutions have none and their
weight is Caffe's (in, out / groups, kh, kw), which is ConvTranspose2d's layout. The input is BGR
0-255 minus a mean (``infer.py``), so ``conv1_1`` is read with its input channels reversed.
"""

from __future__ import annotations

from pixelwise.convert.caffe import CaffeNet, LayerMap, state_from_table
from pixelwise.convert.release import InputConvention
from pixelwise.models.fcn import caffe_conv_names

# voc-fcn*/infer.py: BGR minus mean_bgr (104.00698793, 116.66876762, 122.67891434), no scaling.
FCN_VOC_INPUT = InputConvention(
    channels="bgr", scale=255.0, mean=(104.00698793, 116.66876762, 122.67891434)
)
# shelhamer/fcn.berkeleyvision.org publishes every model under the same terms.
FCN_LICENCE = "BSD-2 (the repository's README: Caffe's licence; unrestricted use)"

# FCN variant -> its head: (Caffe layer, kind) in the nets' order; the module is the same name.
HEADS: dict[str, tuple[tuple[str, str], ...]] = {
    "fcn32s": (("score_fr", "conv"), ("upscore", "deconv")),
    "fcn16s": (
        ("score_fr", "conv"), ("upscore2", "deconv"), ("score_pool4", "conv"),
        ("upscore16", "deconv"),
    ),
    "fcn8s": (
        ("score_fr", "conv"), ("upscore2", "deconv"), ("score_pool4", "conv"),
        ("upscore_pool4", "deconv"), ("score_pool3", "conv"), ("upscore8", "deconv"),
    ),
}  # fmt: skip


def fcn_table(variant: str) -> list[LayerMap]:
    """The release's layers and the ``fcn{32,16,8}s`` modules they fill."""
    # VGGBackbone(batch_norm=False).features: conv, ReLU per conv and one pool per stage.
    indices, index = [], 0
    for stage_size in (2, 2, 3, 3, 3):
        for _ in range(stage_size):
            indices.append(index)
            index += 2
        index += 1
    table = [
        LayerMap(name, "conv", f"backbone.vgg.features.{i}", bias=True, reverse_input=i == 0)
        for name, i in zip(caffe_conv_names(), indices, strict=True)
    ]
    table += [LayerMap(f"fc{n}", "conv", f"backbone.fc{n}", bias=True) for n in (6, 7)]
    table += [LayerMap(name, kind, name, bias=kind == "conv") for name, kind in HEADS[variant]]
    return table


def fcn32s_state(net: CaffeNet, model: object) -> dict:
    return state_from_table(net, fcn_table("fcn32s"))


def fcn16s_state(net: CaffeNet, model: object) -> dict:
    return state_from_table(net, fcn_table("fcn16s"))


def fcn8s_state(net: CaffeNet, model: object) -> dict:
    return state_from_table(net, fcn_table("fcn8s"))
