"""`CaeTrainer`: CAE's optimisation on top of `MimPretrainingTrainer` (schedules from `CaeTrainingArguments`)."""

from torch import nn

from .pretraining_trainer import MimPretrainingTrainer, bias_and_vector_groups


class CaeTrainer(MimPretrainingTrainer):
    """No weight decay on biases and 1-D parameters (norms, layer scales), decay on everything else including the cls
    and mask tokens (the CAE pretraining model declares no `no_weight_decay` set); the fixed sin-cos tables are
    buffers-like frozen parameters and the tokenizer / CLIP teacher sits outside the model, so neither is optimised."""

    def parameter_groups(self, model: nn.Module) -> list[dict]:
        return bias_and_vector_groups(model)

    def schedule_options(self) -> dict:
        # the original's cosine_scheduler warms up as np.linspace(0, peak, warmup): the peak comes one step earlier
        return {"linspace_warmup": getattr(self.args, "linspace_warmup", True)}
