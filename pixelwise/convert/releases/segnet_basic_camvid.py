"""SegNet-Basic on CamVid, the authors' Caffe release (alexgkendall/SegNet-Tutorial
``Example_Models/segnet_model_zoo.md``, deploy net ``Example_Models/segnet_basic_camvid.prototxt``).

Layers: LRN ``norm`` on the raw input (no weights), ``conv1``..``conv4`` (7x7, 64, with bias) each
with a caffe-segnet inference ``BN`` ``conv{i}_bn`` (scale and shift with the statistics folded
in), then ``conv_decode4``..``conv_decode1`` with ``conv_decode{i}_bn`` after 2x unpooling, and the
1x1 classifier ``dense_softmax_inner_prod``. The input is the image as OpenCV reads it, BGR 0-255,
with no mean (the tutorial's ``DenseImageData`` layer has no transform), so ``conv1`` is read with
its input channels reversed; the LRN across 5 channels of a 3-channel input sums all three for
every channel and so does not care about their order.
"""

from pixelwise.convert.caffe import CaffeNet, LayerMap, state_from_table
from pixelwise.convert.release import InputConvention, Release

ENCODER_CONVS = (0, 4, 8, 12)  # encoder.features.{i}: conv, BN at i + 1, ReLU, pool


def segnet_basic_table() -> list[LayerMap]:
    """The release's layers and the ``segnet_basic`` modules they fill."""
    table: list[LayerMap] = []
    for stage, index in enumerate(ENCODER_CONVS, start=1):
        conv = f"encoder.features.{index}"
        table.append(LayerMap(f"conv{stage}", "conv", conv, bias=True, reverse_input=stage == 1))
        table.append(LayerMap(f"conv{stage}_bn", "bn_folded", f"encoder.features.{index + 1}"))
    for position, stage in enumerate((4, 3, 2, 1)):  # decoder.0 runs first, on the deepest map
        ours = f"decoder.{position}.0"
        table.append(LayerMap(f"conv_decode{stage}", "conv", f"{ours}.0", bias=True))
        table.append(LayerMap(f"conv_decode{stage}_bn", "bn_folded", f"{ours}.1"))
    table.append(LayerMap("dense_softmax_inner_prod", "conv", "classifier", bias=True))
    return table


def segnet_basic_state(net: CaffeNet, model: object) -> dict:
    return state_from_table(net, segnet_basic_table())


RELEASE = Release(
    name="segnet-basic-camvid",
    model="segnet_basic",
    model_options={},
    num_classes=11,
    dataset="camvid",
    format="caffe",
    to_state_dict=segnet_basic_state,
    input=InputConvention(channels="bgr", scale=255.0, mean=(0.0, 0.0, 0.0)),
    file_name="segnet_basic_camvid.caffemodel",
    url="http://mi.eng.cam.ac.uk/~agk34/resources/SegNet/segnet_basic_camvid.caffemodel",
    sha256=None,
    size=None,
    licence="CC BY-NC 4.0: personal and research use only (non-commercial)",
    where=(
        "SegNet-Tutorial's Example_Models/segnet_model_zoo.md links "
        "http://mi.eng.cam.ac.uk/~agk34/resources/SegNet/segnet_basic_camvid.caffemodel; "
        "download it there and pass its path as --weights."
    ),
    # Neither the tutorial nor REFERENCE.md states a score for this file; none is claimed.
    figures=(),
    input_size=(360, 480),
    eval_split="test",
)
