"""`CapiTrainer`: CAPI's parameter groups and schedules on top of `MimPretrainingTrainer`."""

from torch import nn

from .pretraining_trainer import MimPretrainingTrainer, steps_from_ratio


class CapiTrainer(MimPretrainingTrainer):
    """Parameter groups (those of facebookresearch/capi's train_capi.py and its default config):

    * student backbone, predictor and prediction head: AdamW(0.9, 0.95), weight decay `weight_decay` except on
      norms, biases and tokens (0; `original_weight_decay_groups=True` gives the original's multipliers instead:
      biases 0, norm weights x0.1, tokens x1); the patch embedding trains at `patch_embed_lr_multiplier` x lr;
    * RoPE tables are analytic buffers, never parameters, so they are frozen by construction;
    * clustering head: its own peak lr (`clustering_learning_rate`, same warmup/cosine shape) and a fixed weight
      decay `clustering_weight_decay` (torch's AdamW default 0.01 in the original);
    * teacher: not optimised (EMA only).

    Schedules (lr, clustering lr, teacher momentum) have the original `WarmupThenCosine` shape: warmup as
    `np.linspace(start, peak, warmup)` (`linspace_warmup`), then a truncated cosine; indexed by optimizer step
    (`schedule_step_offset` 0: the original reads `schedule[iteration]` before its step).
    """

    def parameter_groups(self, model: nn.Module) -> list[dict]:
        args = self.args
        groups: dict[tuple, list] = {}
        clustering = []
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("clustering_head."):
                clustering.append(param)
                continue
            lr_multiplier = args.patch_embed_lr_multiplier if "patch_embeddings" in name else 1.0
            if args.original_weight_decay_groups:  # utils.get_params_groups of the original
                wd_multiplier = (
                    0.0 if name.endswith(".bias") else (0.1 if "norm" in name and "weight" in name else 1.0)
                )
            else:
                wd_multiplier = 0.0 if self.is_no_decay(name, param) else 1.0
            groups.setdefault((lr_multiplier, wd_multiplier), []).append(param)
        result = [
            {"params": params, "lr_multiplier": lr, "weight_decay_multiplier": wd}
            for (lr, wd), params in groups.items()
        ]
        if clustering:
            result.append(
                {
                    "params": clustering,
                    "lr_multiplier": args.clustering_learning_rate / args.learning_rate,
                    "weight_decay": args.clustering_weight_decay,
                }
            )
        return result

    def schedule_options(self) -> dict:
        # CAPI's WarmupThenCosine warms up as np.linspace(start, peak, warmup): the peak comes one step earlier
        return {"linspace_warmup": self.args.linspace_warmup}

    def momentum_warmup_steps(self, total: int) -> int:
        if self.args.teacher_momentum_warmup_steps:
            return self.args.teacher_momentum_warmup_steps
        return steps_from_ratio(self.args.teacher_momentum_warmup_ratio, total)
