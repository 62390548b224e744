"""DecoupledNet trained with 25 pixel-wise annotated images per class (and every VOC image's
class labels), the authors' Caffe release (HyeonwooNoh/DecoupledNet
``model/DecoupledNet_25_anno/``; layout and input in :mod:`pixelwise.convert.releases._decouplednet`)."""

from pixelwise.convert.releases._decouplednet import decouplednet_release, readme_figure

# README, "DecoupledNet Inference": 62.5 mean I/U on PASCAL VOC 2012 test.
RELEASE = decouplednet_release("25", (readme_figure(62.5),))
