#!/usr/bin/env python
"""Record what the ORIGINAL CAE (Atten4Vis/CAE) and VICRegL (facebookresearch/VICRegL) data transforms make of a few
bundled photos, with fixed seeds, as test fixtures for tests/test_transforms_vs_originals.py.

    pip install timm   # or: pip install --target DIR timm, and PYTHONPATH=DIR (CAE's furnace/datasets.py imports
                       # timm.data; its constants are the original's normalisation, so no stand-in is used here)
    python scripts/trajectory/record_transforms.py --original_cae_src ORIGINAL_CAE_TREE \
        --original_vicregl_src ORIGINAL_VICREGL_TREE [--output_dir tests/fixtures]

The originals' transform code is imported from the trees at run time and run unchanged (nothing of it is copied):

* CAE: `furnace/datasets.py: DataAugmentationForCAE`, built from a `tools/run_pretraining.py`-style argument
  namespace: v1 (`scripts/cae_base_*.sh`: --imagenet_default_mean_and_std, no jitter, crop scale (0.08, 1), second
  view lanczos at half size, DALL-E `map_pixels`) and v2 (`project/CAEv2/scripts/caev2_*.sh`: jitter 0.4, crop scale
  (0.4, 1), second view bicubic at full size, --discrete_vae_type clip), at small view sizes. Per sample (seeded
  `torch.manual_seed` and `random.seed`; the photo converted to RGB as its `pil_loader` does): the crop box its
  `get_params` returned (top, left, height, width: Python's `random`), whether its RandomHorizontalFlip flipped
  (it returns the same object when it does not), and both output tensors. Also 1000 boxes from its `get_params` on
  two image shapes (the box distribution), and 256 masks from the pipeline's own `MaskingGenerator` at the recipe's
  14 x 14 grid (v1: 98 patches, v2 tiny: 30; min 16 per block), stored as packed bits.
* VICRegL: `transforms.py: MultiCropTrainDataTransform(return_location_masks=True)`, as `datasets.py` builds it.
  `small`: 2 x 32 px + 2 x 16 px crops (both colour pipelines of each size group), `no_flip_grid=False`; per
  sample the outputs (float32 views, grids), the boxes each `RandomResizedCropWithLocation` returned and the flips
  of `RandomHorizontalFlipReturnsIfFlip`. `full_*`: the `main_vicregl.py` defaults (2 x 224 + 6 x 96, scales
  (0.4, 1) / (0.08, 0.4)), once with its default `--no-flip-grid 1` and once with 0: boxes, flips and grids only
  (the 224 px views would make the fixture too large). Seeds: `torch.manual_seed` and `np.random.seed` (its blur).

Photos: scikit-image's astronaut (512 x 512 RGB), coffee (400 x 600 RGB, not square) and camera (grayscale, cut to
an odd 211 x 157). Output: `{output_dir}/transforms_cae/{v1,v2}.safetensors`, `transforms_vicregl/
{small,full_no_flip_grid,full_flip_grid}.safetensors`, and one `record.json` per folder (arguments, per-sample
seeds, boxes and flips, the originals' constants read from their transform objects).
"""

import argparse
import importlib
import importlib.util
import json
import random
import re
import sys
import types
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import _common as common  # noqa: E402

# (name, skimage loader, crop box (left, upper, right, lower) or None); the test rebuilds the same images.
PHOTOS = (("astronaut", None), ("coffee", None), ("camera", (37, 11, 248, 168)))
# (photo, seed) per recorded sample: every photo once, the first one again with another seed.
SAMPLES = (("astronaut", 0), ("coffee", 1), ("camera", 2), ("astronaut", 3))
CAE_PACKAGES = ("furnace", "dall_e", "timm")
BOX_DRAWS, BOX_SHAPES = 1000, ((512, 512), (400, 600))  # (height, width) of the images boxes are drawn in
MASK_DRAWS, MASK_GRID, MASK_MIN_BLOCK = 256, (14, 14), 16
CAE_RUNS = {
    # version: (view side, second side, DataAugmentationForCAE arguments that differ between v1 and v2, masked count)
    "v1": (32, 16, dict(color_jitter=0.0, crop_min_size=0.08, second_interpolation="lanczos", discrete_vae_type="dall-e"), 98),
    "v2": (32, 32, dict(color_jitter=0.4, crop_min_size=0.4, second_interpolation="bicubic", discrete_vae_type="clip"), 30),
}  # fmt: skip


