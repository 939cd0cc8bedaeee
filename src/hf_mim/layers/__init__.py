"""Building blocks shared by every ViT-based model in hf_mim."""

from .attention import Attention, eager_attention_forward
from .blocks import CrossAttentionBlock, SelfAttentionBlock, ViTLayer
from .encoding import Encoding, encode_blocks
from .mlp import Mlp
from .norms import build_norm
from .patch_embed import PatchEmbeddings
from .pooling import AttentivePooler
from .positions import (
    CapiRope2D,
    edge_register_coordinates,
    normalized_grid_coordinates,
    resize_position_embeddings,
    sincos_2d_position_embedding,
)
from .regularization import DropPath, LayerScale, drop_path, drop_path_schedule, residual_with_drop_path
from .relative_position import (
    RelativePositionBias,
    interpolate_relative_position_table,
    num_relative_distances,
    relative_position_index,
    resize_relative_position_table,
)

__all__ = [
    "Attention",
    "AttentivePooler",
    "CapiRope2D",
    "CrossAttentionBlock",
    "DropPath",
    "Encoding",
    "LayerScale",
    "Mlp",
    "PatchEmbeddings",
    "RelativePositionBias",
    "interpolate_relative_position_table",
    "SelfAttentionBlock",
    "ViTLayer",
    "build_norm",
    "drop_path",
    "drop_path_schedule",
    "eager_attention_forward",
    "encode_blocks",
    "edge_register_coordinates",
    "normalized_grid_coordinates",
    "num_relative_distances",
    "relative_position_index",
    "resize_relative_position_table",
    "resize_position_embeddings",
    "residual_with_drop_path",
    "sincos_2d_position_embedding",
]
