"""DecoupledNet trained with every VOC pixel-wise annotation, the authors' Caffe release
(HyeonwooNoh/DecoupledNet ``model/DecoupledNet_Full_anno/``; layout and input in
:mod:`pixelwise.convert.releases._decouplednet`)."""

from pixelwise.convert.releases._decouplednet import decouplednet_release, readme_figure

# README, "DecoupledNet Inference": DecoupledNet-Full, 66.6 mean I/U on PASCAL VOC 2012 test.
RELEASE = decouplednet_release("Full", (readme_figure(66.6),))
