"""The token grids that matter, shared by every benchmark and the GPU tests; torch-free."""

# Vanilla 14x14 stages, hierarchical stage-1/2 grids (H-S/H-B, then H-L), the 7x7 stage.
SHAPES = {
    "14x14x256": (14, 14, 256),
    "14x14x384": (14, 14, 384),
    "14x14x512": (14, 14, 512),
    "56x56x64": (56, 56, 64),
    "28x28x128": (28, 28, 128),
    "56x56x96": (56, 56, 96),
    "28x28x192": (28, 28, 192),
    "7x7x768": (7, 7, 768),
}
