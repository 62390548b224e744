"""PSPNet-50 on ADE20K, the authors' Caffe release (hszhao/PSPNet README, "pspnet50_ADE20K")."""

from pixelwise.convert.release import Figure, Release
from pixelwise.convert.releases._pspnet import PSPNET_INPUT, PSPNET_LICENCE, pspnet50_state

RELEASE = Release(
    name="pspnet50-ade20k",
    model="pspnet50",
    model_options={"caffe": True},
    num_classes=150,
    dataset="ade20k",
    format="caffe",
    to_state_dict=pspnet50_state,
    input=PSPNET_INPUT,
    file_name="pspnet50_ADE20K.caffemodel",
    url=None,
    sha256=None,
    size=None,
    licence=PSPNET_LICENCE,
    where=(
        "hszhao/PSPNet's README links pspnet50_ADE20K.caffemodel on Google Drive (file id "
        "1SyCa_mEB-WiwvnqyBBBkWycS1zQDtDzW); download it there and pass its path as --weights."
    ),
    figures=(
        Figure("release", "mIoU", 41.68, "ADE20K", "val", "473x473 crops, sliding", "single-scale"),
        Figure(
            "release",
            "mIoU",
            42.78,
            "ADE20K",
            "val",
            "473x473 crops, sliding",
            "multi-scale (0.5..1.75) + flip",
        ),
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
