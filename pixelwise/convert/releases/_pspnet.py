"""What the three PSPNet Caffe releases share: the layer names of the released deploy nets
(hszhao/PSPNet ``evaluation/prototxt/pspnet{50_ADE20K,101_VOC2012}_473.prototxt``,
``pspnet101_cityscapes_713.prototxt``) -> ``pspnet50``/``pspnet101`` built with ``caffe=True``.

Every convolution is bias-free except ``conv6``; every ``BN`` is the fork's 4-blob layer (slope,
bias, mean, variance). The input is BGR, 0-255, minus the training mean R 123.68, G 116.779,
B 103.939 (``evaluation/eval_all.m``, ``mean_r``/``mean_g``/``mean_b``; ``pre_img.m`` subtracts it
and reverses the channels), so ``conv1_1_3x3_s2`` is read with its input channels reversed.
"""

from __future__ import annotations

from pixelwise.convert.caffe import CaffeNet, LayerMap, state_from_table
from pixelwise.convert.release import InputConvention

# Bottleneck blocks per ResNet stage (res2..res5): ``conv{stage}_{block}_*`` in the prototxts.
BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
BINS = (1, 2, 3, 6)  # conv5_3_pool{1,2,3,6}: ppm.branches.0..3
PSPNET_INPUT = InputConvention(channels="bgr", scale=255.0, mean=(103.939, 116.779, 123.68))
# hszhao/PSPNet publishes all three models under the same terms.
PSPNET_LICENCE = (
    "no licence of their own (the repository carries Caffe and DeepLab's BSD-style LICENSE)"
)


def _conv_bn(caffe: str, conv: str, bn: str, *, reverse_input: bool = False) -> list[LayerMap]:
    return [
        LayerMap(caffe, "conv", conv, reverse_input=reverse_input),
        LayerMap(f"{caffe}/bn", "bn4", bn),
    ]


def pspnet_table(depth: int) -> list[LayerMap]:
    """The release's layers, in prototxt order, and the ``pspnet{depth}`` modules they fill."""
    table = _conv_bn("conv1_1_3x3_s2", "backbone.conv1", "backbone.bn1", reverse_input=True)
    table += _conv_bn("conv1_2_3x3", "backbone.conv2", "backbone.bn2")
    table += _conv_bn("conv1_3_3x3", "backbone.conv3", "backbone.bn3")
    for stage, count in enumerate(BLOCKS[depth], start=2):
        for block in range(count):
            caffe, ours = f"conv{stage}_{block + 1}", f"backbone.layer{stage - 1}.{block}"
            table += _conv_bn(f"{caffe}_1x1_reduce", f"{ours}.conv1", f"{ours}.bn1")
            table += _conv_bn(f"{caffe}_3x3", f"{ours}.conv2", f"{ours}.bn2")
            table += _conv_bn(f"{caffe}_1x1_increase", f"{ours}.conv3", f"{ours}.bn3")
            if block == 0:
                table += _conv_bn(
                    f"{caffe}_1x1_proj", f"{ours}.downsample.0", f"{ours}.downsample.1"
                )
    for index, size in enumerate(BINS):
        ours = f"ppm.branches.{index}.conv"
        table += _conv_bn(f"conv5_3_pool{size}_conv", f"{ours}.0", f"{ours}.1")
    table += _conv_bn("conv5_4", "head.0.0", "head.0.1")
    table.append(LayerMap("conv6", "conv", "head.2", bias=True))
    return table


def pspnet50_state(net: CaffeNet, model: object) -> dict:
    return state_from_table(net, pspnet_table(50))


def pspnet101_state(net: CaffeNet, model: object) -> dict:
    return state_from_table(net, pspnet_table(101))
