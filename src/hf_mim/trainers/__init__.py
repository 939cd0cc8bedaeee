from ..optim.schedules import linear, warmup_then_cosine
from .arguments import (
    CaeTrainingArguments,
    CapiTrainingArguments,
    IJepaTrainingArguments,
    MimPretrainingArguments,
    VicreglTrainingArguments,
)
from .cae_trainer import CaeTrainer
from .capi_trainer import CapiTrainer
from .ijepa_trainer import IJepaTrainer
from .pretraining_trainer import MimPretrainingTrainer, NonFiniteLossError
from .vicregl_trainer import VicreglTrainer

__all__ = [
    "CaeTrainer",
    "CaeTrainingArguments",
    "CapiTrainer",
    "CapiTrainingArguments",
    "IJepaTrainer",
    "IJepaTrainingArguments",
    "MimPretrainingArguments",
    "MimPretrainingTrainer",
    "NonFiniteLossError",
    "VicreglTrainer",
    "VicreglTrainingArguments",
    "linear",
    "warmup_then_cosine",
]
