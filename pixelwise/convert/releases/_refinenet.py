"""What RefineNet's MatConvNet releases share (guosheng/refinenet), and why they are not in the zoo.

The files (``refinenet_res101_voc2012.mat``, ``refinenet_res101_cityscapes.mat``, one Google Drive
folder) are written by the release's ``main/cnn_save_model.m``: ``save(file, 'net_config',
'-v7.3')`` where ``net_config`` is a ``ref_obj`` - a MATLAB ``handle`` class
(``main/my_utils/ref_obj.m``) - whose groups hold the ResNet as a DagNN struct
(``dag_net.saveobj()``) but every RefineNet block as a ``net_info`` that is itself a ``ref_obj``
with simplenn-style layers. MATLAB stores handle objects in a 7.3 file as opaque MCOS
("FileWrapper__") data that neither scipy nor h5py decode, so
:func:`pixelwise.convert.matconvnet.read` refuses these files with a sentence, and the releases
are kept here as ``PENDING_RELEASE`` (the zoo only collects ``RELEASE``) until pixelwise reads MCOS.

Two differences from pixelwise's ``refinenet101`` a conversion would also meet:

- The backbone is MatConvNet's ``imagenet-resnet-101-dag`` (converted from Kaiming He's Caffe
  ResNet), whose bottlenecks downsample in the first 1x1 conv (``res3a_branch2a`` stride 2), not
  in the 3x3 conv as torchvision's ResNet does: the same weights compute another function.
  ``ResNetBackbone(caffe=True)`` moves the stride, but also rounds the stem's max pool up as
  Caffe does, whereas the release's ``My_net_util.fix_padding_resnet`` pads that pool by 1 on
  every side and MatConvNet rounds down (torchvision's own pool): a RefineNet mapping needs the
  stride move without the ceil-mode pool.
- Chained residual pooling, fusion and output blocks follow the released ``gen_network_*.m``
  (see :mod:`pixelwise.models.refinenet`'s docstring for the pool/conv order and block count).
"""

from torch import Tensor, nn

from pixelwise.convert.matconvnet import DagNNFile
from pixelwise.convert.release import InputConvention
from pixelwise.errors import PixelwiseError

# main/load_img_from_ds_info.m reads RGB uint8; my_get_batch_ds_info.m's pre_process_img_net_input
# subtracts data_norm_info.image_mean, set to the single value 128 by every demo_predict_mscale_*.m.
REFINENET_INPUT = InputConvention(channels="rgb", scale=255.0, mean=(128.0, 128.0, 128.0))
# guosheng/refinenet publishes its models under the same terms.
REFINENET_LICENCE = (
    "RefineNet for non-commercial purposes (guosheng/refinenet LICENSE; BSD for academic use)"
)


def refinenet_state(parsed: DagNNFile, model: nn.Module) -> dict[str, Tensor]:
    """No mapping yet: the released files keep the refinement layers in MATLAB handle objects."""
    raise PixelwiseError(
        f"{parsed.path}: RefineNet's released files keep their refinement layers inside MATLAB "
        "handle objects (ref_obj), which pixelwise cannot read yet; convert them in MATLAB or "
        "use pixelwise's own refinenet101 training."
    )
