#!/usr/bin/env python
"""Semantic segmentation with an hf_mim backbone: the dense-task protocols of the four methods, after transformers'
`examples/pytorch/semantic-segmentation/run_semantic_segmentation.py`.

    python examples/pytorch/semantic-segmentation/run_semantic_segmentation.py            # embedded default, CPU
    python examples/pytorch/semantic-segmentation/run_semantic_segmentation.py --protocol knn \
        --model_name_or_path outputs/capi-pretraining/backbone --output_dir capi-knn
    torchrun --nproc_per_node 8 examples/pytorch/semantic-segmentation/run_semantic_segmentation.py \
        --protocol linear --model_name_or_path outputs/vicregl-convnext-s/backbone --dataset_name <voc or ade set> \
        --image_size 512 --max_steps 40000 --learning_rate 1e-4 --weight_decay 0.05 --warmup_steps 1500 \
        --per_device_train_batch_size 2 --output_dir vicregl-linear-seg

Protocols (`--protocol`):

* `linear` (VICRegL): frozen backbone, `LinearSegmentationHead` on the `--out_indices` maps (resize-concat to the
  first map, BatchNorm, dropout, 1x1 conv), trained with the Trainer (cross-entropy, ignore 255). VICRegL's default:
  all four ConvNeXt stages (`--out_indices 1 2 3 4`, the default for VICRegL ConvNeXt models), the last stage for
  ResNet (with `--head_dropout 0.1`; VICRegL dilates its ResNet-50 to output stride 8, hf_mim's stays at 32); its
  schedule: AdamW lr 1e-4, wd 0.05, poly decay, 1500 warmup steps. Under DDP on GPUs the BatchNorm is synchronised.
* `upernet` (CAE): `UperNetForSemanticSegmentation(UperNetConfig(backbone_config=<the hf_mim config>))` with the
  hf_mim backbone (pretrained weights copied in), FINE-TUNED end to end with the Trainer (`--freeze_backbone`:
  heads only). ViTs return four blocks (`--out_indices`, default the blocks at 1/3, 1/2, 2/3 and all of the depth:
  4 6 8 12 for a 12-block ViT, CAE-B's; every stage below four blocks) through the 4x / 2x / 1x / 0.5x multi-scale
  adapters (`backbone_multiscale`, CAE / BEiT), with the FCN auxiliary head (weight 0.4) on the third map. CAE's
  schedule: AdamW lr 1e-4, wd 0.05, layer decay 0.65, poly decay, 1500 warmup steps, 160k steps (CAE-L: lr 4e-5,
  layer decay 0.95; BEiT-B: lr 4e-4, layer decay 0.65). `--layer_decay D` (default off: one lr for every parameter)
  builds the originals' parameter groups (mmseg `LayerDecayOptimizerConstructor`): patch / position embeddings and
  tokens at lr * D^(L + 1), block i at lr * D^(L - i) (L blocks), everything else (final norm, multi-scale
  adapters, UperNet and auxiliary heads) at lr; no weight decay on 1-D parameters and biases (the originals' rule).
* `knn` (CAPI): patch features of the training images (eval transform, `--out_indices` maps resize-concatenated;
  default the last stage), standardised (`--standardize_features`), labelled by their modal pixel label (ignored
  patches dropped); each validation patch takes the weighted vote of its `--k` nearest (cosine) training patches,
  repeated over its pixels (`--upsample nearest`). No training.
* `logistic` (CAPI): the same patch bank, a multinomial logistic regression fitted by L-BFGS (`--logistic_c`,
  `--logistic_max_iter`), predictions repeated over each patch's pixels.

Backbone: `--model_name_or_path` (an hf_mim pretraining output's `backbone/` folder or a converted release) is
loaded with `AutoBackbone.from_pretrained(path, out_indices=...)`; `--config_name` starts from random weights (the
baselines): an hf_mim preset (--help lists them with their sizes; the tiny ones for CPU) or a config path;
`--config_overrides "num_hidden_layers=4,..."` edits it. The first line printed names the backbone and why.

Without any of the three (the embedded default) the script compares a pretrained CAPI with its random init: it takes
the main job's backbone (`--main_job_backbone`, default outputs/capi-pretraining/backbone, where `accelerate launch
examples/pytorch/pretraining/run_capi.py` writes it) when it exists; else it trains `run_capi.py`'s CPU recipe for
`--default_pretraining_steps` (300) steps, crops from 25 % of the image up, on this example's training images (their
masks unused) into `<output_dir>/capi-pretraining-300steps-seed42` (a later run with that seed reuses it). Both
backbones, the pretrained one and a random init of its config and image processor (seed `--seed`), run the same
protocol (`--protocol`, default knn here: the linear probe predicts the background everywhere on this set, random or
pretrained, see `default_protocol`), each in its own subfolder (`random-init/`, `pretrained/`); the script prints
their mean IoU, pixel accuracy, mean accuracy and per-class IoU side by side and writes both to
`comparison_results.json`.

Data: `--dataset_name` (a Hub id or local folder for `datasets.load_dataset`, or a folder written by
`Dataset.save_to_disk` / `DatasetDict.save_to_disk`, read with `load_from_disk`: the way to use a local `datasets`
set offline), with `--image_column_name` / `--label_column_name` (masks: one class index per pixel); or
`--train_dir` / `--validation_dir`, each with an `images/` and a `masks/` (or `annotations/`, `labels/`) folder
whose files pair by name stem; or, without any, the embedded SYNTHETIC set (`hf_mim.data.synthetic_segmentation_dataset`:
scikit-learn digits pasted on crops of the bundled photos, 11 classes, 112 px; a pipeline check, not a benchmark).
Label names: `--id2label_file` (JSON {id: name}), an `id2label.json` inside a local `--dataset_name` folder, the
synthetic set's, or the class indices found in the training masks. `--reduce_labels` maps 0 -> 255 and the others
- 1 (ADE20K). Unreadable files (corrupt, truncated, not an image) are skipped with their pair, each named in a
warning the first time it fails; the run ends with a "Skipped N unreadable image(s): ..." line. A training batch in
which every pair failed is refilled with random readable pairs, an evaluation batch of failures is skipped (see
`hf_mim.data.skipped`).

Results: `eval_results.json` / `all_results.json` in `--output_dir` (mean_iou, pixel_accuracy, mean_accuracy,
iou_<class>, accuracy_<class>, prefixed `eval_` as the Trainer writes them), and `segmentation_predictions.png`
(titled columns image | ground truth | prediction, one prediction column per backbone, for the first
`--num_visualized` validation images; each column's mean IoU as caption, a colour legend). Unless given, the script
sets `--output_dir outputs/semantic-segmentation`, `--remove_unused_columns False`, `--batch_eval_metrics True`,
`--learning_rate 1e-2` (linear; a short-run value, VICRegL's is 1e-4 over 40k steps) or 1e-4 (upernet),
`--weight_decay 0.05`, `--num_train_epochs 10`, `--per_device_train_batch_size 16`, `--lr_scheduler_type
polynomial` (power 1, mmseg's poly) and `--report_to none`.

The embedded default without a main-job backbone (one thread, seed 42): 91 s of CPU in all (the 300-step
pretraining, then both k-NN evaluations); mean IoU random-init 0.108, pretrained 0.117 (pixel accuracy 0.894 /
0.897; seed 0: 0.116 / 0.126). CPU times on the synthetic set with `--config_name vicregl-tiny` (256 + 64 images at 112 px, one thread,
~12 s of imports and data included): linear ~26 s, knn ~13 s, logistic ~13 s; upernet with `--upernet_hidden_size 64`
~51 s (the default 512-channel UperNet head is GPU-sized). With random frozen features the linear, knn and logistic
protocols find only the background (mean IoU 0.08, pixel accuracy 0.90, the background's share); the fine-tuned
UperNet starts to outline digits (mean IoU ~0.09). On a small shared CPU machine run with `OMP_NUM_THREADS=1`.
"""

