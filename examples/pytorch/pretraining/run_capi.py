#!/usr/bin/env python
"""Pretrain CAPI (Cluster and Predict Latent Patches) with hf_mim's CapiTrainer, single process or distributed.

    accelerate launch examples/pytorch/pretraining/run_capi.py                      # embedded default, CPU minutes
    accelerate launch examples/pytorch/pretraining/run_capi.py --train_dir /data/imagenet/train \
        --config_name capi-vitl14 --per_device_train_batch_size 128 --bf16 --output_dir capi-vitl14-in1k
    python examples/pytorch/pretraining/run_capi.py args.json                        # all arguments in one file

With no data argument it pretrains a tiny CAPI on real photos bundled with scikit-image / scikit-learn (random
resized crops), so it runs anywhere without downloads (`--bundled_dataset digits` uses scikit-learn's digits
instead). The output folder holds the full pretraining model (student, EMA teacher, heads: resumable with
`AutoModelForPreTraining`), and `backbone/` the EMA teacher as a standalone `CapiModel` with its image processor
and a model card, loadable with `AutoModel.from_pretrained`. Both folders' image processors center-crop at the
training resolution (`--image_size`, default config.image_size) after resizing the shorter side by 256 / 224.
`--seed` decides the run: initial weights, data order, crops and masks (same seed, same checkpoint). Presets:
capi-vitl14 (the release), capi-small, capi-tiny (default).
"""

import sys

from hf_mim import CapiConfig, CapiForPreTraining, CapiImageProcessor
from hf_mim.data import PretrainingCollator
from hf_mim.presets import CPU_RECIPES, presets_for
from hf_mim.trainers import CapiTrainer, CapiTrainingArguments
from hf_mim.trainers.run_pretraining import PretrainingRecipe, run

CAPI = PretrainingRecipe(
    name="capi",
    config_class=CapiConfig,
    config_presets=presets_for("capi"),
    cpu_recipe=CPU_RECIPES["capi"],
    default_preset="capi-tiny",
    model_class=CapiForPreTraining,
    image_processor_class=CapiImageProcessor,
    trainer_class=CapiTrainer,
    arguments_class=CapiTrainingArguments,
    collator=PretrainingCollator.for_model,
    backbone=lambda model: model.teacher,
    backbone_description="EMA teacher",
    crop_scale_min=0.6,
    hflip=True,
    interpolation="bicubic",
)

if __name__ == "__main__":
    sys.exit(run(CAPI))
