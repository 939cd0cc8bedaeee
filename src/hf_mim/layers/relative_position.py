"""BEiT-style relative position bias for [cls, patches] attention (CAE's fine-tuning and segmentation recipes).

A learned table of (2h - 1)(2w - 1) + 3 rows per head: one row per 2-D offset between two patches, then the
cls-to-token, token-to-cls and cls-to-cls entries. The (1 + hw, 1 + hw) index into it is fixed by the grid and
recomputed, never loaded. The bias (heads, 1 + hw, 1 + hw) is added to the attention scores before the softmax, which
the attention layer takes as its additive `attention_mask` (so SDPA still runs).

Other grids, two ways (both leave the three cls rows as they are and resample the (2h - 1, 2w - 1) offsets):
* in the forward, at an input of another size: bilinear interpolation of the table (differentiable), as transformers'
  BEiT does with `interpolate_pos_encoding`;
* once, before fine-tuning at another resolution (`RelativePositionBias.resize_`): the original's load-time rescale
  (Atten4Vis CAE / BEiT `run_class_finetuning.py`), a cubic spline through offsets spaced by a geometric progression,
  so that the central (short-range) offsets keep their values and the long-range ones spread out.
"""

import numpy as np
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


def _split_table(table: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(heads, 2h - 1, 2w - 1) offsets and the (3, heads) cls rows of a table built for `grid`."""
    rows, cols = 2 * grid[0] - 1, 2 * grid[1] - 1
    if table.shape[0] != rows * cols + 3:
        raise ValueError(
            f"A relative position table of {table.shape[0]} rows is not one of a {grid[0]}x{grid[1]} patch grid "
            f"({rows * cols + 3} rows)."
        )
    return table[:-3].reshape(rows, cols, -1).permute(2, 0, 1), table[-3:]


def interpolate_relative_position_table(
    table: torch.Tensor, source_grid: tuple[int, int], target_grid: tuple[int, int]
) -> torch.Tensor:
    """The table of `source_grid` bilinearly resampled to `target_grid` (transformers' BEiT
    `interpolate_pos_encoding`): differentiable, used by the forward at inputs of another size."""
    if tuple(source_grid) == tuple(target_grid):
        return table
    offsets, cls_rows = _split_table(table, source_grid)
    size = (2 * target_grid[0] - 1, 2 * target_grid[1] - 1)
    resized = nn.functional.interpolate(offsets[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return torch.cat([resized.to(table.dtype).permute(1, 2, 0).reshape(size[0] * size[1], -1), cls_rows])


def _geometric_offsets(source_side: int, target_side: int) -> tuple[np.ndarray, np.ndarray]:
    """The original's sample positions along one axis: the source offsets -(grid - 1)..(grid - 1) placed at
    0, +-1, +-(1 + q), +-(1 + q + q^2), ... with q found by bisection in [1.01, 1.5] so that the outermost lands near
    the target's outermost offset, and the target offsets at the integers."""
    half = source_side // 2

    def reach(q: float) -> float:  # 1 + q + ... + q^(half - 1)
        return (1.0 - q**half) / (1.0 - q)

    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if reach(q) > target_side // 2:
            right = q
        else:
            left = q
    distances, current = [], 1.0
    for i in range(half):
        distances.append(current)
        current += q ** (i + 1)
    source = np.array([-d for d in reversed(distances)] + [0.0] + distances)
    reach_target = target_side // 2
    return source, np.arange(-reach_target, reach_target + 0.1, 1.0)


def resize_relative_position_table(
    table: torch.Tensor, source_grid: tuple[int, int], target_grid: tuple[int, int]
) -> torch.Tensor:
    """The table of `source_grid` rescaled to `target_grid` as the original does when it loads a checkpoint for
    fine-tuning at another resolution: per head, a cubic interpolating spline (scipy's `RectBivariateSpline`, the
    replacement scipy names for the original's removed `interp2d(kind="cubic")`) through the offsets at geometric
    positions (`_geometric_offsets`), read at the target's integer offsets. The original handles square grids only;
    here each axis gets its own progression, which is the original's on a square grid. Not differentiable."""
    if tuple(source_grid) == tuple(target_grid):
        return table
    try:  # scipy comes with hf_mim (scikit-learn); a Hub user of the remote code may lack it, and only this needs it
        from scipy.interpolate import RectBivariateSpline
    except ImportError as error:
        raise ImportError(
            "Rescaling a relative position table the original's way needs scipy: pip install scipy"
        ) from error

    offsets, cls_rows = _split_table(table, source_grid)
    rows, target_rows = _geometric_offsets(2 * source_grid[0] - 1, 2 * target_grid[0] - 1)
    cols, target_cols = _geometric_offsets(2 * source_grid[1] - 1, 2 * target_grid[1] - 1)
    # cubic where the grid has the 4 points a cubic needs (grids of 3 patches and more), lower degrees below
    degree_rows, degree_cols = min(3, len(rows) - 1), min(3, len(cols) - 1)
    heads = []
    for head in offsets.detach().double().cpu().numpy():
        spline = RectBivariateSpline(rows, cols, head, kx=degree_rows, ky=degree_cols, s=0)
        heads.append(torch.from_numpy(spline(target_rows, target_cols)).reshape(-1))
    resized = torch.stack(heads, dim=-1).to(device=table.device, dtype=table.dtype)
    return torch.cat([resized, cls_rows])


class RelativePositionBias(nn.Module):
    """The table (`relative_position_bias_table`, (n, heads), zeros at init: the original's) and its index (a
    non-persistent buffer, recomputed from `grid`). `forward(grid)` gives the (heads, 1 + hw, 1 + hw) bias; at a
    grid other than the table's, from the bilinearly interpolated table (`interpolate_relative_position_table`).
    `resize_(grid)` rescales the table itself to a new grid with the original's load-time method."""

    def __init__(self, grid: tuple[int, int], num_heads: int):
        super().__init__()
        self.grid = tuple(grid)
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_relative_distances(self.grid), num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.grid), persistent=False)

    def forward(self, grid: tuple[int, int] | None = None) -> torch.Tensor:
        table, index = self.relative_position_bias_table, self.relative_position_index
        if grid is not None and tuple(grid) != self.grid:
            table = interpolate_relative_position_table(table, self.grid, tuple(grid))
            index = relative_position_index(tuple(grid)).to(table.device)
        tokens = index.shape[0]
        bias = table[index.reshape(-1)]
        return bias.reshape(tokens, tokens, self.num_heads).permute(2, 0, 1).contiguous()

    @torch.no_grad()
    def resize_(self, grid: tuple[int, int]) -> None:
        """Rescale the table to `grid` in place (`resize_relative_position_table`, the original's load-time
        resampling) and rebuild the index: the module then belongs to the new grid."""
        grid = tuple(grid)
        table = resize_relative_position_table(self.relative_position_bias_table.data, self.grid, grid)
        self.relative_position_bias_table = nn.Parameter(
            table, requires_grad=self.relative_position_bias_table.requires_grad
        )
        self.relative_position_index = relative_position_index(grid).to(table.device)
        self.grid = grid

    def extra_repr(self) -> str:
        return f"grid={self.grid}, num_heads={self.num_heads}"
