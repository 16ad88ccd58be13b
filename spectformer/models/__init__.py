"""SpectFormer / GFNet model zoo: vanilla and hierarchical models, spectral layer variants."""

from .registry import create_model, default_cfg, list_models, register_model
from .spectral import SPECTRAL_LAYERS, haar_dwt2, haar_idwt2, make_spectral_layer
from .vanilla import SpectFormer
from .hierarchical import SpectFormerH

__all__ = [
    "SPECTRAL_LAYERS",
    "SpectFormer",
    "SpectFormerH",
    "create_model",
    "default_cfg",
    "haar_dwt2",
    "haar_idwt2",
    "list_models",
    "make_spectral_layer",
    "register_model",
]
