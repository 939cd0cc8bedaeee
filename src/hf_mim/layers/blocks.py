"""Pre-norm transformer blocks: self-attention + MLP, and cross-attention (queries attend to a context) + MLP."""

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .attention import Attention
from .mlp import Mlp
from .norms import build_norm
from .regularization import LayerScale, residual_with_drop_path


class _PreNormBlock(GradientCheckpointingLayer):
    """Shared body of both blocks: x += attn(norm1(x), ...); x += mlp(norm2(x)), each with LayerScale/stochastic depth.

    Subclasses only choose how the attention module is named and whether a context is required.
    """

    attention_name = "attention"
    norm_names = ("norm1", "norm2")

    def __init__(
        self,
        config,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        *,
        context_size: int | None = None,
        norm_type: str = "layernorm",
        norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        mlp_bias: bool = True,
        hidden_act: str = "gelu",
        layer_scale_init: float | None = None,
        drop_path_rate: float = 0.0,
        drop_path_mode: str = "naive",
        attention_dropout: float = 0.0,
        rope: nn.Module | None = None,
        key_bias: bool | None = None,
    ):
        super().__init__()
        setattr(self, self.norm_names[0], build_norm(norm_type, hidden_size, norm_eps))
        attention = Attention(
            config, hidden_size, num_heads, context_size, qkv_bias, proj_bias, attention_dropout, rope, key_bias
        )
        setattr(self, self.attention_name, attention)
        setattr(self, self.norm_names[1], build_norm(norm_type, hidden_size, norm_eps))
        self.mlp = Mlp(hidden_size, intermediate_size, hidden_act, mlp_bias)
        self.layer_scale1 = LayerScale(hidden_size, layer_scale_init) if layer_scale_init else nn.Identity()
        self.layer_scale2 = LayerScale(hidden_size, layer_scale_init) if layer_scale_init else nn.Identity()
        self.drop_path_rate = drop_path_rate
        self.drop_path_mode = drop_path_mode

    def forward(
        self,
        hidden_states: torch.Tensor,
        coords: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_coords: torch.Tensor | None = None,
        output_attentions: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`attention_mask`: an additive bias on the attention scores, broadcast to (B, heads, n, m) (e.g. CAE's
        relative position bias, `hf_mim.layers.relative_position`)."""
        attention = getattr(self, self.attention_name)
        norm1, norm2 = (getattr(self, name) for name in self.norm_names)
        captured = []

        def attention_branch(x, coords=None, context=None, context_coords=None):
            out, weights = attention(
                norm1(x), coords, context, context_coords, attention_mask, output_attentions=output_attentions
            )
            captured.append(weights)
            return self.layer_scale1(out)

        def mlp_branch(x):
            return self.layer_scale2(self.mlp(norm2(x)))

        hidden_states = residual_with_drop_path(
            hidden_states,
            attention_branch,
            self.drop_path_rate,
            self.drop_path_mode,
            self.training,
            coords=coords,
            context=context,
            context_coords=context_coords,
        )
        hidden_states = residual_with_drop_path(
            hidden_states, mlp_branch, self.drop_path_rate, self.drop_path_mode, self.training
        )
        return hidden_states, captured[0]


class SelfAttentionBlock(_PreNormBlock):
    """Pre-norm ViT block; tokens attend to each other."""

    attention_name = "attention"


class ViTLayer(SelfAttentionBlock):
    """A SelfAttentionBlock whose parameter names are transformers' ViT-family ones (`layernorm_before`,
    `attention.{q,k,v,o}_proj`, `layernorm_after`, `mlp.fc1/fc2`), so weights are interchangeable with
    transformers' IJepa / ViT models."""

    norm_names = ("layernorm_before", "layernorm_after")


class CrossAttentionBlock(_PreNormBlock):
    """Queries attend only to a context (no self-attention among queries); only the query stream is normalised.

    This is CAPI's predictor block: the context is the (already normalised) encoder output, fed to k/v as it is.
    """

    attention_name = "cross_attention"

    def forward(self, hidden_states, coords=None, context=None, context_coords=None, output_attentions=False):
        if context is None:
            raise ValueError("CrossAttentionBlock needs a `context` to attend to.")
        return super().forward(hidden_states, coords, context, context_coords, output_attentions)
