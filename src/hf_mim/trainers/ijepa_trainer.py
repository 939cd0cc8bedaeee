"""`IJepaTrainer`: I-JEPA's parameter groups on top of `MimPretrainingTrainer` (schedules come from
`IJepaTrainingArguments`)."""

from torch import nn

from .pretraining_trainer import MimPretrainingTrainer


class IJepaTrainer(MimPretrainingTrainer):
    """Weight decay on every matrix of the context encoder and predictor (the predictor's mask token included, as in
    the original `init_opt`), none on biases and 1-D parameters; frozen sin-cos tables and the EMA target encoder
    are not optimised."""

    def parameter_groups(self, model: nn.Module) -> list[dict]:
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if name.endswith(".bias") or param.ndim == 1 else decay).append(param)
        return [
            {"params": decay, "lr_multiplier": 1.0, "weight_decay_multiplier": 1.0},
            {"params": no_decay, "lr_multiplier": 1.0, "weight_decay_multiplier": 0.0},
        ]
