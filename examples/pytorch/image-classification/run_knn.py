#!/usr/bin/env python
"""k-NN classification of frozen features: the quick check that self-supervised pretraining learned something.

    python examples/pytorch/image-classification/run_knn.py --model_name_or_path outputs/capi-pretraining/backbone
    python examples/pytorch/image-classification/run_knn.py --config_name capi-tiny      # random-init baseline

Features (`pooler_output`, or the mean patch token with `--pooling mean_patch`) of the train split vote for the
test images (weighted k-NN on cosine similarity, DINO-style). Default data: scikit-learn's 8x8 digits upscaled
to `--image_size` (bundled, no download). Prints top-1 accuracy and the effective rank of the test features.
"""

import argparse
import json

import torch
from transformers import AutoModel

import hf_mim
from hf_mim.data.labelled import digits_dataset, pixel_values_for
from hf_mim.evaluation import extract_features, knn_accuracy
from hf_mim.losses import effective_rank
from hf_mim.presets import CONFIG_PRESETS


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_name_or_path")
    source.add_argument("--config_name", choices=sorted(CONFIG_PRESETS), help="Randomly initialised baseline (seed 0)")
    parser.add_argument("--image_size", type=int, default=56)
    parser.add_argument("--pooling", choices=["pooler", "mean_patch"], default="pooler")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--batch_size", type=int, default=128)
    args = parser.parse_args(argv)

    if args.model_name_or_path:
        model = AutoModel.from_pretrained(args.model_name_or_path)
    else:
        torch.manual_seed(0)
        model = AutoModel.from_config(CONFIG_PRESETS[args.config_name]())
    side = {"height": args.image_size, "width": args.image_size}
    processor = hf_mim.CapiImageProcessor(size=side, crop_size=side, do_center_crop=False)
    train, test = digits_dataset("train", args.image_size), digits_dataset("test", args.image_size)
    features = {}
    for name, split in (("train", train), ("test", test)):
        pixels = pixel_values_for(split, processor)
        features[name] = extract_features(model, pixels, pooling=args.pooling, batch_size=args.batch_size)
    train_labels = torch.tensor(train["label"])
    test_labels = torch.tensor(test["label"])
    accuracy = knn_accuracy(
        features["train"], train_labels, features["test"], test_labels, k=args.k, temperature=args.temperature
    )
    result = {
        "model": args.model_name_or_path or f"random {args.config_name}",
        "pooling": args.pooling,
        "knn_top1": round(accuracy, 4),
        "effective_rank": round(float(effective_rank(features["test"])), 2),
        "feature_dim": features["test"].shape[1],
        "train_images": len(train),
        "test_images": len(test),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
