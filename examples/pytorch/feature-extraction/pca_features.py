#!/usr/bin/env python
"""PCA picture of an hf_mim backbone's patch features (the picture CAPI's authors use to show feature quality).

    python examples/pytorch/feature-extraction/pca_features.py [--model_name_or_path DIR_OR_HUB_ID]
        [--image PATH] [--resolution 448] [--output_file outputs/pca_features.png]

The first three principal components of the patch features are mapped to RGB and shown next to the image. With no
arguments it uses scikit-image's bundled astronaut photo and a freshly initialised tiny CAPI (no download needed);
point `--model_name_or_path` at a converted or pretrained checkpoint to see meaningful maps.

    python examples/pytorch/feature-extraction/pca_features.py --model_name_or_path <backbone> --compare_random_init

draws the main job's picture instead (`hf_mim.evaluation.learning.pca_picture`): bundled photos (astronaut, coffee,
chelsea, rocket) in the first row, then the checkpoint's own random initialisation (same class and config) and the
checkpoint, each with its own principal components but one colour scale for both rows, so that the change is visible.
"""

import argparse
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from transformers import AutoImageProcessor, AutoModel

import hf_mim


def bundled_image(name: str = "astronaut") -> PIL.Image.Image:
    """A real photo that ships inside scikit-image's wheel (no network)."""
    import skimage.data

    return PIL.Image.fromarray(getattr(skimage.data, name)())


def pca_rgb(features: torch.Tensor) -> np.ndarray:
    """(h, w, D) features -> (h, w, 3) uint8, first three principal components min-max scaled per channel."""
    h, w, d = features.shape
    flat = features.reshape(-1, d).double()
    flat = flat - flat.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(flat, full_matrices=False)
    projected = flat @ v[:3].T
    low, high = projected.min(0).values, projected.max(0).values
    scaled = (projected - low) / (high - low).clamp_min(1e-12)
    return (scaled.reshape(h, w, 3).numpy() * 255).round().astype(np.uint8)


def load_model(model_name_or_path: str | None):
    if model_name_or_path is None:
        print(
            "No --model_name_or_path: using a randomly initialised tiny CAPI (the map shows structure, not semantics)."
        )
        torch.manual_seed(0)
        return hf_mim.CapiModel(hf_mim.CapiConfig.tiny()), hf_mim.CapiImageProcessor()
    return AutoModel.from_pretrained(model_name_or_path), AutoImageProcessor.from_pretrained(model_name_or_path)


def compare_with_random_init(args) -> Path:
    from hf_mim.data.bundled import bundled_photo
    from hf_mim.evaluation.learning import patch_feature_maps, pca_picture, random_baseline
    from hf_mim.trainers.learning_report import PICTURE_PHOTOS

    if args.model_name_or_path is None:
        raise SystemExit("--compare_random_init needs --model_name_or_path.")
    model, processor = load_model(args.model_name_or_path)
    photos = [PIL.Image.open(args.image)] if args.image else [bundled_photo(name) for name in PICTURE_PHOTOS]
    side = {"height": args.resolution, "width": args.resolution}
    pixels = processor(images=photos, size=side, crop_size=side, return_tensors="pt").pixel_values
    rows = {
        "initialisation": patch_feature_maps(random_baseline(model), pixels),
        "trained": patch_feature_maps(model, pixels),
    }
    picture = pca_picture(rows, pixels, processor.image_mean, processor.image_std)
    output = Path(args.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    picture.save(output)
    print(f"PCA picture (initialisation vs trained, one colour scale) written to {output}")
    return output


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", default=None)
    parser.add_argument("--image", default=None, help="Image file (default: scikit-image's astronaut)")
    parser.add_argument("--resolution", type=int, default=448, help="Square input side; a multiple of the patch size")
    parser.add_argument("--output_file", default="outputs/pca_features.png")
    parser.add_argument("--compare_random_init", action="store_true",
                        help="Rows: the checkpoint's own random init and the checkpoint, on the bundled photos")  # fmt: skip
    args = parser.parse_args(argv)
    if args.compare_random_init:
        return compare_with_random_init(args)

    model, processor = load_model(args.model_name_or_path)
    model.eval()
    image = PIL.Image.open(args.image) if args.image else bundled_image()
    size = {"height": args.resolution, "width": args.resolution}
    pixels = processor(images=image, size=size, do_center_crop=False, return_tensors="pt").pixel_values
    with torch.no_grad():
        outputs = model(pixels)
    feature_map = getattr(outputs, "feature_map", None)
    if feature_map is None:
        raise ValueError(f"{type(model).__name__} does not return a patch feature map.")
    colours = pca_rgb(feature_map[0])
    side = args.resolution
    left = image.convert("RGB").resize((side, side), PIL.Image.BICUBIC)
    right = PIL.Image.fromarray(colours).resize((side, side), PIL.Image.NEAREST)
    canvas = PIL.Image.new("RGB", (2 * side, side))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (side, 0))
    output = Path(args.output_file)
    output.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(output)
    print(f"Feature map {tuple(feature_map.shape[1:3])} x {feature_map.shape[-1]}; PCA picture written to {output}")
    return output


if __name__ == "__main__":
    main()
