"""Collators: stack pixel values, drop (and count) undecodable images, and draw the model's masks."""

import torch

from .positional import batch_rng, unreadable_files


class PretrainingCollator:
    """Stacks `pixel_values`; drops examples whose image could not be decoded and reports them in the batch
    (`num_skipped`, `skipped_files`) so the trainer can count them across workers and ranks.

    `mask_generator(batch_size, grid)` returns an object with tensor fields; they are added to the batch under the
    same names (e.g. CAPI's `visible_indices` / `predict_indices`). It is the pretraining model's own generator
    (`for_model`): the mask settings are read from the config in one place, the model's `__init__`. Masks are seeded
    by the examples' `sample_seed` when they carry one (`PositionalDataset`: the same batch always gets the same
    masks, however far the loader ran ahead), else drawn from torch's global RNG (the originals' order).

    The fields named in `dynamic_lengths` have a last dimension that changes from batch to batch; it is marked
    dynamic for torch.compile (`mark_length_dynamic`). By default they are the ones the generator declares in its
    `variable_lengths` (I-JEPA's block sizes are drawn per batch).
    """

    def __init__(self, patch_size: int, mask_generator=None, dynamic_lengths: tuple[str, ...] | None = None):
        # Both checked here, so that arguments given in the wrong order fail at construction, not in the first batch.
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        if mask_generator is not None and not callable(mask_generator):
            raise TypeError(f"mask_generator must be callable (batch_size, grid) or None, got {mask_generator!r}")
        self.patch_size = patch_size
        self.mask_generator = mask_generator
        if dynamic_lengths is None:
            dynamic_lengths = getattr(mask_generator, "variable_lengths", ())
        self.dynamic_lengths = tuple(dynamic_lengths)

    @classmethod
    def for_model(cls, model) -> "PretrainingCollator":
        """The collator of a pretraining model: its patch size and its mask generator (`model.mask_generator`, built
        once from its config), so the batches carry exactly the masks the model would draw itself."""
        return cls(model.config.patch_size, model.mask_generator)

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
