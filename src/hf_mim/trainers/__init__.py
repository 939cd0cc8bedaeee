from .arguments import CapiTrainingArguments, IJepaTrainingArguments, MimPretrainingArguments
from .capi_trainer import CapiTrainer
from .ijepa_trainer import IJepaTrainer
from .pretraining_trainer import MimPretrainingTrainer, NonFiniteLossError
from .schedules import linear, warmup_then_cosine

__all__ = [
    "CapiTrainer",
    "CapiTrainingArguments",
    "IJepaTrainer",
    "IJepaTrainingArguments",
    "MimPretrainingArguments",
    "MimPretrainingTrainer",
    "NonFiniteLossError",
    "linear",
    "warmup_then_cosine",
]
