"""Attentive pooling: one learned query attends over a token set (CAPI's / V-JEPA's attentive probe)."""

import torch
from torch import nn


class AttentivePooler(nn.Module):
    """A learned query cross-attends to the tokens; heads concatenated, no q or output projection, no norm.

    Matches CAPI's `AttnPoolClassifier` body: `kv = Linear(D, 2D, bias)`, heads of width `head_dim`, SDPA with the
    default scale. Returns (batch, D).
    """

    def __init__(self, hidden_size: int, head_dim: int = 64, initializer_range: float = 0.02):
        super().__init__()
        if hidden_size % head_dim:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by the pooling head_dim {head_dim}.")
        self.num_heads = hidden_size // head_dim
        self.head_dim = head_dim
        self.query = nn.Parameter(torch.zeros(hidden_size))
        self.kv = nn.Linear(hidden_size, 2 * hidden_size)
        self.initializer_range = initializer_range

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape
        key, value = self.kv(tokens).reshape(batch, length, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query = self.query.reshape(1, self.num_heads, 1, self.head_dim).expand(batch, -1, -1, -1)
        pooled = nn.functional.scaled_dot_product_attention(query, key, value)
        return pooled.reshape(batch, dim)
