"""Collators: stack pixel values, drop (and count) undecodable images, and draw the method's masks."""

import torch

from ..masking import InverseBlockMasking
from .positional import batch_rng, unreadable_files


class PretrainingCollator:
    """Stacks `pixel_values`; drops examples whose image could not be decoded and reports them in the batch
    (`num_skipped`, `skipped_files`) so the trainer can count them across workers and ranks.

    `mask_generator(batch_size, grid)` returns an object with tensor fields; they are added to the batch under the
    same names (e.g. CAPI's `visible_indices` / `predict_indices`). Masks are seeded by the examples' `sample_seed`
    when they carry one (`PositionalDataset`: the same batch always gets the same masks, however far the loader ran
    ahead), else drawn from torch's global RNG (the originals' order). The fields named in `dynamic_lengths` have a
    last dimension that changes from batch to batch; it is marked dynamic for torch.compile (`mark_length_dynamic`).
    """

    def __init__(self, patch_size: int, mask_generator=None, dynamic_lengths: tuple[str, ...] = ()):
        self.patch_size = patch_size
        self.mask_generator = mask_generator
        self.dynamic_lengths = tuple(dynamic_lengths)

    def __call__(self, examples: list[dict]) -> dict:
        good = [e for e in examples if e.get("pixel_values") is not None]
        skipped = unreadable_files(examples)
        if not good:
            raise RuntimeError(f"Every image in this batch failed to decode: {skipped}")
        pixel_values = torch.stack([e["pixel_values"] for e in good])
        batch = {"pixel_values": pixel_values, "num_skipped": torch.tensor([len(skipped)]), "skipped_files": skipped}
        if self.mask_generator is not None:
            grid = (pixel_values.shape[-2] // self.patch_size, pixel_values.shape[-1] // self.patch_size)
            with batch_rng(good):
                masks = self.mask_generator(pixel_values.shape[0], grid)
            batch.update(vars(masks))
            for name in self.dynamic_lengths:
                mark_length_dynamic(batch[name])
        return batch


def mark_length_dynamic(indices: torch.Tensor) -> None:
    """Tells torch.compile that the last dimension of `indices` varies from batch to batch, so that the first
    compilation already covers every length; unmarked, dynamo compiles the first length as a constant and needs one
    recompilation per such dimension to learn that it varies. Only a hint on this tensor object: a copy (out of a
    DataLoader worker process, onto a GPU) loses it, and dynamo's automatic dynamic shapes take over from there."""
    from torch._dynamo import maybe_mark_dynamic  # here: only collators with varying lengths need torch._dynamo

    maybe_mark_dynamic(indices, indices.ndim - 1)


def ijepa_collator(config) -> PretrainingCollator:
    """The collator for `IJepaForPreTraining`: multi-block `context_indices` / `target_indices` from the config.
    Their lengths (the block sizes) are drawn per batch, as in the original: marked dynamic for torch.compile."""
    from ..models.ijepa.modeling_ijepa import multiblock_masking

    lengths = ("context_indices", "target_indices")
    return PretrainingCollator(config.patch_size, multiblock_masking(config), dynamic_lengths=lengths)


def capi_collator(config) -> PretrainingCollator:
    """The collator for `CapiForPreTraining`, with CAPI's inverse-block masks from the config."""
    generator = InverseBlockMasking(
        config.mask_ratio, config.prediction_subsampling, config.mask_min_aspect, roll=config.mask_roll
    )
    return PretrainingCollator(config.patch_size, generator)
