"""Skipping unreadable image files: one record per run, one collator and one Trainer mixin for every example.

A corrupt or truncated file costs one image, not the run. The pieces, in the order data flows through them:

* a `Dataset.with_transform` function decodes each file with `hf_mim.data.transforms.decode_image`; for a file it
  cannot read it returns `pixel_values=None` and `skipped_file=(name, error)` (`decode_failure` makes the pair);
* `SkippingCollator` stacks a batch. Every unreadable example keeps its slot as a placeholder (zero image, ignored
  label), so that every process's batch keeps its size (distributed evaluation gathers equal shapes); the batch
  carries `readable` (bool per example) and `skipped_files` (the (name, error) pairs);
* where the batch is used, in the main process: `SkippedFilesTrainerMixin` (for a `transformers.Trainer`) or
  `readable_part` (for a plain loop) drop the placeholders and record the files in a `SkippedFiles`;
* `SkippedFiles` names each file once (a warning the first time it fails, not every epoch) and gives the end-of-run
  line, `summary()`: "Skipped 2 unreadable image(s): a.jpg (OSError: image file is truncated), ...".

Records are kept where batches are consumed, not in the collator: with `dataloader_num_workers > 0` the collator runs
in worker processes, whose copies of a record would warn again every epoch and never reach the end-of-run total.
"""

import logging
from collections.abc import Iterable, Iterator, Mapping

import torch

logger = logging.getLogger(__name__)

SKIPPED_FILES_KEY = "skipped_files"
READABLE_KEY = "readable"


def _reason(error) -> str:
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    return str(error or "")


