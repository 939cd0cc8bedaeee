"""Multi-head (self- or cross-) attention through transformers' attention-implementation switch."""

from collections.abc import Callable

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit softmax attention; the path that can return attention probabilities. Output is (B, n_q, H, d)."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(-2, -1)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class Attention(nn.Module):
    """Separate q/k/v/o projections; optional rotary embedding applied to q and k; self- or cross-attention.

    `config` is only read for `_attn_implementation` ("eager", "sdpa", or any registered kernel), so every model's
    `attn_implementation=` switch reaches here. Asking for attention probabilities always uses the eager path.
    """

    def __init__(
        self,
        config,
        hidden_size: int,
        num_heads: int,
        context_size: int | None = None,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attention_dropout: float = 0.0,
        rope: nn.Module | None = None,
        key_bias: bool | None = None,
    ):
        """`key_bias=False` with `qkv_bias=True` gives BEiT-style attention (CAE): learned q and v biases, none on k
        (a key bias only shifts every score of a softmax row equally). Default: the key follows `qkv_bias`."""
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}.")
        self.config = config
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = attention_dropout
        self.is_causal = False
        context_size = context_size or hidden_size
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=qkv_bias)
        self.k_proj = nn.Linear(context_size, hidden_size, bias=qkv_bias if key_bias is None else key_bias)
        self.v_proj = nn.Linear(context_size, hidden_size, bias=qkv_bias)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=proj_bias)
        self.rope = rope

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        coords: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_coords: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if context is None:
            context, context_coords = hidden_states, coords
        query = self._heads(self.q_proj(hidden_states))
        key = self._heads(self.k_proj(context))
        value = self._heads(self.v_proj(context))
        if self.rope is not None:
            if coords is None or context_coords is None:
                raise ValueError("This attention layer uses rotary positions: pass `coords` (and `context_coords`).")
            query = self.rope(query, coords.unsqueeze(1))
            key = self.rope(key, context_coords.unsqueeze(1))

        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        output = self.o_proj(output.reshape(*hidden_states.shape[:-1], -1))
        return output, (weights if output_attentions else None)
