"""BEiT-style relative position bias for [cls, patches] attention (CAE's fine-tuning and segmentation recipes).

A learned table of (2h - 1)(2w - 1) + 3 rows per head: one row per 2-D offset between two patches, then the
cls-to-token, token-to-cls and cls-to-cls entries. The (1 + hw, 1 + hw) index into it is fixed by the grid and
recomputed, never loaded. The bias (heads, 1 + hw, 1 + hw) is added to the attention scores before the softmax, which
the attention layer takes as its additive `attention_mask` (so SDPA still runs).
"""

import torch
from torch import nn


def num_relative_distances(grid: tuple[int, int]) -> int:
    """Rows of the table for an (h, w) patch grid: (2h - 1)(2w - 1) offsets + cls-to-token, token-to-cls, cls-to-cls."""
    return (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3


def relative_position_index(grid: tuple[int, int]) -> torch.Tensor:
    """(1 + hw, 1 + hw) int64 row of the table for each (query, key) pair of [cls, patches row-major]: patch pairs by
    their (row, column) offset, query i - key j, shifted to start at 0, row-major over the (2h - 1, 2w - 1) offsets;
    row 0 (cls querying a patch) -> n - 3, column 0 (a patch querying cls) -> n - 2, (0, 0) -> n - 1."""
    height, width = grid
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    d_row = rows[:, None] - rows[None, :] + height - 1
    d_col = cols[:, None] - cols[None, :] + width - 1
    n = num_relative_distances(grid)
    index = torch.empty(height * width + 1, height * width + 1, dtype=torch.long)
    index[1:, 1:] = d_row * (2 * width - 1) + d_col
    index[0, :] = n - 3
    index[:, 0] = n - 2
    index[0, 0] = n - 1
    return index


class RelativePositionBias(nn.Module):
    """The table (`relative_position_bias_table`, (n, heads), zeros at init: the original's) and its index (a
    non-persistent buffer, recomputed from `grid`). `forward(grid)` gives the (heads, 1 + hw, 1 + hw) bias. Only the
    grid the table was built for: the original computes the bias at one window size, and adapts a table to another
    grid only while loading a checkpoint (`interpolate` there), not in the forward."""

    def __init__(self, grid: tuple[int, int], num_heads: int):
        super().__init__()
        self.grid = tuple(grid)
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_relative_distances(self.grid), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.grid), persistent=False)

    def forward(self, grid: tuple[int, int] | None = None) -> torch.Tensor:
        if grid is not None and tuple(grid) != self.grid:
            raise ValueError(
                f"The relative position bias was built for a {self.grid[0]}x{self.grid[1]} patch grid, the input has "
                f"{grid[0]}x{grid[1]} patches: use inputs of the configured image_size (the original does not "
                "interpolate the table in the forward either)."
            )
        tokens = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(tokens, tokens, self.num_heads).permute(2, 0, 1).contiguous()

    def extra_repr(self) -> str:
        return f"grid={self.grid}, num_heads={self.num_heads}"
