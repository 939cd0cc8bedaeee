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
and a model card, loadable with `AutoModel.from_pretrained`.
"""

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
import transformers
from transformers import AutoConfig, HfArgumentParser
from transformers.trainer_utils import get_last_checkpoint

import hf_mim
from hf_mim import CapiConfig, CapiForPreTraining, CapiImageProcessor
from hf_mim.data import SafeImageTransform, bundled_photo_dataset, capi_collator, pretraining_transform
from hf_mim.trainers import CapiTrainer, CapiTrainingArguments, NonFiniteLossError

logger = logging.getLogger(__name__)

CONFIG_PRESETS = {"capi-vitl14": CapiConfig.vitl14, "capi-small": CapiConfig.small, "capi-tiny": CapiConfig.tiny}
DEFAULT_DEMO_STEPS = 300


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Start from these weights (a converted release or an earlier run)."}
    )
    config_name: str = field(
        default="capi-tiny", metadata={"help": f"Preset ({', '.join(CONFIG_PRESETS)}) or a config path/Hub id."}
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "Comma-separated overrides, e.g. 'hidden_size=128,num_hidden_layers=4'."}
    )


@dataclass
class DataTrainingArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` name or local dataset script."})
    dataset_config_name: str | None = field(default=None)
    train_split: str = field(default="train")
    train_dir: str | None = field(default=None, metadata={"help": "An image folder (any nesting) to train on."})
    image_column_name: str = field(default="image")
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset (needs --max_steps)."})
    max_train_samples: int | None = field(default=None)
    image_size: int | None = field(default=None, metadata={"help": "Crop size (default: config.image_size)."})
    crop_scale_min: float = field(default=0.6, metadata={"help": "RandomResizedCrop minimum scale (CAPI: 0.6)."})
    bundled_dataset: str = field(
        default="photos", metadata={"help": "Embedded default data: 'photos' (bundled photos) or 'digits'."}
    )

    @property
    def has_data(self) -> bool:
        return bool(self.dataset_name or self.train_dir)


def build_config(model_args: ModelArguments) -> CapiConfig:
    if model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    elif model_args.config_name in CONFIG_PRESETS:
        config = CONFIG_PRESETS[model_args.config_name]()
    else:
        config = AutoConfig.from_pretrained(model_args.config_name)
    if not isinstance(config, CapiConfig):
        raise ValueError(f"run_capi.py needs a CAPI config, got {type(config).__name__}")
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
    return config


def load_training_data(data_args: DataTrainingArguments, seed: int):
    if data_args.dataset_name:
        dataset = datasets.load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            split=data_args.train_split,
            streaming=data_args.streaming,
        )
    elif data_args.train_dir:
        dataset = datasets.load_dataset(
            "imagefolder", data_dir=data_args.train_dir, split="train", streaming=data_args.streaming
        )
    elif data_args.bundled_dataset == "digits":
        from hf_mim.data.labelled import digits_dataset

        dataset = digits_dataset("train")
    else:
        dataset = bundled_photo_dataset()
    column = data_args.image_column_name
    if column not in (dataset.column_names or [column]):
        raise ValueError(f"Column {column!r} not in the dataset; columns are {dataset.column_names}")
    # Decode ourselves, so one corrupt file is skipped and counted instead of crashing the run.
    dataset = dataset.cast_column(column, datasets.Image(decode=False))
    if data_args.max_train_samples is not None:
        dataset = dataset.take(data_args.max_train_samples)
    return dataset


def write_backbone(output_dir: Path, training_args, data_args, train_result) -> Path:
    """Export the EMA teacher as a standalone CapiModel + processor + model card."""
    full = CapiForPreTraining.from_pretrained(output_dir)
    backbone_dir = output_dir / "backbone"
    full.teacher.save_pretrained(backbone_dir)
    CapiImageProcessor().save_pretrained(backbone_dir)
    data = data_args.dataset_name or data_args.train_dir or f"bundled {data_args.bundled_dataset}"
    config = full.config
    (backbone_dir / "README.md").write_text(
        f"""---
library_name: transformers
license: apache-2.0
pipeline_tag: image-feature-extraction
tags: ["hf_mim", "capi", "self-supervised"]
---

# CAPI backbone pretrained with hf_mim

EMA teacher of a CAPI run (`examples/pytorch/pretraining/run_capi.py`): {config.hidden_size} wide,
{config.num_hidden_layers} encoder / {config.decoder_num_hidden_layers} predictor blocks,
{config.num_register_tokens} registers, patch {config.patch_size}. Data: {data}. Steps: {train_result.global_step},
final training loss {train_result.training_loss:.4f}.

```python
import hf_mim
from transformers import AutoModel
model = AutoModel.from_pretrained("{backbone_dir}")
```
"""
    )
    return backbone_dir


def main(argv=None) -> int:
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, CapiTrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(json_file=argv[0])
    else:
        if not any(a == "--output_dir" or a.startswith("--output_dir=") for a in argv):
            argv = [*argv, "--output_dir", "outputs/capi-pretraining"]
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    training_args.remove_unused_columns = False  # the collator builds the model inputs itself
    if not data_args.has_data and training_args.max_steps <= 0:
        training_args.max_steps = DEFAULT_DEMO_STEPS
    if data_args.streaming and training_args.max_steps <= 0:
        raise ValueError("--streaming needs --max_steps (a streamed dataset has no length).")

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    logger.info("hf_mim %s; world size %d", hf_mim.__version__, training_args.world_size)

    config = build_config(model_args)
    if data_args.image_size is None:
        data_args.image_size = config.image_size
    if model_args.model_name_or_path:
        model = CapiForPreTraining.from_pretrained(model_args.model_name_or_path, config=config)
    else:
        model = CapiForPreTraining(config)

    dataset = load_training_data(data_args, training_args.seed)
    transform = SafeImageTransform(
        pretraining_transform(data_args.image_size, (data_args.crop_scale_min, 1.0)), data_args.image_column_name
    )
    if isinstance(dataset, datasets.IterableDataset):
        dataset = dataset.map(transform, batched=True, remove_columns=list(dataset.column_names or []))
    else:
        dataset = dataset.with_transform(transform)

    last_checkpoint = training_args.resume_from_checkpoint
    if last_checkpoint is None and Path(training_args.output_dir).is_dir():
        last_checkpoint = get_last_checkpoint(training_args.output_dir)
        if last_checkpoint:
            logger.info("Resuming from %s", last_checkpoint)

    trainer = CapiTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=capi_collator(config),
        processing_class=CapiImageProcessor(),
    )
    try:
        train_result = trainer.train(resume_from_checkpoint=last_checkpoint)
    except NonFiniteLossError as error:
        logger.error(str(error))
        print(f"error: {error}", file=sys.stderr)
        return 1
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    skipped = trainer.total_skipped_images()
    output_dir = Path(training_args.output_dir)
    if trainer.is_world_process_zero():
        backbone_dir = write_backbone(output_dir, training_args, data_args, train_result)
        if skipped:
            print(f"Skipped {skipped} undecodable image(s) during training: {trainer.skipped_files}")
        print(f"Pretraining model saved to {output_dir.resolve()}")
        print(f"Backbone (EMA teacher, AutoModel-loadable) saved to {backbone_dir.resolve()}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
