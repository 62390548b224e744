"""FC-DenseNet103 on CamVid, the authors' Lasagne release ``FC-DenseNet103_weights.npz``.

SimJeg/FC-DenseNet publishes the file in its repository (``weights/``, loaded by ``test.py``) and
saves it with ``Network.save``: ``np.savez(path, *get_all_param_values(output_layer))``. The
network of ``FC-DenseNet.py`` is built in one pass, so the parameters come in creation order
(see :mod:`pixelwise.convert.lasagne`): the first 3x3 conv (``W``, ``b``); each dense layer's
BatchNormLayer (``beta``, ``gamma``, ``mean``, ``inv_std``) then its 3x3 conv; after each
downsampling block the transition down's BN and 1x1 conv; the bottleneck's layers; for each
upsampling step the transition up's ``Deconv2DLayer`` (``W`` as in x out x 3 x 3, ``b``) then the
block's layers; the 1x1 classifier conv. Every ``Conv2DLayer`` of ``layers.py`` is built with
``flip_filters=False`` (correlation, PyTorch's own orientation); the ``Deconv2DLayer`` keeps its
default ``flip_filters=False``, which makes it the transpose of a true convolution, so its
kernels are rotated by 180 degrees for PyTorch's ``ConvTranspose2d``.

Evaluation. The authors' ``test.py`` evaluates with ``batch_norm_use_averages=False``: batch
normalisation uses the statistics of the test batch (10 images), not the stored averages. The
checkpoint carries the stored ``mean``/``inv_std`` as running statistics, which pixelwise's eval
mode uses; to reproduce the paper's protocol, evaluate with the BatchNorm layers in train mode
(see :mod:`pixelwise.models.fcdensenet`).
"""

from torch import Tensor

from pixelwise.convert.lasagne import LasagneParams, ParamCursor
from pixelwise.convert.release import Figure, InputConvention, Release
from pixelwise.models.fcdensenet import DenseBlock, FCDenseNet

# fvisin/dataset_loaders images/camvid.py (the loader SimJeg's data_loader.py uses): the PNG read
# by skimage (RGB) and divided by 255; remove_mean/divide_by_std are False by default and
# data_loader.py does not set them.
FCDENSENET_INPUT = InputConvention(channels="rgb", scale=1.0, mean=(0.0, 0.0, 0.0))


def _dense_block(cursor: ParamCursor, block: DenseBlock, prefix: str) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for j, layer in enumerate(block.layers):
        state |= cursor.batch_norm(f"{prefix}.layers.{j}.norm", layer.norm)
        state |= cursor.conv(f"{prefix}.layers.{j}.conv", layer.conv, flip_filters=False)
    return state


def fcdensenet_state(parsed: LasagneParams, model: FCDenseNet) -> dict[str, Tensor]:
    """The dump's arrays, in FC-DenseNet.py's creation order, -> :class:`FCDenseNet`'s state."""
    cursor = ParamCursor(parsed, "FC-DenseNet103")
    state = cursor.conv("first_conv", model.first_conv, flip_filters=False)
    for i, (block, down) in enumerate(zip(model.down_blocks, model.transitions_down, strict=True)):
        state |= _dense_block(cursor, block, f"down_blocks.{i}")
        state |= cursor.batch_norm(f"transitions_down.{i}.0", down[0])
        state |= cursor.conv(f"transitions_down.{i}.2", down[2], flip_filters=False)
    state |= _dense_block(cursor, model.bottleneck, "bottleneck")
    for i, (up, block) in enumerate(zip(model.transitions_up, model.up_blocks, strict=True)):
        state |= cursor.transposed_conv(f"transitions_up.{i}.upsample", up.upsample)
        state |= _dense_block(cursor, block, f"up_blocks.{i}")
    state |= cursor.conv("classifier", model.classifier, flip_filters=False)
    cursor.finish()
    return state


RELEASE = Release(
    name="fcdensenet103-camvid",
    model="fcdensenet103",
    model_options={},
    num_classes=11,
    dataset="camvid",
    format="npz",
    to_state_dict=fcdensenet_state,
    input=FCDENSENET_INPUT,
    file_name="FC-DenseNet103_weights.npz",
    url="https://github.com/SimJeg/FC-DenseNet/raw/master/weights/FC-DenseNet103_weights.npz",
    sha256=None,
    size=None,
    licence="MIT (SimJeg/FC-DenseNet LICENSE, Copyright (c) 2018 Simon Jegou)",
    where=(
        "SimJeg/FC-DenseNet keeps FC-DenseNet103_weights.npz in its repository's weights/ "
        "folder (README, 'Use a pretrained model'); download it and pass its path as --weights."
    ),
    figures=(
        Figure("paper", "mIoU", 66.9, "CamVid", "test", "360x480 (whole image)", "single-scale"),
        Figure(
            "paper",
            "global accuracy",
            91.5,
            "CamVid",
            "test",
            "360x480 (whole image)",
            "single-scale",
        ),
    ),
    input_size=(360, 480),
    eval_split="test",  # the paper's figures are on CamVid's 233 test images
)
