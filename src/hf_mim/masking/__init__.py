"""Masking strategies shared by every masked-image-modeling method. Each returns index tensors with fixed counts per
image, is seeded through a `torch.Generator`, and never loops unboundedly."""

from .inverse_block import InverseBlockMasking, PatchMasks, block_mask, masking_counts, to_absolute

__all__ = ["InverseBlockMasking", "PatchMasks", "block_mask", "masking_counts", "to_absolute"]
