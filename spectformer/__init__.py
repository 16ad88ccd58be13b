"""SpectFormer model zoo on top of ``spectformer_kernels``.

    >>> import spectformer
    >>> model = spectformer.create_model("spectformer_s", num_classes=10)
    >>> spectformer.list_models("gfnet_*")
    ['gfnet_b', 'gfnet_s', 'gfnet_ti', 'gfnet_xs']
"""

from .models import SPECTRAL_LAYERS, SpectFormer, create_model, list_models, register_model

__all__ = ["SPECTRAL_LAYERS", "SpectFormer", "create_model", "list_models", "register_model"]
