#!/usr/bin/env python
"""Pretrain CAE v1 (DALL-E token targets) or CAE v2 (CLIP latent targets) with hf_mim's CaeTrainer.

    accelerate launch examples/pytorch/pretraining/run_cae.py                      # CPU recipe: tiny CAE v1, digits
    accelerate launch examples/pytorch/pretraining/run_cae.py --cae_version 2      # tiny CAE v2
    accelerate launch --config_file examples/pytorch/pretraining/accelerate_configs/multi_gpu_ddp.yaml \\
        examples/pytorch/pretraining/run_cae.py --config_name cae-vitb16 --tokenizer_name_or_path dalle-tokenizer \\
        --train_dir /data/imagenet/train --per_device_train_batch_size 64 --num_train_epochs 300 --bf16
    ... --config_name cae-v2-vitb16 --teacher_name_or_path openai/clip-vit-base-patch16 ...

Same conventions as the other run_<method>.py scripts. The target network is frozen and kept outside the trained
model: v1 a DALL-E tokenizer folder (`scripts/convert/convert_dalle_tokenizer_to_hf.py` makes one from OpenAI's
encoder.pkl or MMPretrain's dalle_encoder.pth; `train_dalle_tokenizer.py` next to this script trains a small one on
your images), v2 any CLIP ViT (transformers' CLIPVisionModelWithProjection).
Without one (the embedded default) a small RANDOM target network is built and the log says so: the run then only
shows that the machinery trains, its targets carry no meaning. Presets (--help lists them with their sizes): cae-vitb16,
cae-vitl16 (v1 releases), cae-v2-vitt16 / -vits16 / -vitb16 / -vitl16 (the CAE v2 paper's ViT-Tiny to ViT-L, all 224
px), cae-tiny (a toy for CPU, the default; with --cae_version 2 its v2 twin).
"""

import logging
import sys
from dataclasses import dataclass, field

import torch

from hf_mim import CaeConfig, CaeForPreTraining, CaeImageProcessor
from hf_mim.data import TwoViewCollator, TwoViewCropTransform
from hf_mim.models.cae.targets_cae import ClipTeacher, load_target_model
from hf_mim.presets import CPU_RECIPES, presets_for
from hf_mim.trainers import CaeTrainer, CaeTrainingArguments
from hf_mim.trainers.run_pretraining import PretrainingRecipe, run

logger = logging.getLogger(__name__)


@dataclass
class CaeArguments:
    cae_version: int | None = field(default=None, metadata={"help": "1 or 2; default: the preset's version."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "v1: a DalleTokenizer folder / Hub id (default: a small random one)."}
    )
    teacher_name_or_path: str | None = field(
        default=None, metadata={"help": "v2: a CLIP checkpoint, e.g. openai/clip-vit-base-patch16 (default: random)."}
    )
    drop_path_rate: float = field(default=0.1, metadata={"help": "Stochastic depth of encoder, regressor, decoder."})


def configure(config: CaeConfig, cae: CaeArguments) -> CaeConfig:
    if cae.cae_version is not None and cae.cae_version != config.cae_version:
        if config.decoder_num_layers and cae.cae_version == 2:
            config.decoder_num_layers = 0  # v2 has no decoder blocks
        config.cae_version = cae.cae_version
    config.drop_path_rate = cae.drop_path_rate
    config.validate()
    return config


def random_target_model(config: CaeConfig):
    """The embedded default's stand-in target network: small, random, seeded (not a tokenizer or CLIP)."""
    torch.manual_seed(0)
    if config.cae_version == 1:
        from hf_mim.models.cae.tokenizer_dalle import DalleTokenizer, DalleTokenizerConfig

        return DalleTokenizer(DalleTokenizerConfig.tiny(vocab_size=config.vocab_size))
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    clip = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            image_size=config.image_size, patch_size=config.patch_size,
                            projection_dim=config.target_hidden_size)  # fmt: skip
    return ClipTeacher(CLIPVisionModelWithProjection(clip))


def attach(model: CaeForPreTraining, cae: CaeArguments) -> None:
    version = model.config.cae_version
    path = cae.tokenizer_name_or_path if version == 1 else cae.teacher_name_or_path
    if path:
        target = load_target_model(version, path)
    else:
        target = random_target_model(model.config)
        what = "DALL-E tokenizer" if version == 1 else "CLIP teacher"
        hint = " train_dalle_tokenizer.py trains a small tokenizer on your images." if version == 1 else ""
        logger.warning(
            "No %s given (--%s): training against a small RANDOM %s. This only shows that CAE v%d trains; its targets "
            "carry no meaning.%s", what, "tokenizer_name_or_path" if version == 1 else "teacher_name_or_path",
            what, version, hint,
        )  # fmt: skip
    model.set_target_model(target)


def transform(config: CaeConfig, data_args, image_size: int, cae: CaeArguments):
    options = {"scale": (data_args.crop_scale_min, 1.0)} if data_args.crop_scale_min else {}
    if config.cae_version == 2:
        return TwoViewCropTransform.cae_v2(image_size, **options)
    # The DALL-E encoder downsamples 8x: a tokenizer view of (image_size / patch_size) * 8 px gives one token per
    # patch. For 16 px patches that is the original's image_size // 2 (112 for 224).
    return TwoViewCropTransform.cae_v1(image_size, second_size=image_size // config.patch_size * 8, **options)


CAE = PretrainingRecipe(
    name="cae",
    config_class=CaeConfig,
    config_presets=presets_for("cae"),
    cpu_recipe=CPU_RECIPES["cae"],
    default_preset="cae-tiny",
    model_class=CaeForPreTraining,
    image_processor_class=CaeImageProcessor,
    trainer_class=CaeTrainer,
    arguments_class=CaeTrainingArguments,
    collator=TwoViewCollator.for_model,
    backbone=lambda model: model.cae,
    backbone_description="CAE encoder",
    crop_scale_min=0.08,
    hflip=True,
    interpolation="bicubic",
    transform=transform,
    extra_argument_classes=(CaeArguments,),
    configure=configure,
    attach=attach,
)

if __name__ == "__main__":
    sys.exit(run(CAE))
