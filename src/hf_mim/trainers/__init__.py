from .arguments import CapiTrainingArguments, MimPretrainingArguments
from .capi_trainer import CapiTrainer
from .pretraining_trainer import MimPretrainingTrainer, NonFiniteLossError
from .schedules import linear, warmup_then_cosine

__all__ = [
    "CapiTrainer",
    "CapiTrainingArguments",
    "MimPretrainingArguments",
    "MimPretrainingTrainer",
    "NonFiniteLossError",
    "linear",
    "warmup_then_cosine",
]
