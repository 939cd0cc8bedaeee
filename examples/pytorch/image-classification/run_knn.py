#!/usr/bin/env python
"""k-NN classification of frozen features: the quick check that self-supervised pretraining learned something.

    python examples/pytorch/image-classification/run_knn.py --model_name_or_path outputs/capi-pretraining/backbone
    python examples/pytorch/image-classification/run_knn.py --config_name capi-tiny      # a preset's random init
    python examples/pytorch/image-classification/run_knn.py --model_name_or_path <backbone> \
        --train_dir /data/pets/train --validation_dir /data/pets/val --image_size 224
    python examples/pytorch/image-classification/run_knn.py --model_name_or_path <backbone> --dataset_name <name>

Default data: the probes of the main job's learning report (`hf_mim.evaluation.learning.evaluate_probes`, bundled,
no download): scikit-learn's digits, clean and transformed (random scale, position, rotation, colours), the same
70 / 30 split, at the resolution the checkpoint was trained at (its processor's crop). The printed table has raw
pixels, the checkpoint's own random initialisation (`--random_baseline`, on by default: the same class and config,
seed `--seed`, so the same patch and size) and the checkpoint: the numbers of the learning report of the run that
made it, up to the random draw of the initialisation.

`--train_dir` / `--validation_dir` (image folders, one sub-folder per class, read by the `imagefolder` builder) or
`--dataset_name` (a `datasets` name or local folder; `--train_split` / `--validation_split`) replace the default
data. There, features (`pooler_output`, or the mean patch token with `--pooling mean_patch`) of the train split vote
for the validation images (weighted k-NN on cosine similarity, DINO-style); unreadable images (corrupt, truncated,
not an image) are skipped, each named in a warning once, and counted in a "Skipped N unreadable image(s): ..." line
at the end. The last line is JSON.
"""

import argparse
import json
import os

import torch
from datasets import DatasetDict, load_dataset
from torch.utils.data import DataLoader
from transformers import AutoImageProcessor, AutoModel
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

import hf_mim  # noqa: F401  (registers the Auto classes)
from hf_mim.data.labelled import ProcessedExamples
from hf_mim.data.skipped import SkippedFiles, SkippingCollator
from hf_mim.data.transforms import without_decoding
from hf_mim.evaluation.knn import extract_features, knn_accuracy
from hf_mim.evaluation.learning import (
    PROBE_K,
    PROBE_TEMPERATURE,
    PROBES,
    evaluate_probes,
    format_probe_tables,
    probe_processor,
    probe_suite,
    random_baseline,
    trained_image_size,
)
from hf_mim.losses import effective_rank
from hf_mim.presets import CONFIG_PRESETS
from hf_mim.presets.help import add_presets_help
from hf_mim.presets.lookup import resolve_config_name_or_exit


def processor_class_for(config) -> type:
    """The hf_mim image-processor class of a config's model type (the torchvision-backed one)."""
    classes = IMAGE_PROCESSOR_MAPPING[type(config)]
    if isinstance(classes, dict):
        return classes.get("torchvision") or next(iter(classes.values()))
    return classes


def load_models(args) -> tuple[dict[str, torch.nn.Module], type, int]:
    """{row label: model} (the checkpoint after its own random init, or a preset's random init), the processor class
    and the image size."""
    if args.config_name:
        torch.manual_seed(args.seed)
        model = AutoModel.from_config(CONFIG_PRESETS[args.config_name]())
        return {f"random {args.config_name}": model}, processor_class_for(model.config), model.config.image_size
    model = AutoModel.from_pretrained(args.model_name_or_path)
    try:
        processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
        processor_class = type(processor)
    except OSError:  # a folder with weights and config only
        processor, processor_class = None, processor_class_for(model.config)
    models = {"random init": random_baseline(model, args.seed)} if args.random_baseline else {}
    models["trained"] = model
    return models, processor_class, trained_image_size(model, processor)


def load_splits(args) -> DatasetDict:
    """The "train" and "validation" splits of the image folders or of `--dataset_name`."""
    if args.train_dir:
        files = {"train": os.path.join(args.train_dir, "**"), "validation": os.path.join(args.validation_dir, "**")}
        return load_dataset("imagefolder", data_files=files)
    dataset = load_dataset(args.dataset_name, args.dataset_config_name)
    validation = args.validation_split if args.validation_split in dataset else "test"
    if args.train_split not in dataset or validation not in dataset:
        raise SystemExit(f"{args.dataset_name} has splits {sorted(dataset)}; name them with --train_split and "
                         "--validation_split.")  # fmt: skip
    splits = DatasetDict(train=dataset[args.train_split], validation=dataset[validation])
    renames = {args.image_column_name: "image", args.label_column_name: "label"}
    return DatasetDict({name: split.rename_columns({a: b for a, b in renames.items() if a != b})
                        for name, split in splits.items()})  # fmt: skip


