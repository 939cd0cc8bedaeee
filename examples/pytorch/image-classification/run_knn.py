#!/usr/bin/env python
"""k-NN classification of frozen features: the quick check that self-supervised pretraining learned something.

    python examples/pytorch/image-classification/run_knn.py --model_name_or_path outputs/capi-pretraining/backbone
    python examples/pytorch/image-classification/run_knn.py --config_name capi-tiny      # random-init baseline
    python examples/pytorch/image-classification/run_knn.py --model_name_or_path <backbone> \
        --train_dir /data/pets/train --test_dir /data/pets/test --image_size 224

Features (`pooler_output`, or the mean patch token with `--pooling mean_patch`) of the train split vote for the
test images (weighted k-NN on cosine similarity, DINO-style). Default data: scikit-learn's 8x8 digits upscaled
to `--image_size` (bundled, no download); `--train_dir` / `--test_dir`: image folders, one sub-folder per class.
Unreadable images (corrupt, truncated, not an image) are skipped, each named in a warning once, and counted in a
"Skipped N unreadable image(s): ..." line at the end. Prints top-1 accuracy and the effective rank of the test
features (the last line, JSON).
"""

import argparse
import json
import os

import torch
from datasets import DatasetDict, load_dataset
from torch.utils.data import DataLoader
from transformers import AutoModel

import hf_mim
from hf_mim.data.labelled import ProcessedExamples, digits_dataset
from hf_mim.data.skipped import SkippedFiles, SkippingCollator
from hf_mim.data.transforms import without_decoding
from hf_mim.evaluation import extract_features, knn_accuracy
from hf_mim.losses import effective_rank
from hf_mim.presets import CONFIG_PRESETS
from hf_mim.presets.help import add_presets_help
from hf_mim.presets.lookup import resolve_config_name_or_exit


def load_splits(args) -> DatasetDict:
    """The "train" and "test" splits: the digits, or the two image folders (labels from the sub-folder names)."""
    if not args.train_dir:
        return DatasetDict(
            train=digits_dataset("train", args.image_size), test=digits_dataset("test", args.image_size)
        )
    files = {"train": os.path.join(args.train_dir, "**"), "test": os.path.join(args.test_dir, "**")}
    return load_dataset("imagefolder", data_files=files)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_name_or_path")
    source.add_argument("--config_name", help="A preset (the table below): randomly initialised baseline (seed 0)")
    parser.add_argument("--image_size", type=int, default=56)
    parser.add_argument("--pooling", choices=["pooler", "mean_patch"], default="pooler")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--train_dir", help="Image folder (one sub-folder per class) of the images that vote")
    parser.add_argument("--test_dir", help="Image folder of the images to classify (with --train_dir)")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes")
    add_presets_help(parser, CONFIG_PRESETS)
    args = parser.parse_args(argv)
    if args.config_name:  # presets only: a random init needs no download
        args.config_name = resolve_config_name_or_exit(parser, args.config_name, CONFIG_PRESETS, external=False)
    if bool(args.train_dir) != bool(args.test_dir):
        parser.error("--train_dir and --test_dir go together.")

    if args.model_name_or_path:
        model = AutoModel.from_pretrained(args.model_name_or_path)
    else:
        torch.manual_seed(0)
        model = AutoModel.from_config(CONFIG_PRESETS[args.config_name]())
    side = {"height": args.image_size, "width": args.image_size}
    processor = hf_mim.CapiImageProcessor(size=side, crop_size=side, do_center_crop=False)
    splits = without_decoding(load_splits(args), "image")  # decode_image reads the files: unreadable ones are skipped
    collator = SkippingCollator({"pixel_values": torch.zeros(3, args.image_size, args.image_size), "labels": -100})
    skipped = SkippedFiles()
    features, labels = {}, {}
    for name in ("train", "test"):
        loader = DataLoader(
            splits[name].with_transform(ProcessedExamples(processor, "image", "label")),
            batch_size=args.batch_size,
            collate_fn=collator,
            num_workers=args.num_workers,
        )
        features[name], labels[name] = extract_features(
            model, loader, pooling=args.pooling, return_labels=True, skipped=skipped
        )
    num_classes = splits["train"].features["label"].num_classes  # also the classes no readable image stands for
    accuracy = knn_accuracy(
        features["train"], labels["train"], features["test"], labels["test"], k=args.k, temperature=args.temperature,
        num_classes=num_classes,
    )  # fmt: skip
    result = {
        "model": args.model_name_or_path or f"random {args.config_name}",
        "pooling": args.pooling,
        "knn_top1": round(accuracy, 4),
        "effective_rank": round(float(effective_rank(features["test"])), 2),
        "feature_dim": features["test"].shape[1],
        "train_images": len(features["train"]),
        "test_images": len(features["test"]),
        "skipped_images": len(skipped),
    }
    if skipped:
        print(skipped.summary())
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
