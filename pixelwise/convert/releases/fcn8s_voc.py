"""FCN-8s on PASCAL VOC, the authors' Caffe release (shelhamer/fcn.berkeleyvision.org
``voc-fcn8s/caffemodel-url``; trained on SBD train + VOC, "heavy" high-momentum online training)."""

from pixelwise.convert.release import Figure, Release
from pixelwise.convert.releases._fcn import FCN_LICENCE, FCN_VOC_INPUT, fcn8s_state

RELEASE = Release(
    name="fcn8s-voc",
    model="fcn8s",
    model_options={},
    num_classes=21,
    dataset="voc",
    format="caffe",
    to_state_dict=fcn8s_state,
    input=FCN_VOC_INPUT,
    file_name="fcn8s-heavy-pascal.caffemodel",
    url="http://dl.caffe.berkeleyvision.org/fcn8s-heavy-pascal.caffemodel",
    sha256=None,
    size=None,
    licence=FCN_LICENCE,
    where=(
        "shelhamer/fcn.berkeleyvision.org voc-fcn8s/caffemodel-url names "
        "http://dl.caffe.berkeleyvision.org/fcn8s-heavy-pascal.caffemodel; download it there "
        "and pass its path as --weights."
    ),
    figures=(
        Figure(
            "release",
            "mIoU",
            65.5,
            "VOC2011",
            "seg11valid",
            "whole image (<=500x500)",
            "single-scale",
        ),
        Figure(
            "release", "mIoU", 67.2, "VOC2012", "test", "whole image (<=500x500)", "single-scale"
        ),
        Figure("paper", "mIoU", 62.2, "VOC2012", "test", "whole image (<=500x500)", "single-scale"),
    ),
    input_size=(500, 500),
    eval_split="seg11valid",
)
