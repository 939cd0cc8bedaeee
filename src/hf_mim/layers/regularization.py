"""Stochastic depth (two flavours) and LayerScale."""

from collections.abc import Callable

import torch
from torch import nn


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Per-sample stochastic depth: zero the branch for a random subset of samples, rescale the rest."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
    return x * mask / keep_prob


def drop_path_schedule(max_rate: float, depth: int) -> list[float]:
    """Linearly increasing stochastic-depth rates 0 ... max_rate over `depth` blocks, in plain Python (no tensor is
    created, so models can be built on the meta device)."""
    if depth <= 1:
        return [0.0] * depth
    return [max_rate * i / (depth - 1) for i in range(depth)]


class DropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


def residual_with_drop_path(
    x: torch.Tensor,
    branch: Callable[..., torch.Tensor],
    drop_prob: float,
    mode: str,
    training: bool,
    **batched: torch.Tensor | None,
) -> torch.Tensor:
    """`x + branch(x, **batched)` with stochastic depth.

    mode="naive": the branch runs on every sample and a Bernoulli mask zeroes some of them.
    mode="efficient" (CAPI): the branch only runs on a random subset of floor(B * keep) samples, whose results are
    added back with weight B / n_keep. Same expectation, and the dropped samples cost no compute. Every tensor in
    `batched` (coordinates, contexts) is indexed with the same subset.
    """
    if drop_prob == 0.0 or not training:
        return x + branch(x, **batched)
    if mode == "naive":
        return x + drop_path(branch(x, **batched), drop_prob, training)
    if mode != "efficient":
        raise ValueError(f"Unknown drop_path_mode {mode!r}; expected 'naive' or 'efficient'.")
    batch_size = x.shape[0]
    n_keep = max(int(batch_size * (1.0 - drop_prob)), 1)
    keep = torch.randperm(batch_size, device=x.device)[:n_keep]
    subset = {k: (v[keep] if v is not None and v.shape[0] == batch_size else v) for k, v in batched.items()}
    return torch.index_add(x, 0, keep, branch(x[keep], **subset), alpha=batch_size / n_keep)


class LayerScale(nn.Module):
    """Learned per-channel scaling of a residual branch (CaiT)."""

    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.lambda1 = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1