import ast
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict, Features, load_dataset, load_from_disk
from datasets import Image as ImageFeature
from torch.utils.data import DataLoader
from transformers import (
    AutoBackbone,
    AutoConfig,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    UperNetConfig,
    UperNetForSemanticSegmentation,
    set_seed,
)
from transformers.utils import logging

from hf_mim.data.segmentation import (
    IGNORE_INDEX,
    SYNTHETIC_SEGMENTATION_LABELS,
    SegmentationExamples,
    SegmentationTransform,
    mask_to_array,
    reduce_labels,
    segmentation_collator,
    synthetic_segmentation_datasets,
)
from hf_mim.data.skipped import SkippedFiles, SkippedFilesTrainerMixin, readable_part
from hf_mim.data.transforms import DECODE_ERRORS, decode_failure, decode_image, without_decoding
from hf_mim.evaluation.segmentation import (
    FeatureScaler,
    FrozenBackboneSegmenter,
    LinearSegmentationHead,
    SegmentationComputeMetrics,
    SegmentationMetrics,
    argmax_logits,
    dense_features,
    fit_logistic_regression,
    knn_segment,
    labelled_prediction_grid,
    patch_feature_bank,
    upsample_patch_scores,
)
from hf_mim.finetuning import layer_decay_parameter_groups, num_backbone_layers
from hf_mim.hub.push import exit_status, hub_repo_of, pushing_to
from hf_mim.image_processing_utils import input_statistics
from hf_mim.presets import CONFIG_PRESETS, CPU_RECIPES
from hf_mim.presets.help import add_presets_help
from hf_mim.presets.lookup import resolve_config_name, resolve_config_name_or_exit
from hf_mim.training_defaults import PinMemoryOnlyWithAccelerator

logger = logging.get_logger(__name__)


@dataclass
class SegmentationTrainingArguments(PinMemoryOnlyWithAccelerator, TrainingArguments):
    """transformers' TrainingArguments; batches are pinned only where an accelerator exists (no warning on CPU)."""


