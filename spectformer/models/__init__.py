"""SpectFormer / GFNet model zoo: vanilla and hierarchical models (GFNet-H included), spectral
layer variants."""

from .checkpoint import load_checkpoint, resize_complex_weight, resize_pos_embed, unwrap_state_dict
from .complexity import count_flops, flop_analysis
from .registry import create_model, default_cfg, list_models, register_model
from .spectral import SPECTRAL_LAYERS, haar_dwt2, haar_idwt2, make_spectral_layer
from .vanilla import SpectFormer
from .hierarchical import SpectFormerH
from .gfnet_h import GFNetH

__all__ = [
    "GFNetH",
    "SPECTRAL_LAYERS",
    "SpectFormer",
    "SpectFormerH",
    "count_flops",
    "create_model",
    "default_cfg",
    "flop_analysis",
    "haar_dwt2",
    "haar_idwt2",
    "list_models",
    "load_checkpoint",
    "make_spectral_layer",
    "register_model",
    "resize_complex_weight",
    "resize_pos_embed",
    "unwrap_state_dict",
]
