#!/usr/bin/env python
"""Pretrain I-JEPA with hf_mim's IJepaTrainer, single process or distributed.

    accelerate launch examples/pytorch/pretraining/run_ijepa.py                     # embedded default, CPU minutes
    accelerate launch --config_file examples/pytorch/pretraining/accelerate_configs/multi_gpu_ddp.yaml \
        examples/pytorch/pretraining/run_ijepa.py --train_dir /data/imagenet/train --config_name ijepa-vith14 \
        --per_device_train_batch_size 128 --bf16 --num_train_epochs 300 --output_dir ijepa-vith14-in1k

Same conventions as run_capi.py (HfArgumentParser or one JSON file, --dataset_name / --train_dir, bundled data
by default, automatic resume). Schedules default to the paper's (IJepaTrainingArguments). The output folder holds
the full model (context encoder, EMA target encoder, predictor) and `backbone/` the **target encoder** as a
standalone `IJepaModel`. Presets: ijepa-vith14, ijepa-vith16-448, ijepa-vitg16 (the releases), ijepa-small,
ijepa-tiny (default).
"""

import sys

from hf_mim import IJepaConfig, IJepaForPreTraining, IJepaImageProcessor
from hf_mim.data import PretrainingCollator
from hf_mim.presets import CPU_RECIPES, presets_for
from hf_mim.trainers import IJepaTrainer, IJepaTrainingArguments
from hf_mim.trainers.run_pretraining import PretrainingRecipe, run


def target_encoder(model: IJepaForPreTraining):
    encoder = model.target_encoder
    encoder.config.standalone_encoder = "context"  # a standalone encoder folder holds just this encoder
    return encoder


IJEPA = PretrainingRecipe(
    name="ijepa",
    config_class=IJepaConfig,
    config_presets=presets_for("ijepa"),
    cpu_recipe=CPU_RECIPES["ijepa"],
    default_preset="ijepa-tiny",
    model_class=IJepaForPreTraining,
    image_processor_class=IJepaImageProcessor,
    trainer_class=IJepaTrainer,
    arguments_class=IJepaTrainingArguments,
    collator=PretrainingCollator.for_model,
    backbone=target_encoder,
    backbone_description="EMA target encoder",
    crop_scale_min=0.3,
    hflip=False,
    interpolation="bilinear",
)

if __name__ == "__main__":
    sys.exit(run(IJEPA))
