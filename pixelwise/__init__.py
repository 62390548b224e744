"""pixelwise: the fully convolutional segmentation networks of 2014-2017, faithful to their papers."""

from pixelwise.errors import PixelwiseError

__version__ = "0.1.0"
__all__ = ["PixelwiseError", "__version__"]
