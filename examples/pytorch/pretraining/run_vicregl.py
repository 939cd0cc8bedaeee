#!/usr/bin/env python
"""Pretrain VICRegL with hf_mim's VicreglTrainer, single process or distributed.

    accelerate launch examples/pytorch/pretraining/run_vicregl.py                   # embedded default, CPU minutes
    accelerate launch --config_file examples/pytorch/pretraining/accelerate_configs/multi_gpu_ddp.yaml \\
        examples/pytorch/pretraining/run_vicregl.py --train_dir /data/imagenet/train --config_name vicregl-convnext-small \\
        --per_device_train_batch_size 48 --bf16 --num_train_epochs 100 --output_dir vicregl-convnext-small

Same conventions as run_capi.py / run_ijepa.py (HfArgumentParser or one JSON file, --dataset_name / --train_dir,
automatic resume). Without data and preset it runs the CPU recipe (hf_mim.presets.CPU_RECIPES: vicregl-tiny-resnet,
800 steps on the bundled digits). Presets: vicregl-resnet50, vicregl-convnext-small, -base, -xlarge (the released
architectures), vicregl-tiny (a 1-block-per-stage ConvNeXt at 64 px, the default with own data) and
vicregl-tiny-resnet.
Multi-crop follows the original per backbone: ConvNeXt 2 global crops (scale 0.4-1) + 6 local crops of 96/224 of
the global size (scale 0.08-0.4); ResNet 2 global crops (scale 0.08-1), no local crops (README commands); every
setting can be changed (MultiCropArguments). Optimizer, lr scaling and schedules: VicreglTrainingArguments. The output
folder holds the full model (backbone + projectors) and `backbone/` the `VicreglModel` alone.
Loss options are config fields, set with --config_overrides, e.g. "alpha=0.9,fast_vc_reg=true" (fast_vc_reg: the
original's --fast-vc-reg 1, local variance / covariance on each view's whole map instead of the matched pairs).
"""

import sys
from dataclasses import dataclass, field

from hf_mim import VicreglConfig, VicreglForPreTraining, VicreglImageProcessor
from hf_mim.data import MultiCropCollator, MultiCropTransform
from hf_mim.presets import CPU_RECIPES, presets_for
from hf_mim.trainers import VicreglTrainer, VicreglTrainingArguments
from hf_mim.trainers.run_pretraining import PretrainingRecipe, run


@dataclass
class MultiCropArguments:
    """VICRegL's crops (`--size-crops`, `--num-crops`, `--min_scale_crops`, `--max_scale_crops`, `--no-flip-grid` of
    the original). The global crop size is `--image_size` (default `config.image_size`); None = the backbone's recipe."""

    num_global_crops: int = field(default=2)
    num_local_crops: int | None = field(default=None, metadata={"help": "Default: 6 (ConvNeXt), 0 (ResNet)."})
    local_crop_size: int | None = field(
        default=None, metadata={"help": "Default: 96/224 of the global size, rounded to the backbone's stride."}
    )
    global_crop_scale_min: float | None = field(
        default=None, metadata={"help": "Default 0.4 (ConvNeXt), 0.08 (ResNet)."}
    )
    global_crop_scale_max: float = field(default=1.0)
    local_crop_scale_min: float = field(default=0.08)
    local_crop_scale_max: float = field(default=0.4)
    flip_grid: bool = field(
        default=True,
        metadata={
            "help": "Mirror the location grid of flipped crops (the paper); False = the original code's default."
        },
    )


def multicrop_transform(config: VicreglConfig, data_args, image_size: int, crops: MultiCropArguments):
    resnet = config.backbone_type == "resnet"
    stride = config.total_stride
    num_local = crops.num_local_crops if crops.num_local_crops is not None else (0 if resnet else 6)
    scale_min = crops.global_crop_scale_min or data_args.crop_scale_min or (0.08 if resnet else 0.4)
    sizes, counts, mins, maxs = [image_size], [crops.num_global_crops], [scale_min], [crops.global_crop_scale_max]
    if num_local:
        local = crops.local_crop_size or max(stride, round(image_size * 96 / 224 / stride) * stride)
        sizes.append(local)
        counts.append(num_local)
        mins.append(crops.local_crop_scale_min)
        maxs.append(crops.local_crop_scale_max)
    return MultiCropTransform(sizes, counts, mins, maxs, feature_stride=stride, flip_grid=crops.flip_grid)


def describe(config: VicreglConfig) -> str:
    return (
        f"{config.backbone_type} backbone, depths {config.depths}, widths {config.hidden_sizes}, alpha {config.alpha}"
    )


VICREGL = PretrainingRecipe(
    name="vicregl",
    config_class=VicreglConfig,
    config_presets=presets_for("vicregl"),
    cpu_recipe=CPU_RECIPES["vicregl"],
    default_preset="vicregl-tiny",
    model_class=VicreglForPreTraining,
    image_processor_class=VicreglImageProcessor,
    trainer_class=VicreglTrainer,
    arguments_class=VicreglTrainingArguments,
    collator=lambda model: MultiCropCollator(),
    backbone=lambda model: model.vicregl,
    backbone_description="VICRegL backbone",
    crop_scale_min=0.4,
    hflip=True,
    interpolation="bicubic",
    transform=multicrop_transform,
    extra_argument_classes=(MultiCropArguments,),
    describe=describe,
)

if __name__ == "__main__":
    sys.exit(run(VICREGL))
