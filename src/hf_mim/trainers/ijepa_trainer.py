"""`IJepaTrainer`: I-JEPA's parameter groups on top of `MimPretrainingTrainer` (schedules come from
`IJepaTrainingArguments`)."""

from torch import nn

from .pretraining_trainer import MimPretrainingTrainer, bias_and_vector_groups


class IJepaTrainer(MimPretrainingTrainer):
    """Weight decay on every matrix of the context encoder and predictor (the predictor's mask token included, as in
    the original `init_opt`), none on biases and 1-D parameters; frozen sin-cos tables and the EMA target encoder
    are not optimised."""

    def parameter_groups(self, model: nn.Module) -> list[dict]:
        return bias_and_vector_groups(model)
