#!/usr/bin/env python
"""Fine-tune (or linearly probe) an image classifier with the MAE / I-JEPA recipe: layer-wise lr decay, Mixup /
CutMix, RandAugment, label smoothing, drop path, top-1 / top-5 evaluation every epoch.

    python examples/pytorch/image-classification/run_image_classification.py          # embedded default, CPU minutes
    python examples/pytorch/image-classification/run_image_classification.py \
        --model_name_or_path outputs/ijepa-pretraining/backbone --output_dir ijepa-digits
    torchrun --nproc_per_node 8 examples/pytorch/image-classification/run_image_classification.py \
        --model_name_or_path outputs/ijepa-vith14/backbone --train_dir /data/imagenet/train \
        --validation_dir /data/imagenet/val --image_size 224 --drop_path_rate 0.2 --layer_decay 0.75 \
        --base_learning_rate 5e-4 --per_device_train_batch_size 128 --num_train_epochs 50 --bf16 --output_dir ft
    python examples/pytorch/image-classification/run_image_classification.py args.json   # every argument in JSON

`--model_name_or_path` takes anything `AutoModelForImageClassification` loads: an hf_mim pretraining output's
`backbone/` folder, a fine-tuned hf_mim classifier, or a transformers model (ViT, DeiT, BEiT, DINOv2, ...); a fresh
head is created for the data set's labels. `--config_name` starts from random weights (an hf_mim preset, listed with
its size by --help, or a config path). Data: `--dataset_name` (a Hub / local `datasets` data set),
or `--train_dir` / `--validation_dir` (image folders, one sub-folder per class); without any, scikit-learn's digits
(bundled, 56 px) with a random-init `ijepa-tiny`, 3 epochs (~30 s of CPU; from scratch under the full recipe it
reaches only ~15-25 % top-1, chance is 10 %: the demo checks the pipeline, pretrained backbones are the real input).
Unreadable images (corrupt, truncated, not an image) are skipped: each is named in a warning the first time it fails,
and the run ends with a "Skipped N unreadable image(s): ..." line (see `hf_mim.data.skipped`); a training batch in
which every image failed is refilled with random readable images, an evaluation batch of failures is skipped.
Prints the final top-1 / top-5 as JSON. On a small shared CPU machine, `OMP_NUM_THREADS=1` avoids thread
oversubscription (two threads on two busy cores measured ~15x slower for these tiny models).
"""

import json
import os
import sys
from dataclasses import dataclass, field

import torch
from datasets import ClassLabel, DatasetDict, load_dataset
from transformers import (
    AutoConfig,
    AutoModelForImageClassification,
    HfArgumentParser,
    set_seed,
)
from transformers.utils import logging

import hf_mim
from hf_mim.data.labelled import digits_dataset
from hf_mim.data.transforms import without_decoding
from hf_mim.finetuning import (
    ClassificationExamples,
    FinetuningArguments,
    FinetuningTrainer,
    classification_collator,
    finetuning_eval_transform,
    finetuning_train_transform,
)
from hf_mim.hub.push import exit_status, hub_repo_of, pushing_to
from hf_mim.image_processing_utils import input_statistics
from hf_mim.presets import CONFIG_PRESETS
from hf_mim.presets.help import add_presets_help
from hf_mim.presets.lookup import resolve_config_name_or_exit

logger = logging.get_logger(__name__)