def knn_on_splits(args, models: dict, processor_class, image_size: int) -> dict:
    """k-NN of each model on the given splits (one --pooling); unreadable images are skipped and counted."""
    processor = probe_processor(processor_class, image_size)
    splits = without_decoding(load_splits(args), "image")  # decode_image reads the files: unreadable ones skipped
    collator = SkippingCollator({"pixel_values": torch.zeros(3, image_size, image_size), "labels": -100})
    label_feature = splits["train"].features["label"]
    num_classes = getattr(label_feature, "num_classes", None)  # also the classes no readable image stands for
    results, skipped = {}, SkippedFiles()
    for label, model in models.items():
        features, labels, skipped = {}, {}, SkippedFiles()  # every model reads the same files: count them once
        for name in ("train", "validation"):
            loader = DataLoader(
                splits[name].with_transform(ProcessedExamples(processor, "image", "label")),
                batch_size=args.batch_size,
                collate_fn=collator,
                num_workers=args.num_workers,
            )
            features[name], labels[name] = extract_features(
                model, loader, pooling=args.pooling, return_labels=True, skipped=skipped
            )
        accuracy = knn_accuracy(
            features["train"], labels["train"], features["validation"], labels["validation"], k=args.k,
            temperature=args.temperature, num_classes=num_classes,
        )  # fmt: skip
        results[label] = {
            "knn_top1": round(accuracy, 4),
            "effective_rank": round(float(effective_rank(features["validation"])), 2),
            "feature_dim": features["validation"].shape[1],
            "train_images": len(features["train"]),
            "test_images": len(features["validation"]),
            "skipped_images": len(skipped),
        }
    if skipped:
        print(skipped.summary())
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_name_or_path")
    source.add_argument("--config_name", help="A preset (the table below): randomly initialised baseline (seed 0)")
    parser.add_argument("--random_baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="Also evaluate a random init of the checkpoint's own class and config")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random initialisation")
    parser.add_argument("--image_size", type=int, default=None,
                        help="Default: the checkpoint's training resolution (its processor's crop)")  # fmt: skip
    parser.add_argument("--probes", default=",".join(PROBES), help=f"Bundled probes (default data): {list(PROBES)}")
    parser.add_argument("--train_dir", help="Image folder (one sub-folder per class) of the images that vote")
    parser.add_argument("--validation_dir", "--test_dir", dest="validation_dir",
                        help="Image folder of the images to classify (with --train_dir)")  # fmt: skip
    parser.add_argument("--dataset_name", help="A `datasets` name or local data folder (e.g. an image folder)")
    parser.add_argument("--dataset_config_name")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--validation_split", default="validation", help="Falls back to 'test' when absent")
    parser.add_argument("--image_column_name", default="image")
    parser.add_argument("--label_column_name", default="label")
    parser.add_argument("--pooling", choices=["pooler", "mean_patch"], default="pooler",
                        help="Feature for --train_dir / --dataset_name (the bundled probes report both)")  # fmt: skip
    parser.add_argument("--k", type=int, default=PROBE_K)
    parser.add_argument("--temperature", type=float, default=PROBE_TEMPERATURE)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes")
    add_presets_help(parser, CONFIG_PRESETS)
    args = parser.parse_args(argv)
    if args.config_name:  # presets only: a random init needs no download
        args.config_name = resolve_config_name_or_exit(parser, args.config_name, CONFIG_PRESETS, external=False)
    if bool(args.train_dir) != bool(args.validation_dir):
        parser.error("--train_dir and --validation_dir go together.")
    if args.train_dir and args.dataset_name:
        parser.error("Give either --train_dir / --validation_dir or --dataset_name.")

    models, processor_class, image_size = load_models(args)
    image_size = args.image_size or image_size
    name = args.model_name_or_path or f"random {args.config_name}"
    if args.train_dir or args.dataset_name:
        results = knn_on_splits(args, models, processor_class, image_size)
        # The checkpoint's own row first (the keys earlier versions printed), the other rows beside it.
        result = {"model": name, "pooling": args.pooling, "image_size": image_size, **results[list(models)[-1]],
                  "rows": results}  # fmt: skip
    else:
        if (args.k, args.temperature) != (PROBE_K, PROBE_TEMPERATURE):
            parser.error("The bundled probes use k=20, T=0.07 (the learning report's protocol).")
        suite = probe_suite(processor_class, image_size, [p.strip() for p in args.probes.split(",") if p.strip()])
        probes = evaluate_probes(suite, models)
        print(format_probe_tables(probes, suite, title=f"k-NN top-1 (k={PROBE_K}, cosine), frozen {name}"))
        result = {"model": name, "image_size": image_size, "probes": probes}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