PRESETS = CONFIG_PRESETS
DEFAULT_PRESET = "vicregl-tiny"
SCRIPT = "run_semantic_segmentation.py"
PROTOCOLS = ("linear", "upernet", "knn", "logistic")
SYNTHETIC_IMAGE_SIZE = 112
MASK_FOLDERS = ("masks", "annotations", "labels")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PREDICTIONS_PNG = "segmentation_predictions.png"
# The embedded default's backbone: the main job's (`accelerate launch examples/pytorch/pretraining/run_capi.py`
# writes its EMA teacher to outputs/capi-pretraining/backbone), else a short run of the same script.
MAIN_JOB_BACKBONE = "outputs/capi-pretraining/backbone"
PRETRAINING_SCRIPT = Path(__file__).resolve().parents[1] / "pretraining" / "run_capi.py"
DEFAULT_PRETRAINING_STEPS = 300
# Crops down to a quarter of the image (run_capi.py's 0.6 otherwise): the segmentation runs on the whole 112-px image,
# where a digit covers 4-9 patches, more than in 56-px views of 60-100 % of it. k-NN mean IoU gain over the random
# init, 300 steps, seeds 42 / 0: +0.011 / +0.002 with 0.6, +0.009 / +0.010 with 0.25.
DEFAULT_PRETRAINING_CROP_SCALE_MIN = 0.25
# Trainer arguments this script sets when the command line does not.
TRAINING_DEFAULTS = {
    "output_dir": "outputs/semantic-segmentation",
    "remove_unused_columns": "False",
    "batch_eval_metrics": "True",
    "weight_decay": "0.05",
    "num_train_epochs": "10",
    "per_device_train_batch_size": "16",
    "lr_scheduler_type": "polynomial",
    "report_to": "none",
}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "An hf_mim backbone folder / Hub id (AutoBackbone.from_pretrained)."}
    )
    config_name: str | None = field(
        default=None,
        metadata={"help": "Random-init backbone: an hf_mim preset (the table below) or a config folder / Hub id."},
    )
    config_overrides: str | None = field(
        default=None, metadata={"help": "Config edits for --config_name, e.g. 'num_hidden_layers=4,image_size=64'."}
    )
    out_indices: list[int] | None = field(
        default=None,
        metadata={"help": "Backbone stages to use (indices into config.stage_names; 0 = stem). Default per protocol."},
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Image processor (mean / std / size); defaults to the model's."}
    )
    cache_dir: str | None = field(default=None)
    model_revision: str = field(default="main")
    main_job_backbone: str = field(
        default=MAIN_JOB_BACKBONE,
        metadata={"help": "Embedded default (no backbone argument): the pretrained backbone to use when it exists."},
    )
    default_pretraining_steps: int = field(
        default=DEFAULT_PRETRAINING_STEPS,
        metadata={
            "help": "Embedded default without --main_job_backbone: steps of the short run_capi.py pretraining "
            "(its CPU recipe) trained into <output_dir>/capi-pretraining-<steps>steps-seed<seed>."
        },
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(
        default=None, metadata={"help": "A `datasets` set: Hub id, load_dataset folder or save_to_disk folder."}
    )
    dataset_config_name: str | None = field(default=None)
    train_dir: str | None = field(default=None, metadata={"help": "Folder with images/ and masks/ (training)."})
    validation_dir: str | None = field(default=None, metadata={"help": "Folder with images/ and masks/."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of train held out for validation when there is no validation split."}
    )
    image_column_name: str = field(default="image")
    label_column_name: str = field(default="label")
    id2label_file: str | None = field(default=None, metadata={"help": "JSON {class id: name}."})
    reduce_labels: bool = field(default=False, metadata={"help": "Labels: 0 -> 255, others - 1 (ADE20K)."})
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)
    synthetic_train_images: int = field(default=256, metadata={"help": "Size of the synthetic training split."})
    synthetic_validation_images: int = field(default=64)
    image_size: int | None = field(
        default=None, metadata={"help": "Square input size; default: 112 (synthetic), else the processor's / model's."}
    )
    crop_min_scale: float = field(default=0.5, metadata={"help": "Smallest RandomResizedCrop area (training)."})
    hflip: bool = field(default=True)
    interpolation: str = field(default="bilinear", metadata={"help": "Image resampling: bilinear or bicubic."})

    @property
    def uses_synthetic(self) -> bool:
        return not (self.dataset_name or self.train_dir or self.validation_dir)


@dataclass
class ProtocolArguments:
    protocol: str | None = field(
        default=None,
        metadata={
            "help": f"One of {', '.join(PROTOCOLS)}. Default: linear, or knn for the embedded default backbone (its "
            "linear probe predicts only the background, random or pretrained)."
        },
    )
    head_dropout: float = field(default=0.0, metadata={"help": "linear: dropout before the 1x1 conv."})
    upernet_hidden_size: int = field(default=512, metadata={"help": "upernet: channels of the UperNet head."})
    upernet_auxiliary_head: bool = field(default=True, metadata={"help": "upernet: FCN head on the third map."})
    freeze_backbone: bool = field(default=False, metadata={"help": "upernet: train the heads only."})
    layer_decay: float | None = field(
        default=None,
        metadata={
            "help": "upernet: layer-wise lr decay (CAE / BEiT-B 0.65, CAE-L 0.95): block i of L trains at "
            "lr * decay^(L - i), the embeddings at lr * decay^(L + 1), the heads at lr. Default: off."
        },
    )
    k: int = field(default=10, metadata={"help": "knn: neighbours (CAPI's grid: 1, 3, 10, 30)."})
    temperature: float | None = field(
        default=0.07, metadata={"help": "knn: vote weight exp(cos / T); pass --temperature none for a plain vote."}
    )
    standardize_features: bool = field(default=True, metadata={"help": "knn / logistic: StandardScaler on train."})
    logistic_c: float = field(default=1.0, metadata={"help": "logistic: inverse L2 strength C (sklearn's)."})
    logistic_max_iter: int = field(default=1000)
    upsample: str = field(default="nearest", metadata={"help": "knn / logistic: patch -> pixel, nearest or bilinear."})
    num_visualized: int = field(default=4, metadata={"help": "Validation images drawn in the PNG."})


def default_protocol(model_args: ModelArguments) -> str:
    """linear, except for the embedded default backbone: CAPI's k-NN. On the synthetic set (91 % background, ten digit
    classes of about 1 % each) the linear probe predicts the background everywhere for the random and the pretrained
    CAPI alike (mean IoU 0.082 both; 1600 instead of 160 steps: 0.083), while the k-NN vote finds digits."""
    return "knn" if uses_default_backbone(model_args) else "linear"


def parse_arguments(argv=None):
    parser = HfArgumentParser((ModelArguments, DataArguments, ProtocolArguments, SegmentationTrainingArguments))
    add_presets_help(parser, PRESETS, DEFAULT_PRESET)
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        model_args, data_args, protocol_args, training_args = parser.parse_json_file(
            json_file=os.path.abspath(argv[0])
        )
        protocol_args.protocol = protocol_args.protocol or default_protocol(model_args)
        return model_args, data_args, protocol_args, training_args
    # "--temperature none": an unweighted vote.
    argv = ["nan" if a.lower() == "none" and i and argv[i - 1] == "--temperature" else a for i, a in enumerate(argv)]
    protocol = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--protocol"), None)
    protocol = protocol or next((a.split("=", 1)[1] for a in argv if a.startswith("--protocol=")), "linear")
    defaults = {**TRAINING_DEFAULTS, "learning_rate": "1e-4" if protocol == "upernet" else "1e-2"}
    for name, value in defaults.items():
        if f"--{name}" not in argv and not any(a.startswith(f"--{name}=") for a in argv):
            argv += [f"--{name}", value]
    model_args, data_args, protocol_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    if model_args.config_name:  # a mistyped preset fails now, not as a Hub lookup after the data is loaded
        model_args.config_name = resolve_config_name_or_exit(parser, model_args.config_name, PRESETS, SCRIPT)
    protocol_args.protocol = protocol_args.protocol or default_protocol(model_args)
    if protocol_args.temperature is not None and np.isnan(protocol_args.temperature):
        protocol_args.temperature = None
    if protocol_args.protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {protocol_args.protocol!r}.")
    if protocol_args.upsample not in ("nearest", "bilinear"):
        raise ValueError(f"--upsample must be nearest or bilinear, got {protocol_args.upsample!r}.")
    if protocol_args.layer_decay is not None:
        if protocol_args.protocol != "upernet":
            raise ValueError(f"--layer_decay applies to --protocol upernet, not {protocol_args.protocol!r}.")
        if not 0.0 < protocol_args.layer_decay <= 1.0:
            raise ValueError(f"--layer_decay must lie in (0, 1], got {protocol_args.layer_decay}.")
    return model_args, data_args, protocol_args, training_args


# ------------------------------------------------------------------------------------------------------------ data


def _paired_folder(directory: str) -> Dataset:
    root = Path(directory)
    mask_root = next((root / name for name in MASK_FOLDERS if (root / name).is_dir()), None)
    if not (root / "images").is_dir() or mask_root is None:
        raise ValueError(f"{root} must hold an images/ folder and a masks/ (or annotations/, labels/) folder.")
    masks = {path.stem: path for path in mask_root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES}
    images = sorted(path for path in (root / "images").rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
    pairs = [(str(image), str(masks[image.stem])) for image in images if image.stem in masks]
    if not pairs:
        raise ValueError(f"No image in {root / 'images'} has a mask of the same name in {mask_root}.")
    if len(pairs) < len(images):
        logger.warning("%d images in %s have no mask and are skipped.", len(images) - len(pairs), root)
    features = Features({"image": ImageFeature(), "label": ImageFeature()})
    return Dataset.from_dict({"image": [i for i, _ in pairs], "label": [m for _, m in pairs]}, features=features)


def is_saved_dataset(path: str) -> bool:
    """A folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, name)) for name in ("dataset_dict.json", "state.json")
    )


def load_data(data_args: DataArguments, model_args: ModelArguments, seed: int) -> DatasetDict:
    if data_args.uses_synthetic:
        return synthetic_segmentation_datasets(
            data_args.synthetic_train_images, data_args.synthetic_validation_images, SYNTHETIC_IMAGE_SIZE, seed=0
        )
    if data_args.dataset_name:
        if is_saved_dataset(data_args.dataset_name):
            dataset = load_from_disk(data_args.dataset_name)
            if isinstance(dataset, Dataset):
                dataset = DatasetDict(train=dataset)
        else:
            dataset = load_dataset(
                data_args.dataset_name, data_args.dataset_config_name, cache_dir=model_args.cache_dir
            )
    else:
        dataset = DatasetDict()
        if data_args.train_dir:
            dataset["train"] = _paired_folder(data_args.train_dir)
        if data_args.validation_dir:
            dataset["validation"] = _paired_folder(data_args.validation_dir)
    if "train" not in dataset:
        raise ValueError(f"The data set has no 'train' split (splits: {list(dataset)}).")
    if "validation" not in dataset:
        for name in ("val", "valid", "test"):
            if name in dataset:
                dataset["validation"] = dataset.pop(name)
                break
    if "validation" not in dataset and data_args.train_val_split > 0:
        split = dataset["train"].train_test_split(data_args.train_val_split, seed=seed)
        dataset["train"], dataset["validation"] = split["train"], split["test"]
    return dataset


def label_names(
    data_args: DataArguments, dataset: DatasetDict, label_column: str, skipped: SkippedFiles | None = None
) -> list[str]:
    """Class names, index = class id: --id2label_file, a local dataset folder's id2label.json, the synthetic set's,
    or the ids found in the training masks (after --reduce_labels; unreadable masks are recorded in `skipped`)."""
    path = data_args.id2label_file
    if path is None and data_args.dataset_name and os.path.isdir(data_args.dataset_name):
        candidate = os.path.join(data_args.dataset_name, "id2label.json")
        path = candidate if os.path.isfile(candidate) else None
    if path is not None:
        with open(path) as handle:
            id2label = {int(key): str(value) for key, value in json.load(handle).items()}
        return [id2label.get(i, str(i)) for i in range(max(id2label) + 1)]
    if data_args.uses_synthetic:
        names = list(SYNTHETIC_SEGMENTATION_LABELS)
        return names[1:] if data_args.reduce_labels else names  # reduced: the background is ignored
    logger.warning("No id2label: scanning the training masks for their class ids (pass --id2label_file to skip).")
    largest = -1
    for mask in dataset["train"][label_column]:
        try:
            labels = mask_to_array(mask)
        except DECODE_ERRORS as error:
            if skipped is not None:
                skipped.add(*decode_failure(mask, error))
            continue
        if data_args.reduce_labels:
            labels = reduce_labels(labels)
        labels = labels[labels != IGNORE_INDEX]
        if labels.size:
            largest = max(largest, int(labels.max()))
    if largest < 0:
        raise ValueError("Every training pixel is ignored (255): no classes to learn.")
    return [str(i) for i in range(largest + 1)]


def resolve_column(dataset, requested: str, fallbacks: tuple[str, ...], kind: str) -> str:
    columns = dataset.column_names
    if requested in columns:
        return requested
    for name in fallbacks:
        if name in columns:
            return name
    raise ValueError(f"No {kind} column {requested!r} (columns: {columns}); pass --{kind}_column_name.")


# -------------------------------------------------------------------------------------------------------- backbone


def _parse_overrides(text: str | None) -> dict:
    overrides = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, _, value = item.partition("=")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()
    return overrides


def _base_config(model_args: ModelArguments):
    if model_args.model_name_or_path:
        return AutoConfig.from_pretrained(
            model_args.model_name_or_path, cache_dir=model_args.cache_dir, revision=model_args.model_revision
        )
    name = resolve_config_name(model_args.config_name or DEFAULT_PRESET, PRESETS, SCRIPT)
    overrides = _parse_overrides(model_args.config_overrides)
    if name in PRESETS:
        return PRESETS[name](**overrides)
    return AutoConfig.from_pretrained(name, cache_dir=model_args.cache_dir, **overrides)


def default_out_indices(config, protocol: str) -> list[int] | None:
    """linear: all four stages of a VICRegL ConvNeXt (VICRegL's config), else the last stage; upernet: four stages
    at 1/3, 1/2, 2/3 and all of the depth (BEiT / CAE: blocks 4, 6, 8, 12 of 12, 8, 12, 16, 24 of 24; the four
    stages of a convolutional backbone), every stage when there are fewer than four; knn / logistic: the last stage."""
    stages = list(getattr(config, "stage_names", None) or [])
    if not stages:
        return None
    last = len(stages) - 1
    if protocol == "linear" and getattr(config, "backbone_type", None) == "convnext" and last >= 4:
        return [1, 2, 3, 4]
    if protocol == "upernet":
        if last < 4:
            return list(range(last + 1))
        chosen = sorted({max(1, round(last * fraction)) for fraction in (1 / 3, 1 / 2, 2 / 3, 1)})
        return chosen if len(chosen) == 4 else [last * (i + 1) // 4 for i in range(4)]
    return [last]


def build_backbone(model_args: ModelArguments, protocol: str, seed: int):
    """(backbone, config): AutoBackbone from --model_name_or_path, or a random-init one from --config_name."""
    config = _base_config(model_args)
    out_indices = model_args.out_indices or default_out_indices(config, protocol)
    backbone_kwargs = {}
    if out_indices is not None:
        backbone_kwargs["out_indices"] = list(out_indices)
    if protocol == "upernet" and hasattr(config, "backbone_multiscale") and len(out_indices or []) == 4:
        # ViTs: one map per chosen block at the patch stride -> the 4x / 2x / 1x / 0.5x pyramid of CAE / BEiT.
        backbone_kwargs["backbone_multiscale"] = getattr(config, "patch_size", None) is not None
    if model_args.model_name_or_path:
        backbone = AutoBackbone.from_pretrained(
            model_args.model_name_or_path, cache_dir=model_args.cache_dir, revision=model_args.model_revision,
            **backbone_kwargs,
        )  # fmt: skip
    else:
        for key, value in backbone_kwargs.items():
            setattr(config, key, value)
        torch.manual_seed(seed)
        backbone = AutoBackbone.from_config(config)
    return backbone, backbone.config


def image_statistics(model_args: ModelArguments, data_args: DataArguments, config):
    """(image_size, mean, std, processor): --image_size, the image processor's crop / size, the config's image_size;
    mean / std from the processor, else ImageNet's."""
    size = data_args.image_size
    if size is None and data_args.uses_synthetic:
        size = SYNTHETIC_IMAGE_SIZE
    source = model_args.image_processor_name or model_args.model_name_or_path
    return input_statistics(source, size, config, model_args.cache_dir)


# ------------------------------------------------------------------------------------------------------- protocols


def original_no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    """The weight-decay exclusions of CAE / BEiT's mmseg `LayerDecayOptimizerConstructor`: 1-D parameters (norms,
    BatchNorm, layer scale) and biases. (Its `name in ('pos_embed', 'cls_token')` never matches the prefixed names
    `backbone.pos_embed` / `backbone.cls_token`, so position embeddings and tokens are decayed there too.)"""
    return param.ndim == 1 or name.endswith(".bias")


def upernet_layer_decay_groups(
    model: UperNetForSemanticSegmentation, learning_rate: float, weight_decay: float, layer_decay: float
) -> list[dict]:
    """Optimizer groups of the UperNet protocol with layer-wise lr decay
    (`hf_mim.finetuning.layer_decay_parameter_groups` on the whole model, the depth counted in the backbone): layer
    id 0 for the embeddings, i + 1 for block i,
    L + 1 for the rest, lr scale layer_decay^(L + 1 - layer id), as mmseg's `LayerDecayOptimizerConstructor` of the
    CAE / BEiT segmentation code (`num_layers` + 2 ids, scale rate^(num_layers + 2 - id - 1)). ViT backbones only: a
    convolutional backbone's blocks are not one indexed sequence."""
    num_layers = num_backbone_layers(model.backbone)
    expected = getattr(model.backbone.config, "num_hidden_layers", None)
    if not num_layers or num_layers != expected:
        raise ValueError(
            f"--layer_decay needs a ViT backbone whose blocks are numbered 0..num_hidden_layers - 1; "
            f"{type(model.backbone).__name__} has {num_layers} indexed blocks, num_hidden_layers {expected}."
        )
    return layer_decay_parameter_groups(
        model, learning_rate, weight_decay, layer_decay, no_weight_decay_fn=original_no_weight_decay,
        num_layers=num_layers,
    )  # fmt: skip


class SegmentationTrainer(SkippedFilesTrainerMixin, Trainer):
    """The Trainer, skipping unreadable pairs: placeholders dropped in training (an all-failed batch is refilled),
    ignored in evaluation; each file recorded once in `skipped_files`. With `layer_decay` (UperNet), the optimizer
    runs on `upernet_layer_decay_groups`; the lr schedule scales every group's initial lr, so the ratios hold."""

    def __init__(self, *args, layer_decay: float | None = None, **kwargs):
        self.layer_decay = layer_decay
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        if self.layer_decay is None or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs = dict(optimizer_kwargs)
        if not isinstance(optimizer_cls, type) or any(k in optimizer_kwargs for k in ("params", "model")):
            raise ValueError(
                f"--layer_decay builds its own parameter groups; --optim {self.args.optim} cannot take them."
            )
        groups = upernet_layer_decay_groups(
            opt_model, self.args.learning_rate, self.args.weight_decay, self.layer_decay
        )
        logger.info("Layer decay %.3g: %d parameter groups", self.layer_decay, len(groups))
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer


def save_metrics(output_dir: str, split: str, metrics: dict) -> None:
    """Trainer.save_metrics(combined=True): `<split>_results.json` and the union in `all_results.json`."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, f"{split}_results.json"), "w") as handle:
        json.dump(metrics, handle, indent=4, sort_keys=True)
    path = os.path.join(output_dir, "all_results.json")
    combined = {}
    if os.path.isfile(path):
        with open(path) as handle:
            combined = json.load(handle)
    combined.update(metrics)
    with open(path, "w") as handle:
        json.dump(combined, handle, indent=4, sort_keys=True)


def denormalize(pixel_values: torch.Tensor, mean, std) -> np.ndarray:
    """(3, H, W) normalised tensor -> (H, W, 3) uint8."""
    mean = torch.tensor(mean).view(3, 1, 1)
    std = torch.tensor(std).view(3, 1, 1)
    image = (pixel_values.detach().float().cpu() * std + mean).clamp(0, 1)
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def run_trained_protocol(
    protocol_args, training_args, backbone, config, datasets, names, visual_examples, collator, skipped
):
    num_labels = len(names)
    id2label = dict(enumerate(names))
    if protocol_args.protocol == "linear":
        head = LinearSegmentationHead(backbone.channels, num_labels, dropout=protocol_args.head_dropout)
        if training_args.world_size > 1 and training_args.device.type != "cpu":
            head = torch.nn.SyncBatchNorm.convert_sync_batchnorm(head)  # VICRegL's SyncBN (GPU / XPU only)
        model = FrozenBackboneSegmenter(backbone, head)
    else:
        upernet_config = UperNetConfig(
            backbone_config=config,
            num_labels=num_labels,
            id2label=id2label,
            label2id={name: i for i, name in id2label.items()},
            hidden_size=protocol_args.upernet_hidden_size,
            use_auxiliary_head=protocol_args.upernet_auxiliary_head and len(backbone.channels) >= 3,
            loss_ignore_index=IGNORE_INDEX,
        )
        model = UperNetForSemanticSegmentation(upernet_config)
        model.backbone = backbone  # the loaded (or seeded random) weights, not the fresh copy UperNet built
        if protocol_args.freeze_backbone:
            model.backbone.requires_grad_(False)
    with pushing_to(hub_repo_of(training_args)):  # with --push_to_hub the Trainer creates its repo here
        trainer = SegmentationTrainer(
            model=model,
            args=training_args,
            train_dataset=datasets["train"],
            eval_dataset=datasets.get("validation"),
            data_collator=collator,
            skipped_files=skipped,
            compute_metrics=SegmentationComputeMetrics(num_labels, names),
            preprocess_logits_for_metrics=argmax_logits,
            layer_decay=protocol_args.layer_decay if protocol_args.protocol == "upernet" else None,
        )
    start = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    with pushing_to(hub_repo_of(training_args)):  # the upload fails after the model is saved
        trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    metrics = {}
    if datasets.get("validation") is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    elapsed = time.perf_counter() - start
    predictions = []
    if visual_examples and trainer.is_world_process_zero():
        model.eval()
        device = next(model.parameters()).device
        with torch.no_grad():
            pixel_values = torch.stack([example["pixel_values"] for example in visual_examples]).to(device)
            logits = model(pixel_values=pixel_values).logits
        predictions = list(logits.argmax(dim=1).cpu())
    return metrics, predictions, {"train_loss": round(float(train_result.training_loss), 4), "seconds": elapsed}


def run_patch_protocol(protocol_args, training_args, backbone, datasets, names, visual_examples, collator, skipped):
    num_labels = len(names)
    device = training_args.device
    backbone.to(device).eval()
    loader = dict(
        batch_size=training_args.per_device_eval_batch_size,
        collate_fn=collator,
        num_workers=training_args.dataloader_num_workers,
    )
    start = time.perf_counter()
    bank_batches = DataLoader(datasets["train_eval"], **loader)
    features, labels = patch_feature_bank(backbone, bank_batches, device, skipped=skipped)
    features, labels = features.to(device), labels.to(device)
    scaler = FeatureScaler.fit(features).to(device) if protocol_args.standardize_features else torch.nn.Identity()
    if protocol_args.protocol == "knn":
        bank = scaler(features)

        def classify(patches):
            return knn_segment(
                bank, labels, scaler(patches), num_labels, k=protocol_args.k, temperature=protocol_args.temperature
            )
    else:
        probe = fit_logistic_regression(
            features, labels, num_labels, C=protocol_args.logistic_c, max_iter=protocol_args.logistic_max_iter,
            standardize=protocol_args.standardize_features,
        )  # fmt: skip

        def classify(patches):
            return probe(patches).softmax(dim=-1)

    def predict(pixel_values, size):
        dense = dense_features(backbone, pixel_values.to(device)).float()  # (B, D, h, w)
        batch, dim, height, width = dense.shape
        scores = classify(dense.permute(0, 2, 3, 1).reshape(-1, dim))
        scores = scores.view(batch, height, width, num_labels).permute(0, 3, 1, 2)
        return upsample_patch_scores(scores, size, protocol_args.upsample).argmax(dim=1)

    metric = SegmentationMetrics(num_labels).to(device)
    with torch.no_grad():
        for batch in DataLoader(datasets["validation"], **loader):
            batch = readable_part(batch, skipped)
            if batch is None:
                continue  # every pair of this batch was unreadable
            metric.update(predict(batch["pixel_values"], batch["labels"].shape[-2:]), batch["labels"].to(device))
        predictions = []
        if visual_examples:
            pixel_values = torch.stack([example["pixel_values"] for example in visual_examples])
            predictions = list(predict(pixel_values, visual_examples[0]["labels"].shape[-2:]).cpu())
    elapsed = time.perf_counter() - start
    metrics = {f"eval_{key}": value for key, value in metric.summary(names).items()}
    metrics.update(eval_train_patches=int(labels.numel()), eval_runtime=round(elapsed, 4))
    if training_args.process_index == 0:
        save_metrics(training_args.output_dir, "eval", metrics)
    return metrics, predictions, {"train_patches": int(labels.numel()), "seconds": elapsed}


def uses_default_backbone(model_args: ModelArguments) -> bool:
    """No backbone named on the command line: the embedded default compares a pretrained CAPI with its random init."""
    return not (model_args.model_name_or_path or model_args.config_name or model_args.config_overrides)


def default_backbone(model_args: ModelArguments, output_dir: str, seed: int) -> tuple[Path, Path | None, str]:
    """(backbone folder, folder to pretrain into first or None, the one line that says which backbone and why).

    The main job's backbone (`run_capi.py`'s default output) when it exists; else an earlier short pretraining of
    this example in `output_dir`; else a new one of `--default_pretraining_steps` steps."""
    main_job = Path(model_args.main_job_backbone)
    against = f"against a random init of its config (seed {seed})"
    if (main_job / "config.json").is_file():
        return main_job, None, f"Backbone: {main_job}, the main job's CAPI backbone (run_capi.py's output), {against}."
    steps = model_args.default_pretraining_steps
    folder = Path(output_dir) / f"capi-pretraining-{steps}steps-seed{seed}"
    reason = f"no --model_name_or_path and no main-job backbone at {main_job}"
    if (folder / "backbone" / "config.json").is_file():
        statement = f"Backbone: {folder / 'backbone'}, this example's earlier {steps}-step CAPI pretraining ({reason})"
        return folder / "backbone", None, f"{statement}, {against}."
    statement = (
        f"Backbone: {reason}, so a short CAPI pretraining ({steps} steps of run_capi.py's CPU recipe, crops from "
        f"{DEFAULT_PRETRAINING_CROP_SCALE_MIN:.0%} of the image, on this example's training images without their "
        f"masks) is trained into {folder}, then evaluated {against}."
    )
    return folder / "backbone", folder, statement


def pretrain_default_backbone(folder: Path, steps: int, seed: int, train_images) -> None:
    """The main job on this example's images: `run_capi.py` with its CPU recipe (`hf_mim.presets.CPU_RECIPES`) and
    `steps` steps, on the training images of the synthetic set (their masks unused), in a child process, since
    examples do not import each other; its log goes to this process's console."""
    image_dir = folder.parent / f"{folder.name}-images" / "train"
    image_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for index, value in enumerate(train_images):
        try:
            decode_image(value).save(image_dir / f"{index:05d}.png")
            written += 1
        except DECODE_ERRORS:
            continue  # named by the segmentation runs, which skip the same file
    # The recipe's batch (64) unless there are fewer images: its loader drops a short last batch.
    batch = ["--per_device_train_batch_size", str(written)] if written < 64 else []
    command = [
        sys.executable, str(PRETRAINING_SCRIPT), *CPU_RECIPES["capi"], "--max_steps", str(steps), "--seed", str(seed),
        "--crop_scale_min", str(DEFAULT_PRETRAINING_CROP_SCALE_MIN), "--train_dir", str(image_dir.parent),
        "--output_dir", str(folder), "--save_strategy", "no", "--disable_tqdm", "True", *batch,
    ]  # fmt: skip
    completed = subprocess.run(command)
    if completed.returncode != 0 or not (folder / "backbone" / "config.json").is_file():
        raise RuntimeError(f"The default backbone's pretraining failed (exit code {completed.returncode}): {command}")


def prepare_data(data_args: DataArguments, model_args: ModelArguments, seed: int):
    """(dataset without decoding, image column, label column, label names, skipped files)."""
    dataset = load_data(data_args, model_args, seed)
    image_column = resolve_column(dataset["train"], data_args.image_column_name, ("image", "img", "pixel_values"), "image")  # fmt: skip
    label_column = resolve_column(
        dataset["train"], data_args.label_column_name, ("label", "annotation", "mask", "segmentation"), "label"
    )
    for split, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if split in dataset and limit is not None:
            dataset[split] = dataset[split].select(range(min(limit, len(dataset[split]))))
    # decode_image / load_image read the files, so that an unreadable image or mask is skipped instead of crashing
    dataset = without_decoding(dataset, image_column, label_column)
    skipped = SkippedFiles()
    names = label_names(data_args, dataset, label_column, skipped)
    return dataset, image_column, label_column, names, skipped


@dataclass
class Evaluation:
    """One backbone's run of the protocol: the result line, and what the picture needs."""

    result: dict
    visual_examples: list
    predictions: list
    mean: tuple
    std: tuple


def evaluate_backbone(model_args, data_args, protocol_args, training_args, data, skipped) -> Evaluation:
    """Build the backbone of `model_args`, run the protocol in `training_args.output_dir`; every backbone of a
    comparison starts from the same seed (head initialisation, data order)."""
    dataset, image_column, label_column, names = data
    protocol = protocol_args.protocol
    set_seed(training_args.seed)
    backbone, config = build_backbone(model_args, protocol, training_args.seed)
    image_size, mean, std, processor = image_statistics(model_args, data_args, config)
    common = dict(mean=mean, std=std, interpolation=data_args.interpolation, reduce_labels=data_args.reduce_labels)
    train_transform = SegmentationTransform(
        image_size, train=True, scale=(data_args.crop_min_scale, 1.0), hflip=data_args.hflip, **common
    )
    eval_transform = SegmentationTransform(image_size, train=False, **common)
    datasets = {
        "train": dataset["train"].with_transform(SegmentationExamples(train_transform, image_column, label_column)),
        "train_eval": dataset["train"].with_transform(
            SegmentationExamples(eval_transform, image_column, label_column)
        ),
    }
    if "validation" in dataset:
        datasets["validation"] = dataset["validation"].with_transform(
            SegmentationExamples(eval_transform, image_column, label_column)
        )
    elif protocol in ("knn", "logistic"):
        raise ValueError("The knn / logistic protocols evaluate on a validation split; the data set has none.")
    elif training_args.eval_strategy != "no":
        training_args.eval_strategy = "no"
        logger.warning("No validation split: evaluation disabled.")
    visual_examples = []
    if "validation" in datasets and protocol_args.num_visualized > 0:
        for index in range(len(datasets["validation"])):  # the first readable validation pairs
            if len(visual_examples) == protocol_args.num_visualized:
                break
            example = datasets["validation"][index]
            if example["pixel_values"] is None:
                skipped.add(*example["skipped_file"])
            else:
                visual_examples.append(example)
    collator = segmentation_collator(image_size)

    if protocol in ("linear", "upernet"):
        metrics, predictions, extra = run_trained_protocol(
            protocol_args, training_args, backbone, config, datasets, names, visual_examples, collator, skipped
        )
    else:
        metrics, predictions, extra = run_patch_protocol(
            protocol_args, training_args, backbone, datasets, names, visual_examples, collator, skipped
        )
    result = {
        "protocol": protocol,
        "model": model_args.model_name_or_path or f"random {model_args.config_name or DEFAULT_PRESET}",
        "out_indices": list(getattr(config, "out_indices", None) or []),
        "image_size": image_size,
        "train_images": len(dataset["train"]),
        "eval_images": len(dataset["validation"]) if "validation" in dataset else 0,
        **{key: round(value, 4) if isinstance(value, float) else value for key, value in extra.items()},
    }
    for key in ("mean_iou", "pixel_accuracy", "mean_accuracy"):
        if f"eval_{key}" in metrics:
            result[key] = round(float(metrics[f"eval_{key}"]), 4)
    if any(f"eval_iou_{name}" in metrics for name in names):
        result["iou"] = {name: round(float(metrics[f"eval_iou_{name}"]), 4) for name in names}
    if training_args.process_index == 0 and processor is not None and protocol in ("linear", "upernet"):
        processor.save_pretrained(training_args.output_dir)
    return Evaluation(result, visual_examples, predictions, tuple(mean), tuple(std))


def comparison_table(results: dict[str, dict], names: list[str]) -> str:
    """The runs side by side: mean IoU, pixel accuracy, mean class accuracy, then each class's IoU."""
    rows = [("mean IoU", "mean_iou"), ("pixel accuracy", "pixel_accuracy"), ("mean accuracy", "mean_accuracy")]
    width = max(12, *(len(label) + 2 for label in results))
    lines = ["metric".ljust(16) + "".join(label.rjust(width) for label in results)]
    for title, key in rows:
        values = [result.get(key, float("nan")) for result in results.values()]
        lines.append(title.ljust(16) + "".join(f"{value:{width}.3f}" for value in values))
    for name in names:
        values = [result.get("iou", {}).get(name, float("nan")) for result in results.values()]
        lines.append(f"IoU {name}".ljust(16) + "".join(f"{value:{width}.3f}" for value in values))
    return "\n".join(lines)


def save_labelled_picture(path: str, runs: dict[str, Evaluation], names: list[str], protocol: str) -> None:
    """image | ground truth | one prediction column per run, titled, with each run's mean IoU as the caption."""
    first = next(iter(runs.values()))
    images = [denormalize(example["pixel_values"], first.mean, first.std) for example in first.visual_examples]
    labels = [example["labels"] for example in first.visual_examples]
    columns = {
        f"{label} prediction" if len(runs) > 1 else "prediction": run.predictions for label, run in runs.items()
    }
    caption = [
        f"{title}: mean IoU {run.result.get('mean_iou', float('nan')):.3f}, pixel accuracy "
        f"{run.result.get('pixel_accuracy', float('nan')):.3f} ({protocol} protocol)"
        for title, run in zip(columns, runs.values())
    ]
    labelled_prediction_grid(images, labels, columns, len(names), caption=caption, label_names=names).save(path)


def main(argv=None) -> dict:
    model_args, data_args, protocol_args, training_args = parse_arguments(argv)
    if training_args.should_log:
        logging.set_verbosity(training_args.get_process_log_level())
    set_seed(training_args.seed)
    protocol = protocol_args.protocol
    output_dir = training_args.output_dir

    # Which backbone(s), said first: the embedded default pretrains (or finds) a CAPI backbone and compares it with
    # its random init; a named backbone is evaluated alone.
    runs = {"model": model_args}
    if uses_default_backbone(model_args):
        backbone_dir, pretraining_dir, statement = default_backbone(model_args, output_dir, training_args.seed)
        if training_args.process_index == 0:
            print(statement, flush=True)
    elif training_args.process_index == 0:
        source = model_args.model_name_or_path or f"random init of {model_args.config_name or DEFAULT_PRESET}"
        print(f"Backbone: {source} (from the command line).", flush=True)

    dataset, image_column, label_column, names, skipped = prepare_data(data_args, model_args, training_args.seed)
    data = (dataset, image_column, label_column, names)
    if uses_default_backbone(model_args):
        with training_args.main_process_first(desc="default backbone"):
            if pretraining_dir is not None and not (backbone_dir / "config.json").is_file():
                steps = model_args.default_pretraining_steps
                pretrain_default_backbone(pretraining_dir, steps, training_args.seed, dataset["train"][image_column])
        runs = {
            # same config and image processor (mean / std), random weights from --seed
            "random-init": replace(model_args, config_name=str(backbone_dir), image_processor_name=str(backbone_dir)),
            "pretrained": replace(model_args, model_name_or_path=str(backbone_dir)),
        }
    evaluations = {}
    for label, run_model_args in runs.items():
        training_args.output_dir = output_dir if len(runs) == 1 else os.path.join(output_dir, label)
        evaluations[label] = evaluate_backbone(run_model_args, data_args, protocol_args, training_args, data, skipped)
    training_args.output_dir = output_dir
    skipped = skipped.gathered()  # every process's files (a collective)

    if len(runs) == 1:
        result = {**evaluations["model"].result, "skipped_images": len(skipped)}
    else:
        result = {
            "protocol": protocol,
            **{
                f"mean_iou_{label.replace('-', '_')}": run.result.get("mean_iou") for label, run in evaluations.items()
            },
            "runs": {label: run.result for label, run in evaluations.items()},
            "skipped_images": len(skipped),
        }
    if training_args.process_index == 0:
        if any(run.predictions for run in evaluations.values()):
            path = os.path.join(output_dir, PREDICTIONS_PNG)
            save_labelled_picture(path, evaluations, names, protocol)
            result["picture"] = path
        if len(runs) > 1:
            print(f"Segmentation ({protocol}): {result['runs']['pretrained']['eval_images']} validation images")
            print(comparison_table({label: run.result for label, run in evaluations.items()}, names))
            save_metrics(output_dir, "comparison", result)
        if skipped:
            print(skipped.summary())
        print(json.dumps(result))

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return result


if __name__ == "__main__":
    sys.exit(exit_status(main))
