"""CAPI's inverse-block masking: the *visible* patches form one (circularly rolled) block, everything else is masked,
and a random subset of the masked patches is predicted.

All randomness comes from the `torch.Generator` passed in (or torch's global generator), so masks are reproducible
and are restored with the RNG state on resume. Counts are fixed per image so a batch stacks into rectangles.

`sampler="original"` draws exactly as the original `InverseBlockMasking` + `collate_data_and_cast` do, from the same
global RNG states: the blocks from Python's `random` module, the predicted subset from one `torch.rand(batch,
n_masked)` after all blocks (the generator passed in, else torch's global one). Same distribution as the default;
use it only to replay the original's masks draw for draw (tests/test_trajectory_capi.py).
"""

import math
import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PatchMasks:
    """Per-image indices into the row-major patch grid (local to each image).

    visible_indices: (batch, n_visible), sorted ascending.
    predict_indices: (batch, n_predict), a random subset of the masked positions in random order.
    """

    visible_indices: torch.Tensor
    predict_indices: torch.Tensor


def masking_counts(num_tokens: int, mask_ratio: float, prediction_subsampling: float) -> tuple[int, int, int]:
    """(n_visible, n_masked, n_predict) as the original computes them, with at least one of each.

    The original uses int(N * ratio) and int(n_masked * subsampling); at tiny resolutions the latter would be 0, so
    it is floored at 1 here (identical for the released 224-px settings: 166 masked, 90 visible, 8 predicted).
    """
    n_masked = int(num_tokens * mask_ratio)
    if not 0 < n_masked < num_tokens:
        raise ValueError(
            f"mask_ratio={mask_ratio} on {num_tokens} patches masks {n_masked}: need at least one visible and one "
            "masked patch. Use a larger image or another mask_ratio."
        )
    n_predict = max(1, int(n_masked * prediction_subsampling))
    return num_tokens - n_masked, n_masked, n_predict


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def _randint(low: int, high_inclusive: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(low, high_inclusive + 1, (), generator=generator).item())


def block_mask(
    grid: tuple[int, int],
    num_patches: int,
    min_aspect: float = 0.5,
    max_aspect: float | None = None,
    roll: bool = True,
    generator: torch.Generator | None = None,
    python_random: random.Random | None = None,
) -> torch.Tensor:
    """A (h, w) bool map with exactly `num_patches` True cells forming one block (original `BlockMasking`).

    Aspect ratio is log-uniform within [min_aspect, max_aspect] clipped so the block fits; the block's size is
    ceil'ed and its first `num_patches` cells in row-major order are kept; with `roll`, the map is circularly
    shifted by a uniform offset in each axis, so every cell (last row and column included) can be covered.
    Draws come from `generator` (torch), or from `python_random` (a `random.Random`, or the `random` module: the
    original's source) when given.
    """
    return torch.from_numpy(
        _block_mask_array(grid, num_patches, min_aspect, max_aspect, roll, generator, python_random)
    )


def _block_mask_array(grid, num_patches, min_aspect, max_aspect, roll, generator, python_random) -> np.ndarray:
    """`block_mask` as a numpy array: the map is built with numpy (torch ops on a 16x16 map cost more than the draws),
    the draws are the same."""
    if python_random is not None:
        uniform, randint = python_random.uniform, python_random.randint
    else:
        uniform = lambda low, high: _uniform(low, high, generator)  # noqa: E731
        randint = lambda low, high: _randint(low, high, generator)  # noqa: E731
    height, width = grid
    mask = np.zeros(height * width, dtype=bool)
    if num_patches == 0:
        return mask.reshape(height, width)
    max_aspect = max_aspect or 1.0 / min_aspect
    low = max(math.log(min_aspect), math.log(num_patches / width**2))
    high = min(math.log(max_aspect), math.log(height**2 / (num_patches + 1e-5)))
    aspect = math.exp(uniform(low, high))
    block_h = min(height, int(math.ceil(math.sqrt(num_patches * aspect))))
    block_w = min(width, int(math.ceil(math.sqrt(num_patches / aspect))))
    top = randint(0, height - block_h)
    left = randint(0, width - block_w)
    block = np.zeros((height, width), dtype=bool)
    block[top : top + block_h, left : left + block_w] = True
    mask[block.reshape(-1).nonzero()[0][:num_patches]] = True
    mask = mask.reshape(height, width)
    if roll:
        shifts = (randint(0, height - 1), randint(0, width - 1))
        mask = np.roll(mask, shifts, axis=(0, 1))
    return mask


class InverseBlockMasking:
    """Draws CAPI masks for a batch: visible = one rolled block of n_visible patches, predict = random masked subset.

    >>> masks = InverseBlockMasking(mask_ratio=0.65, prediction_subsampling=0.05)(batch_size=2, grid=(16, 16))
    >>> masks.visible_indices.shape, masks.predict_indices.shape
    (torch.Size([2, 90]), torch.Size([2, 8]))
    """

    def __init__(
        self,
        mask_ratio: float = 0.65,
        prediction_subsampling: float = 0.05,
        min_aspect: float = 0.5,
        max_aspect: float | None = None,
        roll: bool = True,
        sampler: str = "torch",
    ):
        if sampler not in ("torch", "original"):
            raise ValueError(f"sampler must be 'torch' or 'original', got {sampler!r}")
        self.mask_ratio = mask_ratio
        self.prediction_subsampling = prediction_subsampling
        self.min_aspect = min_aspect
        self.max_aspect = max_aspect
        self.roll = roll
        self.sampler = sampler

    def __call__(self, batch_size: int, grid: tuple[int, int], generator: torch.Generator | None = None) -> PatchMasks:
        num_tokens = grid[0] * grid[1]
        n_visible, n_masked, n_predict = masking_counts(num_tokens, self.mask_ratio, self.prediction_subsampling)
        if self.sampler == "original":
            return self._original(batch_size, grid, n_visible, n_masked, n_predict, generator)
        visible, predict = [], []
        for _ in range(batch_size):
            keep = _block_mask_array(grid, n_visible, self.min_aspect, self.max_aspect, self.roll, generator, None)
            keep = keep.reshape(-1)
            visible.append(keep.nonzero()[0])
            masked = torch.from_numpy((~keep).nonzero()[0])
            order = torch.argsort(torch.rand(n_masked, generator=generator))[:n_predict]
            predict.append(masked[order])
        return PatchMasks(torch.from_numpy(np.stack(visible)), torch.stack(predict))

    def _original(self, batch_size, grid, n_visible, n_masked, n_predict, generator) -> PatchMasks:
        """The original's draw order: every block first (Python's `random`), then one (batch, n_masked) uniform
        tensor whose per-row argsort picks the predicted subset of the (ascending) masked positions."""
        keep = torch.stack(
            [
                block_mask(
                    grid, n_visible, self.min_aspect, self.max_aspect, self.roll, python_random=random
                ).flatten()
                for _ in range(batch_size)
            ]
        )
        masked = (~keep).nonzero()[:, 1].reshape(batch_size, n_masked)
        order = torch.argsort(torch.rand(batch_size, n_masked, generator=generator))[:, :n_predict]
        visible = keep.nonzero()[:, 1].reshape(batch_size, n_visible)
        return PatchMasks(visible, torch.gather(masked, 1, order))


def to_absolute(local_indices: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(batch, n) per-image indices -> flat indices into the (batch * num_tokens) token array, image-major."""
    offsets = torch.arange(local_indices.shape[0], device=local_indices.device)[:, None] * num_tokens
    return (local_indices + offsets).flatten()
