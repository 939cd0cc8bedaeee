"""I-JEPA's multi-block masking: several target blocks and one large context block that avoids them.

Per batch, one target block size and one context block size are drawn (a single uniform number drives both the
scale and the aspect ratio of a block, as in the original); per image, `num_targets` target blocks and
`num_context` context blocks are placed, the context restricted to the complement of the targets. Every index list
is truncated to the batch minimum so they stack. All loops are bounded.

Layout: every mask tensor is batch-first, (batch, num_masks, K), so anything that splits a batch along dim 0
(batching-equivalence checks, `nn.DataParallel`, gradient-accumulation splits) splits the masks with it. The
original code uses the mask-major layout (num_masks, batch, K); `from_mask_major` / `to_mask_major` convert at the
boundary (fixtures, the original's collator).

`sampler="uniform"` (default) can place a block anywhere, last row and column included. `sampler="original"`
reproduces the released sampler exactly (blocks strictly smaller than the grid, top-left corner drawn with an
exclusive upper bound), which never covers the last patch row or column; use it only to replicate the paper's runs.
"""

import math
from dataclasses import dataclass

import torch


def from_mask_major(indices) -> torch.Tensor:
    """The original's mask-major indices ((num_masks, batch, K) tensor, or a list of (batch, K) tensors as its
    collator returns) -> hf_mim's batch-first (batch, num_masks, K)."""
    if isinstance(indices, list | tuple):
        return torch.stack(list(indices), dim=1)
    if indices.ndim != 3:
        raise ValueError(f"Expected mask-major indices of shape (num_masks, batch, K), got {tuple(indices.shape)}.")
    return indices.transpose(0, 1).contiguous()


def to_mask_major(indices: torch.Tensor) -> torch.Tensor:
    """hf_mim's batch-first (batch, num_masks, K) indices -> the original's mask-major (num_masks, batch, K)."""
    if indices.ndim != 3:
        raise ValueError(f"Expected batch-first indices of shape (batch, num_masks, K), got {tuple(indices.shape)}.")
    return indices.transpose(0, 1)


@dataclass
class MultiBlockMasks:
    """context_indices: (batch, num_context, K_ctx); target_indices: (batch, num_targets, K_tgt). Row-major patch
    indices per image, batch-first (see the module docstring for the original's layout)."""

    context_indices: torch.Tensor
    target_indices: torch.Tensor


