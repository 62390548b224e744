"""PSPNet-101 on PASCAL VOC 2012, the authors' Caffe release (hszhao/PSPNet README)."""

from pixelwise.convert.release import Figure, Release
from pixelwise.convert.releases._pspnet import PSPNET_INPUT, PSPNET_LICENCE, pspnet101_state

RELEASE = Release(
    name="pspnet101-voc2012",
    model="pspnet101",
    model_options={"caffe": True},
    num_classes=21,
    dataset="voc",
    format="caffe",
    to_state_dict=pspnet101_state,
    input=PSPNET_INPUT,
    file_name="pspnet101_VOC2012.caffemodel",
    url=None,
    sha256=None,
    size=None,
    licence=PSPNET_LICENCE,
    where=(
        "hszhao/PSPNet's README links pspnet101_VOC2012.caffemodel on Google Drive (file id "
        "1-jjYyRzbNEwsdQYP2UPJVy0ZV_yCVU2N); download it there and pass its path as --weights."
    ),
    figures=(
        Figure(
            "release",
            "mIoU",
            85.41,
            "VOC2012",
            "test",
            "473x473 crops, sliding",
            "multi-scale (0.5..1.75) + flip",
        ),
        Figure("paper", "mIoU", 85.4, "VOC2012", "test", "473x473 crops", "multi-scale"),
    ),
    input_size=(473, 473),
    eval_options=("--crop", "473", "473", "--stride", "316", "316"),
    protocol_note=(
        "The release's evaluation (evaluation/eval_sub.m, scale_process.m) first resizes each "
        "image so that its longer side is 512 x scale + 1, then slides 473x473 crops with "
        "stride ceil(473 x 2/3) = 316, padding with the mean; pixelwise slides the same "
        "crops over the image at its own size, so its score may differ a little."
    ),
)
