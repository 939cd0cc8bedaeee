"""Masking strategies shared by every masked-image-modeling method. Each returns index tensors with fixed counts per
image, is seeded through a `torch.Generator`, and never loops unboundedly."""

from .inverse_block import InverseBlockMasking, PatchMasks, block_mask, masking_counts, to_absolute
from .multiblock import MultiBlockMasking, MultiBlockMasks

__all__ = [
    "InverseBlockMasking",
    "MultiBlockMasking",
    "MultiBlockMasks",
    "PatchMasks",
    "block_mask",
    "masking_counts",
    "to_absolute",
]