class MultiBlockMasking:
    # One block size is drawn per batch and every index list is truncated to the batch minimum: these fields' last
    # dimension changes from batch to batch (a collator marks it dynamic for torch.compile).
    variable_lengths = ("context_indices", "target_indices")

    def __init__(
        self,
        num_targets: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        target_aspect_ratio: tuple[float, float] = (0.75, 1.5),
        num_context: int = 1,
        context_scale: tuple[float, float] = (0.85, 1.0),
        context_aspect_ratio: tuple[float, float] = (1.0, 1.0),
        min_keep: int = 10,
        allow_overlap: bool = False,
        sampler: str = "uniform",
        max_attempts: int = 1000,
    ):
        if sampler not in ("uniform", "original"):
            raise ValueError(f"sampler must be 'uniform' or 'original', got {sampler!r}")
        self.num_targets = num_targets
        self.target_scale = tuple(target_scale)
        self.target_aspect_ratio = tuple(target_aspect_ratio)
        self.num_context = num_context
        self.context_scale = tuple(context_scale)
        self.context_aspect_ratio = tuple(context_aspect_ratio)
        self.min_keep = min_keep
        self.allow_overlap = allow_overlap
        self.sampler = sampler
        self.max_attempts = max_attempts
        self._iteration = -1  # the original seeds the block-size generator with an iteration counter

    def block_size(self, grid, scale, aspect_ratio, generator: torch.Generator) -> tuple[int, int]:
        height, width = grid
        uniform = torch.rand(1, generator=generator).item()
        block_scale = scale[0] + uniform * (scale[1] - scale[0])
        max_keep = int(height * width * block_scale)
        ratio = aspect_ratio[0] + uniform * (aspect_ratio[1] - aspect_ratio[0])
        h = int(round(math.sqrt(max_keep * ratio)))
        w = int(round(math.sqrt(max_keep / ratio)))
        limit_h, limit_w = (height - 1, width - 1) if self.sampler == "original" else (height, width)
        return max(1, min(h, limit_h)), max(1, min(w, limit_w))

    def _corner(self, extent: int, size: int, generator) -> int:
        high = extent - size if self.sampler == "original" else extent - size + 1
        return int(torch.randint(0, max(high, 1), (1,), generator=generator).item())

    def place_block(self, grid, size, generator, acceptable_regions=None):
        """(indices, complement) of one block; with acceptable regions, constraints are dropped one by one after
        every 20 failed placements (the original's rule), and the search is bounded by `max_attempts`."""
        height, width = grid
        h, w = size
        constraints = acceptable_regions or []
        dropped, timeout = 0, 20
        for _ in range(self.max_attempts):
            top, left = self._corner(height, h, generator), self._corner(width, w, generator)
            mask = torch.zeros(height, width, dtype=torch.int32)
            mask[top : top + h, left : left + w] = 1
            for region in constraints[: max(len(constraints) - dropped, 0)]:
                mask *= region
            indices = mask.flatten().nonzero().flatten()
            if len(indices) > self.min_keep:
                complement = torch.ones(height, width, dtype=torch.int32)
                complement[top : top + h, left : left + w] = 0
                return indices, complement
            timeout -= 1
            if timeout == 0:
                dropped, timeout = dropped + 1, 20
        raise RuntimeError(
            f"No valid {h}x{w} block with more than min_keep={self.min_keep} patches on a {height}x{width} grid after "
            f"{self.max_attempts} attempts; lower min_keep or raise the block scale."
        )

    def __call__(
        self, batch_size: int, grid: tuple[int, int], generator: torch.Generator | None = None
    ) -> MultiBlockMasks:
        if self.sampler == "original" and generator is None:
            # the original seeds block sizes with an iteration counter (shared across its loader workers; here
            # per process, so exact replication needs num_workers=0)
            self._iteration += 1
            seed = self._iteration
        else:
            # drawn from the (restorable, per-worker-seeded) RNG, so workers and epochs get different sizes
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
        size_generator = torch.Generator().manual_seed(seed)
        target_size = self.block_size(grid, self.target_scale, self.target_aspect_ratio, size_generator)
        context_size = self.block_size(grid, self.context_scale, self.context_aspect_ratio, size_generator)
        for name, (h, w) in (("target", target_size), ("context", context_size)):
            if h * w <= self.min_keep:
                raise ValueError(
                    f"The {name} block ({h}x{w} on a {grid[0]}x{grid[1]} grid) can never have more than "
                    f"min_keep={self.min_keep} patches; use a larger image, a larger scale or a smaller min_keep."
                )
        targets, contexts = [], []
        for _ in range(batch_size):
            image_targets, complements = [], []
            for _ in range(self.num_targets):
                indices, complement = self.place_block(grid, target_size, generator)
                image_targets.append(indices)
                complements.append(complement)
            regions = None if self.allow_overlap else complements
            image_contexts = [
                self.place_block(grid, context_size, generator, regions)[0] for _ in range(self.num_context)
            ]
            targets.append(image_targets)
            contexts.append(image_contexts)
        keep_target = min(len(i) for image in targets for i in image)
        keep_context = min(len(i) for image in contexts for i in image)
        target_indices = torch.stack([torch.stack([block[:keep_target] for block in image]) for image in targets])
        context_indices = torch.stack([torch.stack([block[:keep_context] for block in image]) for image in contexts])
        return MultiBlockMasks(context_indices, target_indices)
