"""Supervised fine-tuning and linear probing (the MAE / I-JEPA recipe) for every hf_mim model and any
`AutoModelForImageClassification`: layer-wise lr decay, Mixup / CutMix, RandAugment, top-1 / top-5 accuracy."""

from .data import ClassificationExamples, classification_collator
from .layer_decay import (
    default_no_weight_decay,
    layer_decay_parameter_groups,
    layer_id_for_parameter,
    num_backbone_layers,
)
from .mixup import MixupCutmix, cutmix_box, smooth_one_hot
from .trainer import (
    FinetuningArguments,
    FinetuningTrainer,
    backbone_module,
    build_compute_metrics,
    prepare_linear_probe,
    topk_accuracy,
)
from .transforms import finetuning_eval_transform, finetuning_train_transform

__all__ = [
    "ClassificationExamples",
    "FinetuningArguments",
    "FinetuningTrainer",
    "MixupCutmix",
    "backbone_module",
    "build_compute_metrics",
    "classification_collator",
    "cutmix_box",
    "default_no_weight_decay",
    "finetuning_eval_transform",
    "finetuning_train_transform",
    "layer_decay_parameter_groups",
    "layer_id_for_parameter",
    "num_backbone_layers",
    "prepare_linear_probe",
    "smooth_one_hot",
    "topk_accuracy",
]
