"""Defaults shared by every hf_mim `TrainingArguments` subclass (pretraining, fine-tuning, segmentation)."""

import argparse
from dataclasses import dataclass, field

import torch


@dataclass
class PinMemoryOnlyWithAccelerator:
    """Mixin before `TrainingArguments`: `--dataloader_pin_memory` (on by default, as in transformers) is turned off on
    a machine without an accelerator, where pinning does nothing and torch's DataLoader warns about it on every run
    ("'pin_memory' argument is set as true but no accelerator is found")."""

    dataloader_pin_memory: bool = field(
        default=True,
        metadata={"help": "Pin batches in page-locked memory for the copy to the accelerator; off without one."},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.dataloader_pin_memory and not torch.accelerator.is_available():
            self.dataloader_pin_memory = False


# transformers' `--logging_steps` default: a run shorter than this logs no loss at all before it ends.
TRANSFORMERS_LOGGING_STEPS = 500
LOG_LINES_PER_RUN = 20


def logging_steps_for(max_steps: int) -> int:
    """`--logging_steps` for a run of `max_steps` when the user did not choose one: about `LOG_LINES_PER_RUN` loss
    lines over the run, never rarer than transformers' every 500 steps. A 40-step run logs every 2 steps (where the
    default 500 showed no loss at all), a 1000-step one every 50, a 100k-step one every 500."""
    return max(1, min(TRANSFORMERS_LOGGING_STEPS, max_steps // LOG_LINES_PER_RUN))


def options_given(parser: argparse.ArgumentParser, argv: list[str], names: tuple[str, ...]) -> set[str]:
    """Which of the options `names` (their `dest`s) the command line `argv` sets, however spelled: `--name V`,
    `--name=V`, or an abbreviation argparse accepts (`--logging_step 5`). Compared with a marker rather than a
    default, so an explicit value equal to the default still counts as given."""
    unset = object()
    namespace = argparse.Namespace(**dict.fromkeys(names, unset))  # argparse only fills in attributes not yet present
    parsed, _ = parser.parse_known_args(argv, namespace)
    return {name for name in names if getattr(parsed, name) is not unset}