def photos() -> dict[str, PIL.Image.Image]:
    import skimage.data

    images = {}
    for name, box in PHOTOS:
        image = PIL.Image.fromarray(getattr(skimage.data, name)())
        images[name] = image.crop(box) if box else image
    return images


# ------------------------------------------------------------------------------------------------------------ CAE
def import_original_cae(src: Path) -> types.ModuleType:
    """`furnace.datasets` of an Atten4Vis/CAE tree (it imports furnace.transforms, furnace.masking_generator,
    furnace.dataset_folder, dall_e.utils and timm.data: the real timm is required)."""
    src = src.expanduser().resolve()
    if not (src / "furnace" / "datasets.py").is_file():
        raise SystemExit(f"--original_cae_src {src}: no furnace/datasets.py there (not an Atten4Vis/CAE tree?)")
    if importlib.util.find_spec("timm") is None:
        raise SystemExit("CAE's furnace/datasets.py needs timm (its ImageNet constants): pip install timm")
    stashed = {n: sys.modules.pop(n) for n in list(sys.modules) if n.split(".")[0] in CAE_PACKAGES[:2]}
    furnace = types.ModuleType("furnace")  # the tree's folder has no __init__.py
    furnace.__path__ = [str(src / "furnace")]
    sys.path.insert(0, str(src))
    try:
        with common.installed({"furnace": furnace}):
            datasets = importlib.import_module("furnace.datasets")
            for name in ("furnace.datasets", "furnace.transforms", "dall_e.utils"):
                if not Path(sys.modules[name].__file__).resolve().is_relative_to(src):
                    raise SystemExit(f"--original_cae_src: {name} resolved outside {src}")
    finally:
        sys.path.remove(str(src))
        for name in [n for n in sys.modules if n.split(".")[0] in CAE_PACKAGES[:2]]:
            sys.modules.pop(name)
        sys.modules.update(stashed)
    return datasets


def cae_arguments(size: int, second_size: int, options: dict, num_masked: int) -> argparse.Namespace:
    """tools/run_pretraining.py's arguments as the recipes' scripts set them (window_size as it derives it, here
    at the recipe's 224 px / patch 16 so that the mask generator runs at its real grid)."""
    return argparse.Namespace(
        input_size=size, second_input_size=second_size, train_interpolation="bicubic", crop_max_size=1.0,
        imagenet_default_mean_and_std=True, mask_generator="block", window_size=MASK_GRID,
        num_mask_patches=num_masked, max_mask_patches_per_block=None, min_mask_patches_per_block=MASK_MIN_BLOCK,
        **options,
    )  # fmt: skip


