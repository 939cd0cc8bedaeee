"""`transformers.Trainer` for supervised fine-tuning and linear probing of any image classifier with the MAE /
I-JEPA recipe: AdamW with layer-wise lr decay, Mixup / CutMix with soft-target cross-entropy, label smoothing,
top-1 / top-5 accuracy."""

from dataclasses import dataclass, field

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from transformers import Trainer, TrainingArguments
from transformers.utils import logging

from ..data.skipped import SkippedFilesTrainerMixin
from ..training_defaults import PinMemoryOnlyWithAccelerator
from .layer_decay import layer_decay_parameter_groups, num_backbone_layers
from .mixup import MixupCutmix

logger = logging.get_logger(__name__)

HEAD_MODULE_NAMES = ("classifier", "pooler", "head", "fc_norm")


@dataclass
class FinetuningArguments(PinMemoryOnlyWithAccelerator, TrainingArguments):
    """`TrainingArguments` with the fine-tuning recipe's knobs; defaults follow MAE's ViT-B fine-tuning (AdamW,
    weight decay 0.05, cosine schedule with 5 % warmup, layer decay 0.75, Mixup 0.8 / CutMix 1.0, label smoothing
    0.1, no gradient clipping) and evaluate every epoch. MAE scales the lr with the batch: lr = 5e-4 * batch / 256
    (`base_learning_rate` does that when set)."""

    learning_rate: float = field(default=1e-3, metadata={"help": "Peak lr of the head (blocks get less)."})
    base_learning_rate: float | None = field(
        default=None,
        metadata={"help": "If set, learning_rate = base_learning_rate * total batch size / 256 (MAE's blr)."},
    )
    weight_decay: float = field(default=0.05)
    lr_scheduler_type: str = field(default="cosine")
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup steps, or a fraction of training if < 1."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "0: no gradient clipping (MAE fine-tuning)."})
    per_device_train_batch_size: int = field(default=32)
    per_device_eval_batch_size: int = field(default=64)
    eval_strategy: str = field(default="epoch")
    logging_steps: float = field(default=10)
    remove_unused_columns: bool = field(default=False)
    layer_decay: float = field(
        default=0.75, metadata={"help": "Layer-wise lr decay: block k trains at lr * decay^(L + 1 - k); 1 disables."}
    )
    mixup_alpha: float = field(default=0.8, metadata={"help": "Mixup Beta parameter (0 disables)."})
    cutmix_alpha: float = field(default=1.0, metadata={"help": "CutMix Beta parameter (0 disables)."})
    mixup_prob: float = field(default=1.0, metadata={"help": "Probability of mixing a batch."})
    mixup_switch_prob: float = field(default=0.5, metadata={"help": "Probability of CutMix over Mixup."})
    label_smoothing: float = field(default=0.1, metadata={"help": "Label smoothing of the (mixed) targets."})
    linear_probe: bool = field(
        default=False,
        metadata={
            "help": "Train only the head (classifier and pooler); the backbone is frozen and runs in eval mode."
        },
    )
    top_k: int = field(default=5, metadata={"help": "Report top-1 and top-k accuracy."})

    def __post_init__(self):
        super().__post_init__()
        if self.base_learning_rate is not None:
            total = self.per_device_train_batch_size * self.gradient_accumulation_steps * max(self.world_size, 1)
            self.learning_rate = self.base_learning_rate * total / 256
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must lie in (0, 1], got {self.layer_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")


def topk_accuracy(logits, labels, num_classes: int, top_k=(1, 5)) -> dict[str, float]:
    """{"top1": ..., "top5": ...} with torchmetrics' `MulticlassAccuracy(top_k=k, average="micro")`; k is capped at
    the number of classes (the key keeps the requested k). Negative labels (-100: the placeholders of unreadable
    images) are left out."""
    logits = torch.as_tensor(logits).float()
    labels = torch.as_tensor(labels).long()
    keep = labels >= 0
    logits, labels = logits[keep], labels[keep]
    results = {}
    for k in top_k:
        metric = MulticlassAccuracy(num_classes=num_classes, top_k=min(k, num_classes), average="micro")
        results[f"top{k}"] = float(metric(logits, labels))
    return results


def build_compute_metrics(num_classes: int, top_k=(1, 5)):
    """A `compute_metrics` for `Trainer`: top-1 / top-k accuracy of the logits."""

    def compute_metrics(eval_pred) -> dict[str, float]:
        predictions = eval_pred.predictions
        if isinstance(predictions, tuple | list):
            predictions = predictions[0]
        return topk_accuracy(predictions, eval_pred.label_ids, num_classes, top_k)

    return compute_metrics


def backbone_module(model: nn.Module) -> nn.Module | None:
    """The base model of a `PreTrainedModel` head model (`model.<base_model_prefix>`), or None."""
    prefix = getattr(model, "base_model_prefix", "")
    backbone = getattr(model, prefix, None) if prefix else None
    return backbone if isinstance(backbone, nn.Module) and backbone is not model else None


def prepare_linear_probe(model: nn.Module) -> list[str]:
    """Freeze the backbone (`model.<base_model_prefix>`; without one, every parameter outside the top-level
    classifier / pooler / head / fc_norm modules) and make the rest trainable. Returns the trainable names."""
    backbone = backbone_module(model)
    frozen = {id(p) for p in backbone.parameters()} if backbone is not None else None
    trainable = []
    for name, param in model.named_parameters():
        if frozen is not None:
            keep = id(param) not in frozen
        else:
            keep = name.split(".")[0] in HEAD_MODULE_NAMES
        param.requires_grad_(keep)
        if keep:
            trainable.append(name)
    if not trainable:
        raise ValueError("Linear probing found no head parameters to train (no classifier / pooler / head module).")
    return trainable


class FinetuningTrainer(SkippedFilesTrainerMixin, Trainer):
    """Trainer for image classification fine-tuning with `FinetuningArguments`.

    - Optimizer: the configured one (AdamW by default) on `layer_decay_parameter_groups` - lr decayed per layer when
      `layer_decay < 1`, and no weight decay on biases, norms, 1-D parameters, tokens and position embeddings.
    - Loss in training: Mixup / CutMix + soft-target cross-entropy when `mixup_alpha` or `cutmix_alpha` > 0 (and
      `mixup_prob` > 0), else cross-entropy with `label_smoothing`; plain cross-entropy in evaluation.
    - `compute_metrics` defaults to top-1 / top-k accuracy (`eval_top1`, `eval_top5`).
    - `linear_probe`: only the head trains; the frozen backbone stays in eval mode (no dropout / drop path).
    - Unreadable images (`hf_mim.finetuning.data.classification_collator` batches): recorded once each in
      `self.skipped_files`; dropped from training batches, a batch in which all failed refilled with random
      readable examples; kept as ignored placeholders in evaluation (see `hf_mim.data.skipped`).
    """

    # compute_loss returns a per-batch mean: the Trainer divides it by the gradient accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        args = self.args
        self.num_labels = int(getattr(self.model.config, "num_labels", 0) or 0)
        if self.compute_metrics is None and self.num_labels > 0:
            self.compute_metrics = build_compute_metrics(self.num_labels, (1, getattr(args, "top_k", 5)))
        self.trainable_parameter_names = None
        if getattr(args, "linear_probe", False):
            self.trainable_parameter_names = prepare_linear_probe(self.model)
            logger.info("Linear probe: training %s", ", ".join(self.trainable_parameter_names))
        self.mixup = None
        mixup_alpha, cutmix_alpha = getattr(args, "mixup_alpha", 0.0), getattr(args, "cutmix_alpha", 0.0)
        if self.num_labels > 0 and (mixup_alpha > 0 or cutmix_alpha > 0) and getattr(args, "mixup_prob", 1.0) > 0:
            self.mixup = MixupCutmix(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                prob=args.mixup_prob,
                switch_prob=args.mixup_switch_prob,
                label_smoothing=args.label_smoothing,
                num_classes=self.num_labels,
            )

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs = dict(optimizer_kwargs)
        if not isinstance(optimizer_cls, type) or any(k in optimizer_kwargs for k in ("params", "model")):
            # Optimizer factories (Muon, ...) and optimizers that build their own groups: transformers' default path.
            return super().create_optimizer(model)
        layer_decay = getattr(self.args, "layer_decay", 1.0)
        groups = layer_decay_parameter_groups(opt_model, self.args.learning_rate, self.args.weight_decay, layer_decay)
        logger.info(
            "Layer decay %.3g over %d blocks: %d parameter groups",
            layer_decay,
            num_backbone_layers(opt_model),
            len(groups),
        )
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if labels is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.trainable_parameter_names is not None and model.training:
            backbone = backbone_module(self.accelerator.unwrap_model(model))
            if backbone is not None:
                backbone.eval()
        pixel_values = inputs.pop("pixel_values")
        if model.training and self.mixup is not None:
            pixel_values, targets = self.mixup(pixel_values, labels)
            outputs = model(pixel_values=pixel_values, **inputs)
            # cross-entropy against the mixed, smoothed probabilities, in float32
            loss = nn.functional.cross_entropy(self._logits(outputs).float(), targets.float())
        else:
            outputs = model(pixel_values=pixel_values, **inputs)
            smoothing = getattr(self.args, "label_smoothing", 0.0) if model.training else 0.0
            loss = nn.functional.cross_entropy(self._logits(outputs).float(), labels.long(), label_smoothing=smoothing)
        return (loss, outputs) if return_outputs else loss

    @staticmethod
    def _logits(outputs) -> torch.Tensor:
        if isinstance(outputs, dict):
            return outputs["logits"]
        return outputs[0]


__all__ = [
    "FinetuningArguments",
    "FinetuningTrainer",
    "backbone_module",
    "build_compute_metrics",
    "prepare_linear_probe",
    "topk_accuracy",
]
