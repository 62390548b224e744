"""What the four DecoupledNet Caffe releases share (HyeonwooNoh/DecoupledNet ``model/get_model.sh``:
``DecoupledNet_{Full,25,10,5}_anno_inference.caffemodel``, one per amount of pixel-wise
annotation: all of VOC's, or 25, 10 or 5 annotated images per class).

The four files have one layout, that of ``model/DecoupledNet_*_anno/*_inference_deploy.prototxt``
(the same net but for its name). They were written by HyeonwooNoh/caffe, whose ``NetParameter``
has only the V1 ``layers`` (type enum, legacy 4-D blob shapes):

- Classifier: VGG16 ``conv1_1``..``conv5_3``, ``fc6`` (7x7, no padding) and ``fc7`` as FCN's
  (:func:`~pixelwise.convert.releases._fcn.fcn_table`), then ``cls-score-voc`` (1x1, 20 outputs).
- Class-specific map: ``cls-score-voc-bp`` (Convolution 20 -> 4096), ``fc7-bp`` and ``fc6-bp``
  (Deconvolutions), the forward layers' weights copied (``cls-score-voc`` transposed) with zero
  biases by ``training/001_.../gen_fp_bp_model.py`` and frozen in training (``blobs_lr: 0``).
  pixelwise derives this path from the classifier's own weights, so these layers fill nothing:
  :func:`check_backprop_copies` checks that they are those copies.
- Bridge: ``pool5-bn``, ``pool5-bp-bn``; ``fc6-seg`` + ``bnfc6-seg``, ``fc7-seg`` +
  ``bnfc7-seg``, ``fc6-deconv`` (7x7 Deconvolution) + ``fc6-deconv-bn``.
- Deconvolution net: ``deconv{s}_{i}`` (3x3, stride 1, pad 1 Deconvolutions, read as the
  convolutions pixelwise writes them) each with ``debn{s}_{i}``, then ``seg-score-voc`` (1x1, 2).

Every ``BN`` is HyeonwooNoh/caffe's (``src/caffe/layers/bn_layer.cpp``) in ``bn_mode:
INFERENCE``: two blobs, scale and shift, 1 x C x 1 x 1, y = scale x + shift. The training
statistics were folded into them by ``training/00*/BN_make_INFERENCE_script.py`` (mean and
unbiased variance averaged over 101 training batches, eps 1e-9), so the file holds no separate
mean or variance. Every Convolution and Deconvolution has a bias.

Input (``inference/util/preprocess_image.m``): the image padded at the bottom/right to a square
with zeros, resized to 320x320 (bilinear), RGB -> BGR, 0-255, minus the mean BGR (104.00698793,
116.66876762, 122.67891434), so ``conv1_1`` is read with its input channels reversed.
Licence: the repository's LICENSE, "individual research use only"; commercial use or
redistribution needs a licence from POSTECH.
"""

from __future__ import annotations

import numpy as np

from pixelwise.convert.caffe import CaffeNet, LayerMap, MappingError, state_from_table
from pixelwise.convert.release import Figure, Release
from pixelwise.convert.releases._fcn import FCN_VOC_INPUT, fcn_table

# VGG16's Caffe mean, the same as FCN's VOC releases (DecoupledNet starts from FCN's VGG16).
DECOUPLEDNET_INPUT = FCN_VOC_INPUT
DECOUPLEDNET_LICENCE = (
    "individual research use only (HyeonwooNoh/DecoupledNet LICENSE, Copyright POSTECH; "
    "commercial use or redistribution needs their licence)"
)
URL = "http://cvlab.postech.ac.kr/research/decouplednet/model"

# Deconvolution stages, deepest first as pixelwise's decoder.{i} runs: (stage, convs per stage).
DECODER_STAGES = ((5, 3), (4, 3), (3, 3), (2, 2), (1, 2))

# The back-propagation layers: (Caffe layer, forward layer whose weight it copies, transposed).
BACKPROP_COPIES = (("cls-score-voc-bp", "cls-score-voc", True), ("fc7-bp", "fc7", False),
                   ("fc6-bp", "fc6", False))  # fmt: skip


