"""Augmentations and masks as a pure function of position, so a run resumed from any step sees the same data.

A DataLoader runs ahead of training: accelerate prefetches the next batch before it hands out the current one, and
worker processes keep `prefetch_factor` batches in flight. When crops, flips, colour jitter and masks come from the
global RNG, the state a checkpoint saves at step k already includes the draws of batches k+1, k+2, ..., and a run
resumed from it draws different augmentations from the uninterrupted one (measured on main before this module: 0 of
76 CAPI tensors identical after resuming mid-epoch). Here every example's random draws are seeded by
(seed, epoch, dataset index) and every batch's masks by the seeds of its examples, and the global RNG is left as it
was: it then belongs to the model alone (drop path), which the Trainer checkpoints and restores exactly.

`PositionalDataset` also refills: an example whose image cannot be decoded is replaced by the next decodable image
of the dataset (deterministically), and the unreadable file travels with the batch so the trainer can name it.
"""

import contextlib
import logging
import random
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

logger = logging.getLogger(__name__)

SEED_FIELD = "sample_seed"  # the example's seed, read by the collators to seed the batch's masks
REFILLED_FIELD = "replaced_files"  # undecodable files this example stands in for


def position_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, epoch, index): neighbouring positions get unrelated streams."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def batch_seed(seeds: Sequence[int]) -> int:
    """One seed for a batch from its examples' seeds (order matters: the batch is the same batch only in order)."""
    return position_seed(*(s & 0xFFFFFFFF for s in seeds), *(s >> 32 for s in seeds))


def _numpy_global_state():
    # the legacy tuple (with MT19937's cached Gaussian) where it exists; a dict for another global bit generator
    get_bit_generator = getattr(np.random, "get_bit_generator", None)  # numpy >= 1.25
    legacy = get_bit_generator is None or isinstance(get_bit_generator(), np.random.MT19937)
    return np.random.get_state(legacy=legacy)


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator, numpy's and Python's global RNGs with `seed` inside the block, and give each back
    the exact state it had before. Only the CPU generator: data transforms run on CPU, and touching CUDA here would
    change the model's RNG on a GPU.

    In a DataLoader worker process numpy's state is not given back: there the global RNGs serve only the dataset and
    the collator, whose draws are all seeded here by position, and copying numpy's state out and back (624 words one
    at a time) costs 72 us per example, about 2 % of decoding and cropping an ImageNet-size JPEG."""
    torch_state = torch.get_rng_state()
    numpy_state = _numpy_global_state() if get_worker_info() is None else None
    python_state = random.getstate()
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        if numpy_state is not None:
            np.random.set_state(numpy_state)
        random.setstate(python_state)


def _is_undecodable(example) -> bool:
    return isinstance(example, Mapping) and "pixel_values" in example and example["pixel_values"] is None


class PositionalDataset(Dataset):
    """Wraps a map-style dataset whose transform draws from the global RNG (e.g. `datasets.Dataset.with_transform`
    with hf_mim's pretraining transforms) so that example `index` of epoch `epoch` is always the same tensor.

    `set_epoch` must be called before each epoch's DataLoader iterator is created: `MimPretrainingTrainer` does it
    in `on_epoch_begin`. The epoch is kept in shared memory, so DataLoader worker processes, persistent ones
    included (forked or spawned: torch shares the tensor's storage with them), read the new epoch for every index of
    the new iterator. Each example gets `sample_seed`, from which the collator seeds its masks, and `replaced_files`
    when it stands in for undecodable images."""

    def __init__(self, dataset, seed: int, refill: bool = True, seeded: bool = True):
        self.dataset = dataset
        self.seed = int(seed)
        self.refill = refill
        self.seeded = seeded  # False: draws come from the RNG as it stands (the originals' order); refill only
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        seed = position_seed(self.seed, self.epoch, index)
        with self._rng(seed):
            example = self.dataset[index]
        if not isinstance(example, Mapping):
            return example
        replaced = []
        attempt = 0
        while self.refill and _is_undecodable(example):
            replaced.append(example.get("decode_error") or f"<example {(index + attempt) % len(self)}>")
            attempt += 1
            if attempt >= len(self):
                raise RuntimeError(f"No image in the dataset could be decoded; the first failures: {replaced[:5]}")
            with self._rng(seed):  # the stand-in gets this position's draws: still a pure function of position
                example = self.dataset[(index + attempt) % len(self)]
        example = dict(example)
        if self.seeded:
            example[SEED_FIELD] = seed
        if replaced:
            example[REFILLED_FIELD] = replaced
        return example

    def _rng(self, seed: int):
        return seeded_rng(seed) if self.seeded else contextlib.nullcontext()


def unreadable_files(examples: Sequence[Mapping]) -> list[str]:
    """Every undecodable file a batch's examples report: dropped examples (`decode_error`) and refilled ones."""
    names = []
    for example in examples:
        if example.get("pixel_values") is None:
            names.append(example.get("decode_error") or "<unknown>")
        names.extend(example.get(REFILLED_FIELD) or ())
    return names


@contextlib.contextmanager
def batch_rng(examples: Sequence[Mapping]) -> Iterator[None]:
    """The RNG a collator draws a batch's masks from: seeded by its examples' seeds when they carry them (a
    `PositionalDataset`), else the global RNG as it stands (the originals' draw order)."""
    seeds = [example.get(SEED_FIELD) for example in examples]
    if seeds and all(seed is not None for seed in seeds):
        with seeded_rng(batch_seed(seeds)):
            yield
    else:
        yield


def drop_unreadable_rows(transform):
    """For `datasets.IterableDataset.map(..., batched=True)`: run `transform` (a `SafeImageTransform`), drop the rows
    whose image could not be decoded and list their files under `replaced_files` of the first row kept, so a streamed
    batch is never short of images and the trainer still names every unreadable file. Files of a map batch in which
    nothing decoded are logged here (no row is left to carry them)."""

    def apply(examples: dict) -> dict:
        columns = transform(examples)
        keep = [i for i, value in enumerate(columns["pixel_values"]) if value is not None]
        failed = [error for error in columns.get("decode_error", []) if error is not None]
        kept = {name: [values[i] for i in keep] for name, values in columns.items()}
        kept[REFILLED_FIELD] = [[] for _ in keep]
        if keep:
            kept[REFILLED_FIELD][0] = failed
        elif failed:
            logger.warning("Skipped %d unreadable image(s): %s", len(failed), "; ".join(failed))
        return kept

    return apply
