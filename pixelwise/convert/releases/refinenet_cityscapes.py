"""RefineNet-101 on Cityscapes, the authors' MatConvNet release (guosheng/refinenet).

Not in the zoo yet, for the reason :mod:`pixelwise.convert.releases._refinenet` gives; this
module defines ``PENDING_RELEASE``, which the zoo does not collect.
"""

from pixelwise.convert.release import Figure, Release
from pixelwise.convert.releases._refinenet import (
    REFINENET_INPUT,
    REFINENET_LICENCE,
    refinenet_state,
)

PENDING_RELEASE = Release(
    name="refinenet101-cityscapes",
    model="refinenet101",
    model_options={},
    num_classes=19,
    dataset="cityscapes",
    format="mat",
    to_state_dict=refinenet_state,
    input=REFINENET_INPUT,
    file_name="refinenet_res101_cityscapes.mat",
    url=None,
    sha256=None,
    size=None,
    licence=REFINENET_LICENCE,
    where=(
        "guosheng/refinenet's README links its ResNet-101 models in the Google Drive folder "
        "https://drive.google.com/open?id=1U2c1N6QJdzB_8HBgXb7mJ6Qk66JDBHI9 (or Baidu Pan "
        "https://pan.baidu.com/s/1nxf2muP); download refinenet_res101_cityscapes.mat there."
    ),
    figures=(
        Figure(
            "paper",
            "mIoU",
            73.6,
            "Cityscapes",
            "test",
            "short side 600-1100",
            "multi-scale (0.4..1.2)",
        ),
    ),
)