def decouplednet_table() -> list[LayerMap]:
    """The release's weighted layers and the ``decouplednet`` modules they fill."""
    table = [e for e in fcn_table("fcn32s") if e.module.startswith("backbone.")]
    table.append(LayerMap("cls-score-voc", "conv", "cls_score", bias=True))
    table += [
        LayerMap("pool5-bn", "bn_folded", "bridge.bn_pool5"),
        LayerMap("pool5-bp-bn", "bn_folded", "bridge.bn_pool5_bp"),
    ]
    for layer, kind, bn in (
        ("fc6-seg", "conv", "bnfc6-seg"),
        ("fc7-seg", "conv", "bnfc7-seg"),
        ("fc6-deconv", "deconv", "fc6-deconv-bn"),
    ):
        module = f"bridge.{layer.replace('-', '_')}"
        table.append(LayerMap(layer, kind, f"{module}.0", bias=True))
        table.append(LayerMap(bn, "bn_folded", f"{module}.1"))
    for block, (stage, count) in enumerate(DECODER_STAGES):
        for i in range(count):
            module = f"decoder.{block}.{i}"
            table.append(
                LayerMap(f"deconv{stage}_{i + 1}", "deconv_as_conv", f"{module}.0", bias=True)
            )
            table.append(LayerMap(f"debn{stage}_{i + 1}", "bn_folded", f"{module}.1"))
    table.append(LayerMap("seg-score-voc", "conv", "seg_score", bias=True))
    return table


def check_backprop_copies(net: CaffeNet) -> None:
    """The ``*-bp`` layers are the forward layers' weights (``cls-score-voc``'s transposed) with
    zero biases, as pixelwise's DecoupledNet computes the class-specific map from the
    classifier's own weights (raises :class:`MappingError` naming the first that is not)."""
    layers = net.by_name()
    for name, source, transpose in BACKPROP_COPIES:
        copy, forward = layers.get(name), layers.get(source)
        if copy is None or forward is None:
            raise MappingError(f"it has no layer named {name if copy is None else source!r}")
        if len(copy.blobs) != 2 or not forward.blobs:
            raise MappingError(f"layer {name!r} has {len(copy.blobs)} blobs where 2 are expected")
        expected = forward.blobs[0]
        if transpose:
            expected = expected.transpose(1, 0, 2, 3)
        weight, bias = copy.blobs
        if weight.shape != expected.shape or not np.allclose(weight, expected, rtol=1e-6, atol=0):
            raise MappingError(
                f"layer {name!r} is not the copy of {source!r} the release's back-propagation "
                "path uses, which pixelwise's DecoupledNet derives from the classifier"
            )
        if np.any(bias):
            raise MappingError(f"layer {name!r} has a non-zero bias where the release's has none")


def decouplednet_state(net: CaffeNet, model: object) -> dict:
    state = state_from_table(net, decouplednet_table())
    check_backprop_copies(net)
    return state


def decouplednet_release(annotations: str, figures: tuple[Figure, ...]) -> Release:
    """The release trained with ``annotations`` ("Full", "25", "10" or "5") pixel-wise annotations
    (per class, but for "Full": every VOC training image's)."""
    stem = f"DecoupledNet_{annotations}_anno"
    name = (
        "decouplednet-full-voc" if annotations == "Full" else f"decouplednet-{annotations}anno-voc"
    )
    return Release(
        name=name,
        model="decouplednet",
        model_options={"width_divisor": 1, "fc_kernel": 7, "input_size": 320, "batch_norm": False},
        num_classes=21,
        dataset="voc",
        format="caffe",
        to_state_dict=decouplednet_state,
        input=DECOUPLEDNET_INPUT,
        file_name=f"{stem}_inference.caffemodel",
        url=f"{URL}/{stem}/{stem}_inference.caffemodel",
        sha256=None,
        size=None,
        licence=DECOUPLEDNET_LICENCE,
        where=(
            "HyeonwooNoh/DecoupledNet's README and model/get_model.sh link it; download it there "
            "and pass its path as --weights."
        ),
        figures=figures,
        input_size=(320, 320),
        protocol_note=(
            "The release (inference/DecoupledNet_inference.m) pads each image with black at the "
            "bottom/right to a square, resizes it to 320x320 with MATLAB's imresize (bilinear, "
            "antialiased when shrinking) and resizes the normalised class maps back bicubically; "
            "pixelwise pads with the mean colour, resizes bilinearly without antialiasing both "
            "ways, so its score on images that are not 320x320 squares may differ a little."
        ),
    )


def readme_figure(value: float) -> Figure:
    """A VOC 2012 test mIoU of the repository's README (``Inference`` section)."""
    return Figure(
        "release", "mIoU", value, "VOC2012", "test", "320x320 (padded square)", "single-scale"
    )
