"""Masking strategies shared by every masked-image-modeling method. Each returns index tensors (CAPI, I-JEPA) or a
boolean mask (CAE's block masking) with fixed counts per image, is seeded through a `torch.Generator`, and never loops
unboundedly. Every mask tensor is batch-first: its first dimension is the batch."""

from .block import BlockMasking, BoolMasks, RandomMasking
from .inverse_block import InverseBlockMasking, PatchMasks, block_mask, masking_counts, to_absolute
from .multiblock import MultiBlockMasking, MultiBlockMasks, from_mask_major, to_mask_major

__all__ = [
    "BlockMasking",
    "BoolMasks",
    "InverseBlockMasking",
    "MultiBlockMasking",
    "MultiBlockMasks",
    "PatchMasks",
    "RandomMasking",
    "block_mask",
    "from_mask_major",
    "masking_counts",
    "to_absolute",
    "to_mask_major",
]
