"""Normalisation layers, chosen by name so configs can say `"layernorm"` or `"rmsnorm"`."""

from torch import nn


def build_norm(kind: str, dim: int, eps: float, elementwise_affine: bool = True, bias: bool = True) -> nn.Module:
    """Return a LayerNorm or RMSNorm over the last dimension.

    `elementwise_affine=False` gives a parameter-free norm (CAPI's final encoder/decoder norms). RMSNorm never has
    a bias; LayerNorm's bias follows `bias`.
    """
    kind = kind.lower()
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, elementwise_affine=elementwise_affine, bias=bias and elementwise_affine)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps, elementwise_affine=elementwise_affine)
    raise ValueError(f"Unknown norm type {kind!r}; expected 'layernorm' or 'rmsnorm'.")
