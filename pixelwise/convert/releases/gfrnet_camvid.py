"""G-FRNet on CamVid, the authors' Caffe release (mrochan/gfrnet README, "Pretrained Models"; deploy
net ``models/camvid/test_camvid_gate.prototxt``), converted into ``gfrnet`` built with ``caffe=True``.

Layers: VGG16's ``conv1_1``..``conv5_3`` each with a caffe-segnet inference ``BN`` ``conv*_bn``
(caffe-gfrnet is SegNet's fork; the README runs ``compute_bn_statistics_camvid.py``, which folds
the statistics into scale and shift), ``conv6``/``conv7`` with ``conv6_bn``/``conv7_bn``,
``pred_1``; per stage k = 2..6 on ``conv5_3``, ``conv4_3``, ``conv3_3``, ``conv2_2``, ``conv1_2``:
``{map}_feature_s{k}`` + ``_bn`` (the gate's projection), ``gate_s{k}_bn`` and the stage's
prediction ``pred_{k}`` (``prediction`` for the last); ``pool5_feature_s2`` is the first gate's
conv on pool5. Every convolution has a bias (the prototxt sets no ``bias_term``). The input is the
image as OpenCV reads it, BGR 0-255, no mean (``DenseImageData`` with no transform).
"""

from pixelwise.convert.caffe import CaffeNet, LayerMap, state_from_table
from pixelwise.convert.release import Figure, InputConvention, Release

# encoder.features index of each VGG16-BN conv (conv, BN, ReLU per conv; a pool per stage).
VGG_BN_CONVS = {
    "conv1_1": 0, "conv1_2": 3, "conv2_1": 7, "conv2_2": 10, "conv3_1": 14, "conv3_2": 17,
    "conv3_3": 20, "conv4_1": 24, "conv4_2": 27, "conv4_3": 30, "conv5_1": 34, "conv5_2": 37,
    "conv5_3": 40,
}  # fmt: skip
STAGE_MAPS = ("conv5_3", "conv4_3", "conv3_3", "conv2_2", "conv1_2")  # stages s2..s6


def gfrnet_table() -> list[LayerMap]:
    """The release's layers and the ``gfrnet`` modules they fill."""
    table: list[LayerMap] = []
    for name, index in VGG_BN_CONVS.items():
        table.append(
            LayerMap(name, "conv", f"encoder.features.{index}", bias=True, reverse_input=index == 0)
        )
        table.append(LayerMap(f"{name}_bn", "bn_folded", f"encoder.features.{index + 1}"))
    for name in ("conv6", "conv7"):
        table.append(LayerMap(name, "conv", f"{name}.0", bias=True))
        table.append(LayerMap(f"{name}_bn", "bn_folded", f"{name}.1"))
    table.append(LayerMap("pred_1", "conv", "coarse", bias=True))
    for i, feature in enumerate(STAGE_MAPS):
        stage = i + 2
        table.append(LayerMap(f"{feature}_feature_s{stage}", "conv", f"gates.{i}.project", True))
        table.append(
            LayerMap(f"{feature}_feature_s{stage}_bn", "bn_folded", f"gates.{i}.project_bn")
        )
        if i == 0:
            table.append(LayerMap("pool5_feature_s2", "conv", "gates.0.deeper", bias=True))
        table.append(LayerMap(f"gate_s{stage}_bn", "bn_folded", f"gates.{i}.bn"))
        prediction = "prediction" if stage == 6 else f"pred_{stage}"
        table.append(LayerMap(prediction, "conv", f"refinements.{i}.conv", bias=True))
    return table


def gfrnet_state(net: CaffeNet, model: object) -> dict:
    return state_from_table(net, gfrnet_table())


RELEASE = Release(
    name="gfrnet-camvid",
    model="gfrnet",
    model_options={"caffe": True},
    num_classes=11,
    dataset="camvid",
    format="caffe",
    to_state_dict=gfrnet_state,
    input=InputConvention(channels="bgr", scale=255.0, mean=(0.0, 0.0, 0.0)),
    file_name="gfrnet_camvid.caffemodel",
    url=None,
    sha256=None,
    size=None,
    licence="MIT (mrochan/gfrnet LICENSE, Copyright (c) 2017 Md Amirul Isam and Mrigank Rochan)",
    where=(
        "mrochan/gfrnet's README ('Pretrained Models') links the CamVid .caffemodel on Google "
        "Drive (id 0B4FSw1mplCQTblNkQmlzTU9ROTQ) without naming the file; download it there and "
        "pass its path as --weights."
    ),
    figures=(
        Figure(
            "paper (third-party table, unconfirmed)",
            "mIoU",
            68.0,
            "CamVid",
            "test",
            "360x480 (whole image)",
            "single-scale",
        ),
    ),
    input_size=(360, 480),
    eval_split="test",
)