def record_cae_run(datasets, version: str, images: dict) -> tuple[dict, dict]:
    size, second_size, options, num_masked = CAE_RUNS[version]
    arguments = cae_arguments(size, second_size, options, num_masked)
    transform = datasets.DataAugmentationForCAE(arguments)
    steps = transform.common_transform.transforms
    flip_step, crop = steps[-2], steps[-1]
    boxes, flips = [], []

    def recorded_get_params(img, scale, ratio):  # the original staticmethod, its result kept
        box = type(crop).get_params(img, scale, ratio)
        boxes.append([int(v) for v in box])
        return box

    def recorded_flip(img):
        out = flip_step(img)
        flips.append(out is not img)
        return out

    crop.get_params = recorded_get_params
    steps[-2] = recorded_flip
    tensors, samples = {}, []
    for k, (name, seed) in enumerate(SAMPLES):
        torch.manual_seed(seed)
        random.seed(seed)
        patches, targets, _ = transform(images[name].convert("RGB"))  # its pil_loader's convert("RGB")
        tensors[f"pixel_values.{k}"], tensors[f"target_pixel_values.{k}"] = patches, targets
        samples.append({"image": name, "seed": seed, "box": boxes[-1], "flip": flips[-1]})
    steps[-2] = flip_step
    del crop.get_params

    random.seed(0)
    for shape in BOX_SHAPES:
        canvas = PIL.Image.new("RGB", shape[::-1])
        draws = [type(crop).get_params(canvas, crop.scale, crop.ratio) for _ in range(BOX_DRAWS)]
        tensors[f"boxes.{shape[0]}x{shape[1]}"] = torch.tensor(draws, dtype=torch.int16)
    masks = [transform.masked_position_generator() for _ in range(MASK_DRAWS)]
    # one bit per patch (np.packbits of the row-major 0/1 masks): 25 bytes a mask
    tensors["masks"] = torch.from_numpy(np.packbits(np.stack(masks).reshape(MASK_DRAWS, -1).astype(bool), axis=1))

    normalize = transform.patch_transform.transforms[-1]
    second = transform.visual_token_transform.transforms
    record = {
        "arguments": vars(arguments),
        "samples": samples,
        "pipeline": re.sub(r" at 0x[0-9a-f]+", "", repr(transform)),  # no memory address: a reproducible record
        "encoder": {
            "size": list(crop.size),
            "interpolation": int(crop.interpolation),
            "mean": normalize.mean.tolist(),
            "std": normalize.std.tolist(),
        },
        "second": {
            "size": list(crop.second_size),
            "interpolation": int(crop.second_interpolation),
            "steps": [getattr(s, "__name__", type(s).__name__) for s in second],
            "mean": list(second[-1].mean) if hasattr(second[-1], "mean") else None,
            "std": list(second[-1].std) if hasattr(second[-1], "std") else None,
        },
        "crop": {"scale": list(crop.scale), "ratio": list(crop.ratio), "box_shapes": [list(s) for s in BOX_SHAPES]},
        "flip_p": flip_step.p,
        "masks": {
            "grid": list(MASK_GRID),
            "num_masking_patches": transform.masked_position_generator.num_masking_patches,
            "min_num_patches": transform.masked_position_generator.min_num_patches,
            "max_num_patches": transform.masked_position_generator.max_num_patches,
            "log_aspect_ratio": list(transform.masked_position_generator.log_aspect_ratio),
        },
    }
    return tensors, record


# -------------------------------------------------------------------------------------------------------- VICRegL
def import_original_vicregl(src: Path) -> types.ModuleType:
    """The tree's transforms.py, loaded by path (its generic module name would clash with other users)."""
    path = src.expanduser().resolve() / "transforms.py"
    if not (path.is_file() and (path.parent / "main_vicregl.py").is_file()):
        raise SystemExit(f"--original_vicregl_src {src}: no transforms.py / main_vicregl.py there")
    spec = importlib.util.spec_from_file_location("_vicregl_original_transforms", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module.FT, "_get_image_size"):  # renamed get_image_size in torchvision 0.11 (same [w, h])
        module.FT._get_image_size = module.FT.get_image_size
    return module


VICREGL_RUNS = {
    # run: (MultiCropTrainDataTransform arguments, samples, store the views)
    "small": (dict(size_crops=[32, 16], num_crops=[2, 2], min_scale_crops=[0.4, 0.08], max_scale_crops=[1, 0.4],
                   no_flip_grid=False), SAMPLES, True),
    "full_no_flip_grid": (dict(size_crops=[224, 96], num_crops=[2, 6], min_scale_crops=[0.4, 0.08],
                               max_scale_crops=[1, 0.4], no_flip_grid=True), SAMPLES[:2], False),
    "full_flip_grid": (dict(size_crops=[224, 96], num_crops=[2, 6], min_scale_crops=[0.4, 0.08],
                            max_scale_crops=[1, 0.4], no_flip_grid=False), SAMPLES[:2], False),
}  # fmt: skip


