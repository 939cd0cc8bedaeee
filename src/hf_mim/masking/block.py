"""BEiT-style block-wise masking with an exact count per image (CAE's `MaskingGenerator`), and uniform random masking.

Both return `BoolMasks`: `bool_masked_pos`, a (batch, h * w) bool tensor, True = masked, row-major over the patch
grid, with exactly `num_masking_patches` True entries per row.

Block-wise algorithm (BEiT / CAE `furnace/masking_generator.py`), per image, until exactly `num_masking_patches` are
masked: each round has a budget `max_mask = min(remaining, max_num_patches)` and makes up to 10 tries; a try draws
area ~ U(min_num_patches, max_mask) (drawn as `a + (b - a) * u` like Python's `random.uniform`, so when the budget
is below `min_num_patches` the area lies in [budget, min_num_patches]), aspect = exp(U(log min_aspect, log
max_aspect)), h = round(sqrt(area * aspect)), w = round(sqrt(area / aspect)); a box is only placed when h < grid_h
and w < grid_w, with top ~ U{0..grid_h - h} and left ~ U{0..grid_w - w} (so the last row and column are reachable);
it is marked when it adds between 1 and `max_mask` new patches, and the round ends at the first try that adds any.

Deviations from the original, both documented here:

* Random numbers come from torch (the `generator` passed in, else torch's global RNG, which the Trainer checkpoints
  and restores), not Python's `random` module: the draws differ from the original's, the distribution is the same.
  One round draws its 10 tries' uniforms at once.
* The original loops until the count is exact, which never ends when no box can add the missing patches (e.g. a 4x4
  grid whose placeable boxes are at most 3x3 while every drawn area is >= `min_num_patches`). Here, after
  `max_attempts` consecutive rounds without progress, the remaining count is filled with uniformly random unmasked
  patches. A round that makes progress resets the counter, so whenever the original terminates by making progress
  the algorithm is unchanged; at the released settings (14x14, 98 or 75 patches, min 16) the fallback essentially
  never triggers.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

TRIES_PER_ROUND = 10  # the original's `for attempt in range(10)`


@dataclass
class BoolMasks:
    """bool_masked_pos: (batch, h * w) bool, True = masked, row-major patch order, exactly the same count per row."""

    bool_masked_pos: torch.Tensor


def _check_grid(grid) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (height, width), got {grid!r}") from None
    if height < 1 or width < 1 or (height, width) != tuple(grid):
        raise ValueError(f"grid must be two positive ints (height, width), got {grid!r}")
    return height, width


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"batch_size must be a non-negative int, got {batch_size!r}")
    return batch_size


def _check_count(num_masking_patches) -> int:
    if isinstance(num_masking_patches, bool) or not isinstance(num_masking_patches, int) or num_masking_patches < 0:
        raise ValueError(
            f"num_masking_patches must be a non-negative int (a patch count, not a ratio), got {num_masking_patches!r}"
        )
    return num_masking_patches


def _check_fits(num_masking_patches: int, height: int, width: int) -> None:
    if num_masking_patches > height * width:
        raise ValueError(
            f"num_masking_patches={num_masking_patches} exceeds the {height * width} patches of the "
            f"{height}x{width} grid"
        )


def _fill_random(mask: torch.Tensor, count: int, generator: torch.Generator | None) -> None:
    """Marks `count` uniformly random unmasked cells of the flat bool `mask` in place."""
    free = (~mask).nonzero().flatten()
    chosen = free[torch.randperm(len(free), generator=generator)[:count]]
    mask[chosen] = True


class BlockMasking:
    """BEiT block-wise masking with exactly `num_masking_patches` masked patches per image (see the module docstring).

    Args:
        num_masking_patches: masked patches per image (CAE's `--num_mask_patches`: 98 for v1, 30/49/98 for v2
            Tiny/Small/Base); an int count, the caller converts a ratio.
        min_num_patches: smallest block area drawn (`--min_mask_patches_per_block`, 16).
        max_num_patches: largest block area; None = num_masking_patches.
        min_aspect / max_aspect: block aspect-ratio range (log-uniform); max_aspect None = 1 / min_aspect.
        max_attempts: consecutive rounds (of 10 tries each) without progress after which the rest of the count is
            filled with random patches; bounds the loop.

    >>> masks = BlockMasking(98)(batch_size=2, grid=(14, 14))
    >>> masks.bool_masked_pos.shape, masks.bool_masked_pos.sum(1).tolist()
    (torch.Size([2, 196]), [98, 98])
    """

    def __init__(
        self,
        num_masking_patches: int,
        min_num_patches: float = 16,
        max_num_patches: float | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        max_attempts: int = 100,
    ):
        self.num_masking_patches = _check_count(num_masking_patches)
        if isinstance(min_num_patches, bool) or not isinstance(min_num_patches, int | float) or min_num_patches < 0:
            raise ValueError(f"min_num_patches must be a non-negative number, got {min_num_patches!r}")
        if max_num_patches is None:
            max_num_patches = num_masking_patches
        elif isinstance(max_num_patches, bool) or not isinstance(max_num_patches, int | float) or max_num_patches < 1:
            raise ValueError(f"max_num_patches must be a number >= 1 or None, got {max_num_patches!r}")
        if not isinstance(min_aspect, int | float) or not min_aspect > 0:
            raise ValueError(f"min_aspect must be a positive number, got {min_aspect!r}")
        if max_aspect is None:
            max_aspect = 1.0 / min_aspect
        if not isinstance(max_aspect, int | float) or not max_aspect >= min_aspect:
            raise ValueError(f"max_aspect must be a number >= min_aspect={min_aspect}, got {max_aspect!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be a positive int, got {max_attempts!r}")
        self.min_num_patches = min_num_patches
        self.max_num_patches = max_num_patches
        self.min_aspect = float(min_aspect)
        self.max_aspect = float(max_aspect)
        self.log_aspect_ratio = (math.log(self.min_aspect), math.log(self.max_aspect))
        self.max_attempts = max_attempts

    def _round(self, mask: np.ndarray, max_mask: int, generator: torch.Generator | None) -> int:
        """One round of up to 10 tries on the (h, w) bool `mask` (in place); returns the number of new patches. The
        mask is a numpy array: slicing and summing a 14x14 torch tensor cost about ten times as much per try."""
        height, width = mask.shape
        low, high = self.log_aspect_ratio
        for u_area, u_aspect, u_top, u_left in torch.rand(
            TRIES_PER_ROUND, 4, generator=generator, dtype=torch.float64
        ).tolist():
            area = self.min_num_patches + (max_mask - self.min_num_patches) * u_area
            aspect = math.exp(low + (high - low) * u_aspect)
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < width and h < height:
                top = min(int(u_top * (height - h + 1)), height - h)
                left = min(int(u_left * (width - w + 1)), width - w)
                new = h * w - int(mask[top : top + h, left : left + w].sum())
                if 0 < new <= max_mask:
                    mask[top : top + h, left : left + w] = True
                    return new
        return 0

    def sample(self, grid: tuple[int, int], generator: torch.Generator | None = None) -> torch.Tensor:
        """One image's (h, w) bool mask with exactly `num_masking_patches` True cells."""
        height, width = _check_grid(grid)
        _check_fits(self.num_masking_patches, height, width)
        return torch.from_numpy(self._sample_array(height, width, generator))

    def _sample_array(self, height: int, width: int, generator: torch.Generator | None) -> np.ndarray:
        mask = np.zeros((height, width), dtype=bool)
        count, stalled = 0, 0
        while count < self.num_masking_patches:
            max_mask = min(self.num_masking_patches - count, self.max_num_patches)
            delta = self._round(mask, max_mask, generator)
            count += delta
            stalled = 0 if delta else stalled + 1
            if stalled >= self.max_attempts:
                flat = torch.from_numpy(mask).view(-1)  # shares the array's memory: filled in place
                _fill_random(flat, self.num_masking_patches - count, generator)
                count = self.num_masking_patches
        return mask

    def __call__(self, batch_size: int, grid: tuple[int, int], generator: torch.Generator | None = None) -> BoolMasks:
        batch_size = _check_batch_size(batch_size)
        height, width = _check_grid(grid)
        _check_fits(self.num_masking_patches, height, width)
        masks = [self._sample_array(height, width, generator).reshape(-1) for _ in range(batch_size)]
        if not masks:
            return BoolMasks(torch.zeros(0, height * width, dtype=torch.bool))
        return BoolMasks(torch.from_numpy(np.stack(masks)))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_masking_patches={self.num_masking_patches}, "
            f"min_num_patches={self.min_num_patches}, max_num_patches={self.max_num_patches}, "
            f"min_aspect={self.min_aspect}, max_aspect={self.max_aspect}, max_attempts={self.max_attempts})"
        )


class RandomMasking:
    """Exactly `num_masking_patches` uniformly random patches per image (CAE's `--mask_generator random`)."""

    def __init__(self, num_masking_patches: int):
        self.num_masking_patches = _check_count(num_masking_patches)

    def __call__(self, batch_size: int, grid: tuple[int, int], generator: torch.Generator | None = None) -> BoolMasks:
        batch_size = _check_batch_size(batch_size)
        height, width = _check_grid(grid)
        _check_fits(self.num_masking_patches, height, width)
        num_patches = height * width
        order = torch.rand(batch_size, num_patches, generator=generator).argsort(dim=1)
        mask = torch.zeros(batch_size, num_patches, dtype=torch.bool)
        mask.scatter_(1, order[:, : self.num_masking_patches], True)
        return BoolMasks(mask)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_masking_patches={self.num_masking_patches})"


__all__ = ["BlockMasking", "BoolMasks", "RandomMasking"]
