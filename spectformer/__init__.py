"""SpectFormer model zoo on top of ``spectformer_kernels``.

    >>> import spectformer
    >>> model = spectformer.create_model("spectformer_s", num_classes=10)
    >>> spectformer.list_models("gfnet_h_*")
    ['gfnet_h_b', 'gfnet_h_s', 'gfnet_h_ti']

``load_checkpoint(model, path_or_state_dict)`` loads official-layout checkpoints (resizing
position embeddings and filters to the model's resolution); ``count_flops(model)`` gives
FLOPs in GFNet's convention; ``model.set_backend(name)`` switches the spectral kernel.
"""

from .models import (
    GFNetH, SPECTRAL_LAYERS, SpectFormer, SpectFormerH, count_flops, create_model, list_models,
    load_checkpoint, register_model,
)

__all__ = ["GFNetH", "SPECTRAL_LAYERS", "SpectFormer", "SpectFormerH", "count_flops",
           "create_model", "list_models", "load_checkpoint", "register_model"]
