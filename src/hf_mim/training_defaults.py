"""Defaults shared by every hf_mim `TrainingArguments` subclass (pretraining, fine-tuning, segmentation)."""

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