PRESETS = CONFIG_PRESETS
DEFAULT_PRESET = "ijepa-tiny"
SCRIPT = "run_image_classification.py"
PROCESSORS = {
    hf_mim.IJepaConfig.model_type: hf_mim.IJepaImageProcessor,
    hf_mim.CapiConfig.model_type: hf_mim.CapiImageProcessor,
}
DIGITS_IMAGE_SIZE = 56
DIGITS_CROP_MIN_SCALE = 0.35  # an 8 % crop of a 56-pixel digit shows a stroke, not a digit


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Pretrained model path or Hub id (AutoModelForImageClassification-loadable)."}
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "Random-init model: an hf_mim preset (the table below) or a config folder / Hub id."},
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Image processor (mean / std / size); defaults to the model's."}
    )
    classifier_pooling: str | None = field(
        default=None,
        metadata={
            "help": "Head pooling override (I-JEPA: mean, mean_last4; CAPI: attentive, global, avg_patch, ...)."
        },
    )
    drop_path_rate: float | None = field(default=None, metadata={"help": "Stochastic depth override (MAE: 0.1-0.3)."})
    classifier_dropout: float | None = field(default=None, metadata={"help": "Dropout before the classifier."})
    cache_dir: str | None = field(default=None)
    model_revision: str = field(default="main")
    ignore_mismatched_sizes: bool = field(
        default=True, metadata={"help": "Replace a pretrained head whose number of labels differs."}
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` data set (Hub id or local path)."})
    dataset_config_name: str | None = field(default=None)
    train_dir: str | None = field(default=None, metadata={"help": "Image folder of the training split."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder of the validation split."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of train held out for validation when there is no validation split."}
    )
    image_column_name: str = field(default="image")
    label_column_name: str = field(default="label")
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the validation set (debugging)."})
    image_size: int | None = field(
        default=None, metadata={"help": "Crop size; defaults to the processor's / model's."}
    )
    crop_min_scale: float | None = field(
        default=None,
        metadata={
            "help": "Smallest RandomResizedCrop area fraction (default 0.08, the recipe's; 0.35 for the digits)."
        },
    )
    crop_pct: float = field(default=0.875, metadata={"help": "Eval: resize to image_size / crop_pct, center crop."})
    rand_augment: bool = field(default=True, metadata={"help": "RandAugment(num_ops=2, magnitude=9)."})
    hflip: bool = field(default=True)
    random_erasing: float = field(default=0.0, metadata={"help": "RandomErasing probability (MAE: 0.25)."})

    @property
    def uses_bundled_digits(self) -> bool:
        return not (self.dataset_name or self.train_dir or self.validation_dir)


def parse_arguments(argv=None):
    parser = HfArgumentParser((ModelArguments, DataArguments, FinetuningArguments))
    add_presets_help(parser, PRESETS, DEFAULT_PRESET)
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        arguments = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    else:
        if "--output_dir" not in argv and not any(a.startswith("--output_dir=") for a in argv):
            argv += ["--output_dir", "outputs/image-classification"]
        arguments = parser.parse_args_into_dataclasses(args=argv)
    model_args = arguments[0]
    if model_args.config_name:  # a mistyped preset fails now, not as a Hub lookup after the data is loaded
        model_args.config_name = resolve_config_name_or_exit(parser, model_args.config_name, PRESETS, SCRIPT)
    return arguments


def load_data(data_args: DataArguments, model_args: ModelArguments) -> DatasetDict:
    if data_args.uses_bundled_digits:
        return DatasetDict(
            train=digits_dataset("train", DIGITS_IMAGE_SIZE), validation=digits_dataset("test", DIGITS_IMAGE_SIZE)
        )
    if data_args.dataset_name:
        dataset = load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=model_args.cache_dir)
    else:
        files = {}
        if data_args.train_dir:
            files["train"] = os.path.join(data_args.train_dir, "**")
        if data_args.validation_dir:
            files["validation"] = os.path.join(data_args.validation_dir, "**")
        dataset = load_dataset("imagefolder", data_files=files, cache_dir=model_args.cache_dir)
    if "train" not in dataset:
        raise ValueError(f"The data set has no 'train' split (splits: {list(dataset)}).")
    if "validation" not in dataset:
        for name in ("val", "valid", "test"):
            if name in dataset:
                dataset["validation"] = dataset.pop(name)
                break
    if "validation" not in dataset and data_args.train_val_split > 0:
        split = dataset["train"].train_test_split(data_args.train_val_split, seed=0)
        dataset["train"], dataset["validation"] = split["train"], split["test"]
    return dataset


def resolve_column(dataset, requested: str, fallbacks: tuple[str, ...], kind: str) -> str:
    columns = dataset.column_names
    if requested in columns:
        return requested
    for name in fallbacks:
        if name in columns:
            return name
    raise ValueError(
        f"No {kind} column {requested!r} in the data set (columns: {columns}); pass --{kind}_column_name."
    )


def label_names(dataset, label_column: str) -> list[str]:
    feature = dataset["train"].features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    values = sorted({value for split in dataset.values() for value in split[label_column]})
    return [str(value) for value in values]


def build_model(model_args: ModelArguments, labels: list[str], seed: int):
    label2id = {name: i for i, name in enumerate(labels)}
    id2label = dict(enumerate(labels))
    overrides = {
        key: value
        for key, value in (
            ("drop_path_rate", model_args.drop_path_rate),
            ("classifier_pooling", model_args.classifier_pooling),
            ("classifier_dropout", model_args.classifier_dropout),
        )
        if value is not None
    }
    common = dict(num_labels=len(labels), label2id=label2id, id2label=id2label, **overrides)
    if model_args.model_name_or_path:
        return AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            **common,
        )
    name = model_args.config_name or DEFAULT_PRESET
    if name in PRESETS:
        config = PRESETS[name](**common)
    else:
        config = AutoConfig.from_pretrained(name, cache_dir=model_args.cache_dir, **common)
    torch.manual_seed(seed)
    return AutoModelForImageClassification.from_config(config)


def image_statistics(model_args: ModelArguments, data_args: DataArguments, model):
    """(image_size, mean, std, processor) from --image_size, the image processor, or the model config (ImageNet
    mean / std); `processor` is the one loaded, else a matching hf_mim processor for hf_mim models, else None."""
    size = data_args.image_size
    if size is None and data_args.uses_bundled_digits:
        size = DIGITS_IMAGE_SIZE
    source = model_args.image_processor_name or model_args.model_name_or_path
    size, mean, std, processor = input_statistics(source, size, model.config, model_args.cache_dir)
    processor_class = PROCESSORS.get(getattr(model.config, "model_type", None))
    if processor is None and processor_class is not None:
        crop = {"height": size, "width": size}
        resize = {"shortest_edge": int(round(size / data_args.crop_pct))}
        processor = processor_class(size=resize, crop_size=crop, image_mean=list(mean), image_std=list(std))
    return size, mean, std, processor


def main(argv=None) -> dict:
    model_args, data_args, training_args = parse_arguments(argv)
    if training_args.should_log:
        logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)

    dataset = load_data(data_args, model_args)
    image_column = resolve_column(
        dataset["train"], data_args.image_column_name, ("image", "img", "pixel_values"), "image"
    )
    label_column = resolve_column(
        dataset["train"], data_args.label_column_name, ("label", "labels", "fine_label"), "label"
    )
    dataset = without_decoding(dataset, image_column)  # decode_image reads the files: unreadable ones are skipped
    labels = label_names(dataset, label_column)
    is_class_label = isinstance(dataset["train"].features[label_column], ClassLabel)
    label2id = None if is_class_label else {name: i for i, name in enumerate(labels)}

    if data_args.max_train_samples is not None:
        count = min(data_args.max_train_samples, len(dataset["train"]))
        dataset["train"] = dataset["train"].shuffle(seed=training_args.seed).select(range(count))
    if "validation" in dataset and data_args.max_eval_samples is not None:
        count = min(data_args.max_eval_samples, len(dataset["validation"]))
        dataset["validation"] = dataset["validation"].shuffle(seed=training_args.seed).select(range(count))

    model = build_model(model_args, labels, training_args.seed)
    image_size, mean, std, processor = image_statistics(model_args, data_args, model)
    crop_min_scale = data_args.crop_min_scale
    if crop_min_scale is None:
        crop_min_scale = DIGITS_CROP_MIN_SCALE if data_args.uses_bundled_digits else 0.08
    train_transform = finetuning_train_transform(
        image_size,
        mean,
        std,
        crop_scale=(crop_min_scale, 1.0),
        hflip=data_args.hflip,
        rand_augment=data_args.rand_augment,
        random_erasing=data_args.random_erasing,
    )
    eval_transform = finetuning_eval_transform(image_size, mean, std, crop_pct=data_args.crop_pct)
    train_dataset = dataset["train"].with_transform(
        ClassificationExamples(train_transform, image_column, label_column, label2id)
    )
    eval_dataset = None
    if "validation" in dataset:
        eval_dataset = dataset["validation"].with_transform(
            ClassificationExamples(eval_transform, image_column, label_column, label2id)
        )
    elif training_args.eval_strategy != "no":
        training_args.eval_strategy = "no"
        logger.warning("No validation split: evaluation disabled.")

    with pushing_to(hub_repo_of(training_args)):  # with --push_to_hub the Trainer creates its repo here
        trainer = FinetuningTrainer(
            model=model,
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=classification_collator(image_size),
            processing_class=processor,
        )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    with pushing_to(hub_repo_of(training_args)):  # the upload fails after the model is saved
        trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()

    result = {
        "model": model_args.model_name_or_path or f"random {model_args.config_name or DEFAULT_PRESET}",
        "train_images": len(train_dataset),
        "image_size": image_size,
        "linear_probe": training_args.linear_probe,
        "train_loss": round(float(train_result.training_loss), 4),
    }
    if eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        result.update(
            eval_images=len(eval_dataset),
            top1=round(metrics["eval_top1"], 4),
            **{f"top{training_args.top_k}": round(metrics[f"eval_top{training_args.top_k}"], 4)},
        )
    skipped = trainer.skipped_files.gathered()  # every process's files (a collective)
    result["skipped_images"] = len(skipped)
    if trainer.is_world_process_zero():
        if skipped:
            print(skipped.summary())
        print(json.dumps(result))

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return result


if __name__ == "__main__":
    sys.exit(exit_status(main))