def record_vicregl_run(original, run: str, images: dict) -> tuple[dict, dict]:
    options, samples_to_draw, store_views = VICREGL_RUNS[run]
    transform = original.MultiCropTrainDataTransform(return_location_masks=True, **options)
    boxes, flips = [], []
    crop_steps, flip_step = transform.random_resized_crops, transform.flip

    def recording_crop(step):
        def crop(img):
            out, location = step(img)
            boxes.append([int(v) for v in location])
            return out, location

        return crop

    def recording_flip(img):
        out, is_flip = flip_step(img)
        flips.append(bool(is_flip))
        return out, is_flip

    transform.random_resized_crops = [recording_crop(step) for step in crop_steps]
    transform.flip = recording_flip
    tensors, samples = {}, []
    count = sum(options["num_crops"])
    for k, (name, seed) in enumerate(samples_to_draw):
        torch.manual_seed(seed)
        np.random.seed(seed)
        views, grids = transform(images[name].convert("RGB"))  # ImageFolder's loader: convert("RGB")
        for v in range(count):
            tensors[f"grid.{k}.{v}"] = grids[v]
            if store_views:
                tensors[f"view.{k}.{v}"] = views[v]
        samples.append({"image": name, "seed": seed, "boxes": boxes[-count:], "flips": flips[-count:]})

    colour = [aug.transforms[0].transforms for aug in transform.augmentations]
    normalize = transform.augmentations[0].transforms[-1]
    record = {
        "arguments": options,
        "samples": samples,
        "crops": [
            {
                "size": list(s.size),
                "scale": list(s.scale),
                "ratio": list(s.ratio),
                "interpolation": s.interpolation.value,
            }
            for s in crop_steps
        ],
        "colour": [
            {"blur_p": c[2].p, "solarize_p": c[3].p, "jitter_p": c[0].p, "grayscale_p": c[1].p} for c in colour
        ],
        "mean": list(normalize.mean),
        "std": list(normalize.std),
        "flip_p": flip_step.p,
    }
    return tensors, record


# ----------------------------------------------------------------------------------------------------------- main
def save(folder: Path, runs: dict[str, tuple[dict, dict]], sources: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for run, (tensors, _) in runs.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / f"{run}.safetensors"))
    record = {
        "photos": [{"name": name, "crop": box} for name, box in PHOTOS],
        "versions": {"torch": torch.__version__, "torchvision": importlib.import_module("torchvision").__version__},
        **sources,
        "runs": {run: record for run, (_, record) in runs.items()},
    }
    (folder / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    size = sum(p.stat().st_size for p in folder.iterdir())
    print(f"wrote {folder} ({size / 1024:.0f} KiB)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--original_cae_src", type=Path, help="exported work tree of github.com/Atten4Vis/CAE")
    ap.add_argument("--original_vicregl_src", type=Path, help="exported work tree of facebookresearch/VICRegL")
    ap.add_argument("--output_dir", type=Path, default=REPO / "tests" / "fixtures")
    args = ap.parse_args(argv)
    if not (args.original_cae_src or args.original_vicregl_src):
        ap.error("give --original_cae_src and/or --original_vicregl_src")
    torch.set_num_threads(1)
    images = photos()
    if args.original_cae_src:
        datasets = import_original_cae(args.original_cae_src)
        runs = {version: record_cae_run(datasets, version, images) for version in CAE_RUNS}
        timm = importlib.import_module("timm")
        save(args.output_dir / "transforms_cae", runs, {"timm": timm.__version__})
    if args.original_vicregl_src:
        original = import_original_vicregl(args.original_vicregl_src)
        runs = {run: record_vicregl_run(original, run, images) for run in VICREGL_RUNS}
        save(args.output_dir / "transforms_vicregl", runs, {})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
