"""FCN-32s on NYUDv2 colour (RGB) images, the authors' Caffe release
(shelhamer/fcn.berkeleyvision.org ``nyud-fcn32s-color/caffemodel-url``), 40 classes (Gupta et
al.'s; ``nyud_layers.py`` subtracts 1 from the labels, so unlabelled becomes 255).

The HHA and colour-depth variants take other inputs than an RGB image and SIFT Flow's nets have
two heads (33 semantic + 3 geometric classes) for a dataset pixelwise does not read; none of them
is in the zoo (docs/model-zoo.md).
"""

from pixelwise.convert.release import Figure, InputConvention, Release
from pixelwise.convert.releases._fcn import FCN_LICENCE, fcn32s_state

RELEASE = Release(
    name="fcn32s-nyudv2-color",
    model="fcn32s",
    model_options={},
    num_classes=40,
    dataset="nyudv2",
    format="caffe",
    to_state_dict=fcn32s_state,
    # nyud_layers.py: mean_bgr (116.190, 97.203, 92.318), BGR, no scaling.
    input=InputConvention(channels="bgr", scale=255.0, mean=(116.190, 97.203, 92.318)),
    file_name="nyud-fcn32s-color-heavy.caffemodel",
    url="http://dl.caffe.berkeleyvision.org/nyud-fcn32s-color-heavy.caffemodel",
    sha256=None,
    size=None,
    licence=FCN_LICENCE,
    where=(
        "shelhamer/fcn.berkeleyvision.org nyud-fcn32s-color/caffemodel-url names "
        "http://dl.caffe.berkeleyvision.org/nyud-fcn32s-color-heavy.caffemodel; download it "
        "there and pass its path as --weights."
    ),
    figures=(
        Figure("paper", "mIoU", 29.2, "NYUDv2", "test", "whole image (480x640)", "single-scale"),
    ),
    input_size=(480, 640),
    eval_split="test",
)
