"""Positional encodings as pluggable pieces.

* `CapiRope2D`: CAPI's rotary embedding, reproduced literally (it is not the usual 2-D RoPE, see its docstring).
* `sincos_2d_position_embedding`: fixed 2-D sin-cos table (MAE / I-JEPA / CAE), with a documented channel order.
* `resize_position_embeddings`: bicubic interpolation of a learned or fixed absolute table to another grid.
"""

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class CapiRope2D(nn.Module):
    """CAPI's 2-D rotary position embedding, exactly as the original computes it.

    `freqs` has shape (2, head_dim): row 0 holds 2*pi*f on the first half of the channels, row 1 holds 2*pi*f on the
    second half, with f = max_freq * (max_freq / min_freq) ** linspace(0, -1, head_dim // 4) repeated twice. The angle
    is `coords @ freqs`, so channel i < head_dim/2 turns with the *row* coordinate and channel i + head_dim/2 with the
    *column* coordinate, while `rotate_half` pairs channel i with channel i + head_dim/2. The two members of a pair
    therefore rotate by different angles: not a norm-preserving rotation, and not what EVA/DINOv3/timm implement.
    Coordinates live in [0, 1] (normalised), which is why CAPI transfers to any resolution without interpolation.

    The table is analytic and never trained (the original trains it with lr multiplier 0), so it is a non-persistent
    buffer here; `analytic_freqs` rebuilds it with the original's exact float32 operation order.
    """

    def __init__(self, head_dim: int, max_freq: float = 7.0, min_freq: float = 7e-4):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"CapiRope2D needs a head dimension divisible by 4, got {head_dim}.")
        self.head_dim = head_dim
        self.max_freq = max_freq
        self.min_freq = min_freq
        self.register_buffer("freqs", self.analytic_freqs(head_dim, max_freq, min_freq), persistent=False)

    @staticmethod
    def analytic_freqs(head_dim: int, max_freq: float = 7.0, min_freq: float = 7e-4) -> torch.Tensor:
        # Same float32 operation order as the original (matters at the 1e-7 level).
        freqs_1d = max_freq * (max_freq / min_freq) ** torch.linspace(0, -1, head_dim // 4, dtype=torch.float32)
        freqs_1d = torch.cat([freqs_1d, freqs_1d])
        freqs_2d = torch.zeros(2, head_dim, dtype=torch.float32)
        freqs_2d[0, : head_dim // 2] = freqs_1d
        freqs_2d[1, -head_dim // 2 :] = freqs_1d
        return freqs_2d * 2 * torch.pi

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """x: (..., n, head_dim); coords: broadcastable (..., n, 2) as (row, column) in [0, 1]."""
        angle = coords @ self.freqs.to(coords.dtype)
        return x * angle.cos() + rotate_half(x) * angle.sin()


def normalized_grid_coordinates(
    grid_h: int, grid_w: int, dtype: torch.dtype, device: torch.device | None = None
) -> torch.Tensor:
    """(grid_h * grid_w, 2) row-major (row, column) coordinates, each axis `linspace(0, 1, n)` (endpoints included).

    Computed in the activation dtype, as the original does. A 1-patch axis gives coordinate 0.
    """
    rows = torch.linspace(0, 1, grid_h, dtype=dtype, device=device)
    cols = torch.linspace(0, 1, grid_w, dtype=dtype, device=device)
    return torch.cartesian_prod(rows, cols).reshape(grid_h * grid_w, 2)


def edge_register_coordinates(
    num_registers: int, dtype: torch.dtype, device: torch.device | None = None
) -> torch.Tensor:
    """(num_registers, 2) coordinates on the border of the unit square, walking it clockwise from (0, 0).

    With side = n / 4 and c = arange(side) / side: (c, 0), (1, c), (1 - c, 1), (0, 1 - c).
    """
    if num_registers % 4:
        raise ValueError(f"'edge' register coordinates need a multiple of 4 registers, got {num_registers}.")
    side = num_registers // 4
    c = torch.arange(side, dtype=dtype, device=device) / side
    zeros, ones = torch.zeros_like(c), torch.ones_like(c)
    return torch.cat(
        [
            torch.stack([c, zeros], dim=-1),
            torch.stack([ones, c], dim=-1),
            torch.stack([1 - c, ones], dim=-1),
            torch.stack([zeros, 1 - c], dim=-1),
        ]
    )


def sincos_1d(embed_dim: int, positions: torch.Tensor, temperature: float = 10000.0) -> torch.Tensor:
    """MAE's 1-D table: [sin(p * w_k), cos(p * w_k)], w_k = temperature ** (-k / (embed_dim / 2)), in float64."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {embed_dim}.")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / temperature**omega
    out = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d_position_embedding(
    embed_dim: int, grid_h: int, grid_w: int, first_half: str = "column", temperature: float = 10000.0
) -> torch.Tensor:
    """Fixed 2-D sin-cos table of shape (grid_h * grid_w, embed_dim), tokens in row-major order.

    Half of the channels encode one axis, half the other. MAE, I-JEPA and CAE build the grid with
    `meshgrid(grid_w, grid_h)` and embed its first member first, so the first half encodes the **column** index;
    `first_half="row"` gives the other convention. Computed in float64 like the originals, returned in float32.
    """
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {embed_dim}.")
    rows = torch.arange(grid_h, dtype=torch.float64)[:, None].expand(grid_h, grid_w)
    cols = torch.arange(grid_w, dtype=torch.float64)[None, :].expand(grid_h, grid_w)
    first, second = (cols, rows) if first_half == "column" else (rows, cols)
    table = torch.cat(
        [sincos_1d(embed_dim // 2, first, temperature), sincos_1d(embed_dim // 2, second, temperature)], 1
    )
    return table.to(torch.float32)


def resize_position_embeddings(
    position_embeddings: torch.Tensor,
    source_grid: tuple[int, int],
    target_grid: tuple[int, int],
    mode: str = "bicubic",
) -> torch.Tensor:
    """Interpolate a (1, src_h * src_w, D) absolute table to (1, dst_h * dst_w, D), row-major in and out."""
    if tuple(source_grid) == tuple(target_grid):
        return position_embeddings
    src_h, src_w = source_grid
    if position_embeddings.shape[1] != src_h * src_w:
        raise ValueError(
            f"Position table has {position_embeddings.shape[1]} entries, which is not a {src_h}x{src_w} grid."
        )
    dim = position_embeddings.shape[-1]
    table = position_embeddings.reshape(1, src_h, src_w, dim).permute(0, 3, 1, 2)
    table = nn.functional.interpolate(table.float(), size=tuple(target_grid), mode=mode, align_corners=False)
    return table.to(position_embeddings.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
