"""`VicreglTrainer`: VICRegL's optimizers (LARS for ResNet, AdamW for ConvNeXt), its batch-scaled lr, and
SyncBatchNorm under multi-process GPU training, on top of `MimPretrainingTrainer` (schedules, loss-part and
feature-health logging, NaN guard, resume)."""

import torch
from torch import nn
from transformers.utils import logging

from ..optim import LARS
from .pretraining_trainer import MimPretrainingTrainer

logger = logging.get_logger(__name__)

DEFAULT_BASE_LR = {"lars": 0.3, "adamw": 7.5e-4}


def resolve_optimizer(args, backbone_type: str) -> str:
    choice = args.vicregl_optimizer
    if choice == "auto":
        return "lars" if backbone_type == "resnet" else "adamw"
    if choice not in ("lars", "adamw"):
        raise ValueError(f"vicregl_optimizer must be 'auto', 'lars' or 'adamw', got {choice!r}.")
    return choice


class VicreglTrainer(MimPretrainingTrainer):
    def __init__(self, model=None, args=None, *rest, **kwargs):
        config = model.config
        if args.per_device_train_batch_size * args.world_size < 2:
            # var() over one image has no degrees of freedom: the loss would be NaN from the first step
            raise ValueError(
                "VICRegL's variance term needs at least 2 images per batch over all ranks; got "
                f"--per_device_train_batch_size {args.per_device_train_batch_size} x world size {args.world_size}."
            )
        self.vicregl_optimizer = resolve_optimizer(args, config.backbone_type)
        if args.base_learning_rate is not None or args.learning_rate <= 0:
            base = args.base_learning_rate or DEFAULT_BASE_LR[self.vicregl_optimizer]
            args.learning_rate = (
                base * args.train_batch_size * args.gradient_accumulation_steps * args.world_size / 256
            )
            logger.info("lr = %g x %d / 256 = %g", base, args.train_batch_size * args.world_size, args.learning_rate)
        if args.world_size > 1 and args.sync_batch_norm and torch.cuda.is_available() and not args.use_cpu:
            # The original converts the whole model; keys are unchanged (SyncBatchNorm has BatchNorm's tensors).
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        super().__init__(model, args, *rest, **kwargs)

    def parameter_groups(self, model: nn.Module) -> list[dict]:
        """The original's groups: weight decay (and, with LARS, trust-ratio adaptation) on parameters with more than
        one dimension only."""
        matrices, vectors = [], []
        for param in model.parameters():
            if param.requires_grad:
                (vectors if param.ndim == 1 else matrices).append(param)
        return [
            {"params": matrices, "lr_multiplier": 1.0, "weight_decay_multiplier": 1.0, "lars_adaptation": True},
            {"params": vectors, "lr_multiplier": 1.0, "weight_decay_multiplier": 0.0, "lars_adaptation": False},
        ]

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        if self.vicregl_optimizer == "adamw":
            self.optimizer = super().create_optimizer(model)
            for group in self.optimizer.param_groups:
                group.pop("lars_adaptation", None)
            return self.optimizer
        model = self.model if model is None else model
        args = self.args
        groups = []
        for group in self.parameter_groups(model):
            if group["params"]:
                decay = args.lars_weight_decay * group["weight_decay_multiplier"]
                groups.append({**group, "lr": args.learning_rate, "weight_decay": decay})
        self.optimizer = LARS(groups, lr=args.learning_rate, momentum=args.lars_momentum, eta=args.lars_eta)
        return self.optimizer
