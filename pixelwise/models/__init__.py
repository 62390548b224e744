"""Segmentation networks, one file per paper; ``build_model(name, num_classes, **kw)`` builds one.

Importing this package imports every paper's file so that their ``@register_model`` run.
"""

from pixelwise._imports import import_submodules
from pixelwise.models.registry import (
    ModelInfo,
    build_model,
    list_models,
    model_info,
    register_model,
)

import_submodules(__name__, __path__, skip={"registry", "layers", "backbones", "complexity"})

__all__ = ["ModelInfo", "build_model", "list_models", "model_info", "register_model"]
