"""PSPNet-101 on Cityscapes, the authors' Caffe release (hszhao/PSPNet README)."""

from pixelwise.convert.release import Figure, Release
from pixelwise.convert.releases._pspnet import PSPNET_INPUT, PSPNET_LICENCE, pspnet101_state

RELEASE = Release(
    name="pspnet101-cityscapes",
    model="pspnet101",
    model_options={"caffe": True},
    num_classes=19,
    dataset="cityscapes",
    format="caffe",
    to_state_dict=pspnet101_state,
    input=PSPNET_INPUT,
    file_name="pspnet101_cityscapes.caffemodel",
    url=None,
    sha256=None,
    size=None,
    licence=PSPNET_LICENCE,
    where=(
        "hszhao/PSPNet's README links pspnet101_cityscapes.caffemodel on Google Drive (file id "
        "1-Me01pX1KUsut_7l6uJXkIbaBxxSVgX0); download it there and pass its path as --weights."
    ),
    figures=(
        Figure(
            "release", "mIoU", 79.70, "Cityscapes", "val", "713x713 crops, sliding", "single-scale"
        ),
        Figure(
            "release",
            "mIoU",
            80.91,
            "Cityscapes",
            "val",
            "713x713 crops, sliding",
            "multi-scale (0.5..1.75) + flip",
        ),
    ),
    input_size=(713, 713),
    eval_options=("--crop", "713", "713", "--stride", "476", "476"),
    protocol_note=(
        "The release's evaluation (evaluation/eval_sub.m, scale_process.m) first resizes each "
        "image so that its longer side is 2048 x scale + 1, then slides 713x713 crops with "
        "stride ceil(713 x 2/3) = 476, padding with the mean; pixelwise slides the same "
        "crops over the image at its own size, so its score may differ a little."
    ),
)