class SkippedFiles:
    """The unreadable files of a run, each once, in the order they first failed.

    `add(name, error)` records a file and returns True the first time `name` is seen, when it also logs a warning
    (logger `hf_mim.data.skipped`; `warn=False` silences it); a file failing again (next epoch, another split) is
    neither warned about nor counted again. `len(record)` is the number of files, `name in record` and iteration
    (names) work, `errors` maps name -> reason. `summary()` is the end-of-run line. `gathered()` merges every
    process's record under torch.distributed.

        skipped = SkippedFiles()
        skipped.add("broken.jpg", OSError("image file is truncated"))  # True, and a warning
        skipped.add("broken.jpg", OSError("image file is truncated"))  # False: already named
        print(skipped.summary())  # Skipped 1 unreadable image(s): broken.jpg (OSError: image file is truncated)
    """

    def __init__(self, warn: bool = True, max_listed: int = 20):
        self.warn = warn
        self.max_listed = max_listed
        self._errors: dict[str, str] = {}

    def add(self, name: str, error: BaseException | str | None = None) -> bool:
        """Record `name` (a path, or another name of the file) that failed with `error` (an exception or its text).
        True when it is new (a warning is logged then), False when it was already recorded."""
        name = str(name)
        if name in self._errors:
            return False
        self._errors[name] = _reason(error)
        if self.warn:
            reason = self._errors[name]
            logger.warning("Skipping an unreadable image: %s%s", name, f" ({reason})" if reason else "")
        return True

    def update(self, entries: Iterable) -> int:
        """`add` each entry: a (name, error) pair, or a bare name (e.g. a `SafeImageTransform` "decode_error" text).
        Returns how many were new."""
        new = 0
        for entry in entries or ():
            if isinstance(entry, tuple | list):
                new += self.add(*entry)
            else:
                new += self.add(entry)
        return new

    @property
    def errors(self) -> dict[str, str]:
        """name -> reason ("OSError: image file is truncated"), in the order the files first failed."""
        return dict(self._errors)

    def __len__(self) -> int:
        return len(self._errors)

    def __contains__(self, name) -> bool:
        return str(name) in self._errors

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._errors))

    def summary(self) -> str:
        """The end-of-run line: "Skipped N unreadable image(s): name (reason), ..." (at most `max_listed` named, then
        "... and K more"); "Skipped 0 unreadable image(s)." when there were none."""
        if not self._errors:
            return "Skipped 0 unreadable image(s)."
        items = list(self._errors.items())
        shown = [f"{name} ({reason})" if reason else name for name, reason in items[: self.max_listed]]
        more = len(items) - len(shown)
        return (
            f"Skipped {len(items)} unreadable image(s): "
            + ", ".join(shown)
            + (f", ... and {more} more" if more else "")
        )

    def gathered(self) -> "SkippedFiles":
        """Every process's record merged (a new, silent record) when torch.distributed is initialised with several
        processes, else this record itself. A collective: call it on every process."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not distributed or torch.distributed.get_world_size() == 1:
            return self
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, list(self._errors.items()))
        merged = SkippedFiles(warn=False, max_listed=self.max_listed)
        for part in parts:
            merged.update(part)
        return merged


class SkippingCollator:
    """Collate examples of which some may be unreadable (`pixel_values` None, `skipped_file` a (name, error) pair).

    `placeholders` maps each key to stack to the value an unreadable example takes, and gives its dtype: e.g.
    `{"pixel_values": torch.zeros(3, 224, 224), "labels": -100}` (an ignored label keeps the slot out of losses and
    metrics). The batch holds those keys stacked (tensors of shape (B, ...)), `readable` (B,) bool and
    `skipped_files`: the (name, error) pairs of its unreadable examples (their `decode_error` text for examples of a
    `SafeImageTransform`). Consumers drop the placeholders: `SkippedFilesTrainerMixin`, `readable_part`.
    """

    def __init__(self, placeholders: Mapping):
        if "pixel_values" not in placeholders:
            raise ValueError("placeholders must give a value for 'pixel_values'.")
        self.placeholders = {key: torch.as_tensor(value) for key, value in placeholders.items()}

    def __call__(self, examples: list[dict]) -> dict:
        readable = [example.get("pixel_values") is not None for example in examples]
        batch = {}
        for key, placeholder in self.placeholders.items():
            values = [torch.as_tensor(e[key]) if ok else placeholder for e, ok in zip(examples, readable)]
            batch[key] = torch.stack([value.to(placeholder.dtype) for value in values])
        batch[READABLE_KEY] = torch.tensor(readable, dtype=torch.bool)
        batch[SKIPPED_FILES_KEY] = [_failure(e) for e, ok in zip(examples, readable) if not ok]
        return batch


def _failure(example: Mapping):
    """An unreadable example's (name, error) pair; a `SafeImageTransform` example's "decode_error" text."""
    if example.get("skipped_file"):
        return tuple(example["skipped_file"])
    return example.get("decode_error") or "<unnamed unreadable image>"


def readable_part(batch: Mapping, skipped: SkippedFiles | None = None) -> dict | None:
    """`batch` without its placeholder rows (`readable` False) and without the `readable` / `skipped_files` entries,
    whose files go to `skipped`; None when no example of the batch was readable (skip the batch). A batch without
    `readable` is returned as it is (a plain dict copy)."""
    batch = dict(batch)
    files = batch.pop(SKIPPED_FILES_KEY, None)
    if skipped is not None and files:
        skipped.update(files)
    readable = batch.pop(READABLE_KEY, None)
    if readable is None:
        return batch
    readable = torch.as_tensor(readable, dtype=torch.bool)
    if not bool(readable.any()):
        return None
    if bool(readable.all()):
        return batch
    size = readable.shape[0]
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == size:
            batch[key] = value[readable.to(value.device)]
    return batch


class SkippedFilesTrainerMixin:
    """For a `transformers.Trainer` whose collator is a `SkippingCollator` (list the mixin first:
    `class MyTrainer(SkippedFilesTrainerMixin, Trainer)`); a no-op for batches without `readable` / `skipped_files`.

    * `self.skipped_files` (a `SkippedFiles`, or the one passed as `skipped_files=`) records every unreadable file.
    * Training: placeholders are dropped from the batch; a batch in which every image failed is REFILLED with examples
      drawn at random (torch's global RNG) from `train_dataset` until it is readable, so the optimizer step trains on
      real images (skipping the step would desynchronise distributed processes and gradient accumulation).
    * Evaluation: placeholders stay (their labels are ignored, and every process's batch keeps its size); a batch in
      which every image failed is skipped - except under torch.distributed (the processes must gather together: it
      runs, its loss counted as 0) and as the last batch under `batch_eval_metrics` (it runs for the final
      `compute_result=True` call, its loss left out). Either way its placeholders' labels keep it out of the metrics.
    """

    max_refill_draws = 1000

    def __init__(self, *args, skipped_files: SkippedFiles | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.skipped_files = skipped_files if skipped_files is not None else SkippedFiles()

    def _take_skipped_files(self, inputs):
        if isinstance(inputs, Mapping) and SKIPPED_FILES_KEY in inputs:
            inputs = dict(inputs)
            self.skipped_files.update(inputs.pop(SKIPPED_FILES_KEY))
        return inputs

    def _refilled_batch(self, size: int) -> dict:
        dataset, collator = self.train_dataset, self.data_collator
        draws = 0
        while draws < self.max_refill_draws:
            indices = torch.randint(len(dataset), (size,)).tolist()
            draws += size
            batch = readable_part(collator([dataset[index] for index in indices]), self.skipped_files)
            if batch is not None:
                return batch
        raise RuntimeError(
            f"No readable image in {draws} random draws from the training data: {self.skipped_files.summary()}"
        )

    def training_step(self, model, inputs, *args, **kwargs):
        if isinstance(inputs, Mapping) and READABLE_KEY in inputs:
            size = len(inputs[READABLE_KEY])
            part = readable_part(inputs, self.skipped_files)
            inputs = part if part is not None else self._refilled_batch(size)
        return super().training_step(model, inputs, *args, **kwargs)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._take_skipped_files(inputs)
        readable = None
        if isinstance(inputs, Mapping) and READABLE_KEY in inputs:
            inputs = dict(inputs)
            readable = inputs.pop(READABLE_KEY)
        all_failed = readable is not None and not bool(torch.as_tensor(readable).any())
        if not all_failed:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        distributed = self.args.world_size > 1
        last_of_batch_metrics = self.args.batch_eval_metrics and self.accelerator.gradient_state.end_of_dataloader
        if not (distributed or last_of_batch_metrics):
            return None, None, None
        # The Trainer needs this batch: every process gathers together, and batch_eval_metrics computes its result on
        # the last batch. Its placeholders' labels are ignored by the metrics; its loss is left out (one process)
        # or, where every process must gather one, counted as 0.
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        if loss is not None:
            loss = torch.zeros_like(loss) if distributed else None
        return loss, logits, labels


__all__ = [
    "READABLE_KEY",
    "SKIPPED_FILES_KEY",
    "SkippedFiles",
    "SkippedFilesTrainerMixin",
    "SkippingCollator",
    "readable_part",
]
