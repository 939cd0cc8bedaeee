#!/usr/bin/env python
"""Data-pipeline throughput on CPU: how many images per second ONE data-loader worker (one process, one torch thread)
turns from JPEG files into training batches, for each method's full input path, hf_mim against the original code, in
one interleaved run on the same files.

    python benchmarks/benchmark_data.py                                  # hf_mim only
    python benchmarks/benchmark_data.py --original_root /tmp/orig       # + the originals: /tmp/orig/{capi,ijepa,cae,vicregl}
    python benchmarks/benchmark_data.py --original_root /tmp/orig --methods vicregl --profile 25

One timed batch is what a DataLoader worker does for one batch: `collate_fn([dataset[i] for i in indices])`.
  * hf_mim: what `run_<method>.py` builds (the recipe of examples/pytorch/pretraining/run_<method>.py, loaded from
    there): `load_training_data(--train_dir)` (a `datasets` imagefolder, images left undecoded),
    `.with_transform(SafeImageTransform(recipe transform))`, `PositionalDataset` (the trainer's wrapper: per-example
    seeds, refills) and the recipe's collator (masks).
  * original: the original's dataset class over the same folder, its training transform and its collate function:
    CAPI `data.make_dataset("torchvision://ImageFolder?root=...")` + train_capi.py's transform +
    `data.collate_data_and_cast` (InverseBlockMasking); I-JEPA torchvision `ImageFolder` (its `ImageNet` class adds
    nothing to `__getitem__`) + `src.transforms.make_transforms` + `src.masks.multiblock.MaskCollator`; CAE
    `furnace.dataset_folder.ImageFolder` + `furnace.datasets.DataAugmentationForCAE` (masks drawn per image) +
    torch's default collate; VICRegL torchvision `ImageFolder` + `transforms.MultiCropTrainDataTransform` + the
    default collate.
Both sides get the same batches of file indices. The original trees are imported from --original_root (or the
per-method flags); none of their code is copied here. See benchmarks/README.md, "Data pipeline".
"""

import argparse
import contextlib
import cProfile
import gc
import importlib
import importlib.util
import io
import itertools
import pstats
import random
import statistics
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import _common as common
import datasets
import numpy as np
import PIL.Image
import torch
import torchvision
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torch.utils.data import default_collate

from hf_mim.data import PositionalDataset, SafeImageTransform, positional
from hf_mim.trainers.run_pretraining import DataTrainingArguments, load_training_data, recipe_image_transform

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples" / "pytorch" / "pretraining"
IMAGE_FOLDER_CLASS = "photos"  # one class folder: ImageFolder layouts need one
# Colour photos bundled with scikit-image that load offline (see shared STACK-NOTES).
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "stereo_motorcycle")  # fmt: skip


@dataclass(frozen=True)
class Method:
    script: str  # examples/pytorch/pretraining/run_<script>.py
    recipe: str  # the PretrainingRecipe's name in that script
    preset: str  # the config preset both sides are set up from (the released ImageNet recipe)
    original: str  # sub-folder of --original_root


METHODS = {
    "capi": Method("capi", "CAPI", "capi-vitl14", "capi"),
    "ijepa": Method("ijepa", "IJEPA", "ijepa-vith14", "ijepa"),
    "cae_v1": Method("cae", "CAE", "cae-vitb16", "cae"),
    "cae_v2": Method("cae", "CAE", "cae-v2-vitb16", "cae"),
    "vicregl": Method("vicregl", "VICREGL", "vicregl-convnext-small", "vicregl"),
    "vicregl_resnet": Method("vicregl", "VICREGL", "vicregl-resnet50", "vicregl"),
}


# ---------------------------------------------------------------------------------------------------------- images
def write_images(folder: Path, count: int, size: tuple[int, int], quality: int, seed: int) -> list[Path]:
    """`count` JPEGs of about ImageNet's size: random 4:3 or 3:4 regions of scikit-image's colour photos, resized to
    `size` (width x height, or height x width for every other file) and saved at JPEG `quality`."""
    import skimage.data

    rng = random.Random(seed)
    photos = []
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        array = array[0] if isinstance(array, tuple) else array  # stereo_motorcycle: (left, right, disparity)
        photos.append(PIL.Image.fromarray(np.ascontiguousarray(array)).convert("RGB"))
    target = folder / IMAGE_FOLDER_CLASS
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        photo = photos[index % len(photos)]
        width, height = size if index % 2 == 0 else size[::-1]
        # the largest region of the output's aspect ratio, scaled by 0.6-1, at a random place
        fit = min(photo.width / width, photo.height / height) * rng.uniform(0.6, 1.0)
        box_w, box_h = max(1, round(width * fit)), max(1, round(height * fit))
        left, top = rng.randint(0, photo.width - box_w), rng.randint(0, photo.height - box_h)
        image = photo.resize((width, height), PIL.Image.Resampling.LANCZOS, box=(left, top, left + box_w, top + box_h))
        if rng.random() < 0.5:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        path = target / f"image_{index:05d}.jpg"
        image.save(path, quality=quality)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------------ hf_mim side
def build_hf(method: Method, folder: Path, seed: int):
    """(dataset, collate, description) exactly as `run()` of hf_mim.trainers.run_pretraining builds them for
    `run_<method>.py --train_dir folder --config_name preset` (its transform / collator lines, restated in order), and
    the trainer's `PositionalDataset` around the dataset."""
    script = common.load_module(EXAMPLES / f"run_{method.script}.py", f"_run_{method.script}")
    recipe = getattr(script, method.recipe)
    config = recipe.config_presets[method.preset]()
    extra_args = [argument_class() for argument_class in recipe.extra_argument_classes]  # command-line defaults
    if recipe.configure is not None:
        config = recipe.configure(config, *extra_args)
    data_args = DataTrainingArguments(train_dir=str(folder))
    image_size = data_args.image_size or config.image_size
    dataset = load_training_data(data_args)
    image_transform = recipe_image_transform(recipe, config, data_args, image_size, extra_args)
    dataset = dataset.with_transform(SafeImageTransform(image_transform, data_args.image_column_name))
    dataset = PositionalDataset(dataset, seed=seed, refill=True, seeded=True)
    with torch.device("meta"):  # the collator takes the model's mask generator; no weights are needed for it
        model = recipe.model_class(config)
    return dataset, recipe.collator(model), config


# ---------------------------------------------------------------------------------------------------- the originals
@contextlib.contextmanager
def modules_set_aside(names: tuple[str, ...], stand_ins: dict[str, types.ModuleType], path: Path | None = None):
    """While the block runs: same-named modules (and their submodules) set aside, `stand_ins` installed, `path` first
    on sys.path. Afterwards sys.modules is as before (the imported modules live on through the objects built)."""

    def ours(name: str) -> bool:
        return name.split(".")[0] in names

    stashed = {name: sys.modules.pop(name) for name in [n for n in sys.modules if ours(n)]}
    sys.modules.update(stand_ins)
    if path is not None:
        sys.path.insert(0, str(path))
    try:
        yield
    finally:
        if path is not None:
            sys.path.remove(str(path))
        for name in [n for n in sys.modules if ours(n)]:
            sys.modules.pop(name)
        sys.modules.update(stashed)


def load_file(path: Path, name: str, stand_ins: dict[str, types.ModuleType] | None = None):
    """Import one file of an original tree under a private name (its imports: installed packages only)."""
    if not path.is_file():
        raise SystemExit(f"{path}: not found (is the original tree exported there?)")
    with modules_set_aside(tuple(stand_ins or ()), stand_ins or {}):
        return common.load_module(path, name)


def _jaxtyping_stand_in() -> dict[str, types.ModuleType]:
    """capi/data.py annotates with `jt.Bool[np.ndarray, "h w"]` (evaluated when the function is defined): without
    jaxtyping, any `jaxtyping.X[...]` is None."""

    class Subscriptable:
        def __getitem__(self, item):
            return None

    module = types.ModuleType("jaxtyping")
    module.__getattr__ = lambda name: Subscriptable()
    return {"jaxtyping": module}


def original_capi(src: Path, folder: Path, config, recipe, notes: list[str]):
    stand_ins = {}
    if importlib.util.find_spec("jaxtyping") is None:
        stand_ins = _jaxtyping_stand_in()
        notes.append("capi: jaxtyping is not installed: a stand-in whose `jaxtyping.X[...]` is None (annotations)")
    data = load_file(src / "data.py", "_original_capi_data", stand_ins)
    size, grid = config.image_size, config.image_size // config.patch_size
    # train_capi.train() builds this transform inline (cfg.data.crop_scale, images_size, do_hflip; IMAGENET_NORM)
    transform = T.Compose([
        T.RandomResizedCrop(size, scale=(recipe.crop_scale_min, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=0.5),
        T.ToTensor(),
        T.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ])  # fmt: skip
    dataset = data.make_dataset(f"torchvision://ImageFolder?root={str(folder)!r}", transform, lambda _: ())
    collate = partial(
        data.collate_data_and_cast,
        dtype=torch.float32,  # the original casts to cfg.efficiency.param_dtype (bf16); hf_mim hands over float32
        n_tokens=grid * grid,
        mask_generator=data.InverseBlockMasking(input_size=(grid, grid), roll=config.mask_roll),
        prediction_subsampling=config.prediction_subsampling,
        mask_ratio=config.mask_ratio,
    )
    return dataset, collate


def original_ijepa(src: Path, folder: Path, config, recipe, notes: list[str]):
    transforms = load_file(src / "src" / "transforms.py", "_original_ijepa_transforms")
    multiblock = load_file(src / "src" / "masks" / "multiblock.py", "_original_ijepa_multiblock")
    transform = transforms.make_transforms(
        crop_size=config.image_size,
        crop_scale=(recipe.crop_scale_min, 1.0),
        color_jitter=0.0,
        horizontal_flip=recipe.hflip,
        color_distortion=False,
        gaussian_blur=False,
    )
    collate = multiblock.MaskCollator(
        input_size=config.image_size,
        patch_size=config.patch_size,
        pred_mask_scale=tuple(config.target_block_scale),
        enc_mask_scale=tuple(config.context_block_scale),
        aspect_ratio=tuple(config.target_aspect_ratio),
        nenc=config.num_context_blocks,
        npred=config.num_target_blocks,
        allow_overlap=config.allow_overlap,
        min_keep=config.min_keep,
    )
    return torchvision.datasets.ImageFolder(str(folder), transform=transform), collate


def _timm_data_stand_in() -> dict[str, types.ModuleType]:
    """furnace/datasets.py imports timm's ImageNet constants and `create_transform` (fine-tuning only)."""
    constants = types.ModuleType("timm.data.constants")
    constants.IMAGENET_DEFAULT_MEAN, constants.IMAGENET_DEFAULT_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    constants.IMAGENET_INCEPTION_MEAN = constants.IMAGENET_INCEPTION_STD = (0.5, 0.5, 0.5)
    data = types.ModuleType("timm.data")
    data.constants = constants

    def create_transform(*args, **kwargs):
        raise RuntimeError("timm.data.create_transform is a stand-in (fine-tuning transforms are not benchmarked)")

    data.create_transform = create_transform
    timm = types.ModuleType("timm")
    timm.data = data
    return {"timm": timm, "timm.data": data, "timm.data.constants": constants}


def original_cae(src: Path, folder: Path, config, recipe, notes: list[str]):
    stand_ins = {}
    if importlib.util.find_spec("timm") is None:
        stand_ins = _timm_data_stand_in()
        notes.append("cae: timm is not installed: stand-in timm.data (ImageNet mean/std constants)")
    furnace = types.ModuleType("furnace")  # a namespace over the tree's folder (it has no __init__.py)
    furnace.__path__ = [str(src / "furnace")]
    stand_ins["furnace"] = furnace
    with modules_set_aside(("furnace", "dall_e", *stand_ins), stand_ins, src):
        cae_datasets = importlib.import_module("furnace.datasets")
        folder_module = importlib.import_module("furnace.dataset_folder")
    v1 = config.cae_version == 1
    grid = config.image_size // config.patch_size
    args = argparse.Namespace(  # tools/run_pretraining.py's arguments as the v1 / v2 pretraining scripts set them
        imagenet_default_mean_and_std=True,
        color_jitter=0.0 if v1 else 0.4,
        input_size=config.image_size,
        second_input_size=grid * 8 if v1 else config.image_size,  # v1: run_cae.py's one DALL-E token per patch
        train_interpolation="bicubic",
        second_interpolation="lanczos" if v1 else "bicubic",
        crop_min_size=0.08 if v1 else 0.4,
        crop_max_size=1.0,
        discrete_vae_type="dall-e" if v1 else "clip",
        mask_generator="block",
        window_size=(grid, grid),
        num_mask_patches=config.num_masking_patches,
        max_mask_patches_per_block=None,
        min_mask_patches_per_block=config.min_masking_patches_per_block,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        transform = cae_datasets.DataAugmentationForCAE(args)
    return folder_module.ImageFolder(str(folder), transform=transform), default_collate


def original_vicregl(src: Path, folder: Path, config, recipe, notes: list[str]):
    if not hasattr(TF, "_get_image_size"):
        # transforms.py calls `torchvision.transforms.functional._get_image_size` (removed from torchvision); the
        # public `get_image_size` returns the same [width, height]. Added only where missing, for the whole run.
        TF._get_image_size = TF.get_image_size
        notes.append("vicregl: torchvision has no functional._get_image_size: set to functional.get_image_size")
    transforms = load_file(src / "transforms.py", "_original_vicregl_transforms")
    resnet = config.backbone_type == "resnet"
    options = (  # main_vicregl.py's --size-crops ... as the README commands set them per backbone
        dict(size_crops=[224], num_crops=[2], min_scale_crops=[0.08], max_scale_crops=[1.0])
        if resnet
        else dict(size_crops=[224, 96], num_crops=[2, 6], min_scale_crops=[0.4, 0.08], max_scale_crops=[1.0, 0.4])
    )
    transform = transforms.MultiCropTrainDataTransform(**options, return_location_masks=True, no_flip_grid=1)
    return torchvision.datasets.ImageFolder(str(folder), transform=transform), default_collate


ORIGINAL_BUILDERS = {"capi": original_capi, "ijepa": original_ijepa, "cae": original_cae, "vicregl": original_vicregl}


# ---------------------------------------------------------------------------------------------------------- timing
@dataclass
class Side:
    name: str
    dataset: object
    collate: object
    wall: list
    cpu: list

    def batch(self, indices: list[int]):
        return self.collate([self.dataset[index] for index in indices])  # a DataLoader worker's fetch


def time_batch(side: Side, indices: list[int]):
    wall, cpu = time.perf_counter(), time.process_time()
    batch = side.batch(indices)
    side.cpu.append(time.process_time() - cpu)
    side.wall.append(time.perf_counter() - wall)
    return batch


def describe(batch) -> str:
    """Field shapes of a collated batch (dict, tuple or list, nested)."""

    def walk(value, prefix=""):
        if isinstance(value, torch.Tensor):
            return [f"{prefix}{tuple(value.shape)}"]
        if isinstance(value, dict):
            return [item for key, sub in value.items() for item in walk(sub, f"{prefix}{key}=")]
        if isinstance(value, list | tuple):
            return [item for i, sub in enumerate(value) for item in walk(sub, f"{prefix}[{i}]")]
        return []

    return ", ".join(walk(batch))


def profile_side(side: Side, batches: list[list[int]], rows: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for indices in batches:
        side.batch(indices)
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(rows)
    print(f"\n--- cProfile {side.name}: {len(batches)} batch(es), top {rows} by own time ---")
    print("\n".join(line for line in stream.getvalue().splitlines() if line.strip())[:20000])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--original_root", type=Path, help="folder with exported trees capi/, ijepa/, cae/, vicregl/")
    for name in ORIGINAL_BUILDERS:
        parser.add_argument(f"--original_{name}", type=Path, help=f"the {name} tree (default: ORIGINAL_ROOT/{name})")
    parser.add_argument("--image_dir", type=Path, help="an ImageFolder of your JPEGs (class sub-folders) instead")
    parser.add_argument("--num_images", type=int, default=64, help="JPEGs written (without --image_dir)")
    parser.add_argument("--image_width", type=int, default=500)
    parser.add_argument("--image_height", type=int, default=375)
    parser.add_argument("--jpeg_quality", type=int, default=90)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    parser.add_argument("--batches", type=int, default=1, help="timed batches per side, method and round")
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="per-round ratios, wall-clock numbers, batch shapes")
    parser.add_argument("--profile", type=int, default=0, metavar="ROWS", help="after timing, cProfile each side")
    parser.add_argument("--profile_batches", type=int, default=2)
    args = parser.parse_args()
    common.require_positive(args, "rounds", "batches", "batch_size", "num_images")
    names = common.parse_workloads(args.methods, METHODS)
    common.use_threads(args.num_threads)
    datasets.disable_progress_bars()
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)

    with contextlib.ExitStack() as stack:
        if args.image_dir is not None:
            folder = args.image_dir.expanduser().resolve()
            files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
            source = f"{len(files)} JPEGs under {folder}"
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="benchmark_data_")))
            size = (args.image_width, args.image_height)
            files = write_images(folder, args.num_images, size, args.jpeg_quality, args.seed)
            mean_kib = sum(p.stat().st_size for p in files) / len(files) / 1024
            source = (f"{len(files)} JPEGs {size[0]}x{size[1]} / {size[1]}x{size[0]} (quality {args.jpeg_quality}, "
                      f"{mean_kib:.0f} KiB on average) from scikit-image's photos")  # fmt: skip
        run(args, names, folder, len(files), source)


def run(args, names: list[str], folder: Path, num_files: int, source: str) -> None:
    notes: list[str] = []
    sides: dict[str, tuple[Side, Side | None]] = {}
    for name in names:
        method = METHODS[name]
        dataset, collate, config = build_hf(method, folder, args.seed)
        hf = Side("hf_mim", dataset, collate, [], [])
        original = None
        src = getattr(args, f"original_{method.original}") or (
            args.original_root / method.original if args.original_root else None
        )
        if src is not None:
            script = common.load_module(EXAMPLES / f"run_{method.script}.py", f"_run_{method.script}")
            builder = ORIGINAL_BUILDERS[method.original]
            dataset, collate = builder(
                src.expanduser().resolve(), folder, config, getattr(script, method.recipe), notes
            )
            original = Side("original", dataset, collate, [], [])
        sides[name] = (hf, original)
    if len(sides[names[0]][0].dataset) != num_files:
        raise SystemExit(f"hf_mim's dataset has {len(sides[names[0]][0].dataset)} rows for {num_files} files")

    # The same index batches for both sides: seeded shuffles of the files, epoch after epoch, as a sampler gives. The
    # hf_mim datasets move to the next epoch with each shuffle (as the trainer sets it): their crops are drawn by
    # (epoch, index), and a fixed epoch would time the same crops of a file again and again (a crop's cost depends on
    # its size) where the original draws new ones.
    def shuffled_epochs():
        rng = np.random.default_rng(args.seed)
        for epoch in itertools.count():
            for hf, _ in sides.values():
                hf.dataset.set_epoch(epoch)
            yield from rng.permutation(num_files).tolist()

    stream = shuffled_epochs()
    # The batches are timed in this process but stand for a DataLoader worker's: hf_mim's seeded_rng skips there
    # what only the main process needs (handing numpy's global state back, 72 us per example).
    positional.get_worker_info = lambda: "benchmark_data.py: as in a DataLoader worker"

    def draw() -> list[int]:
        return [next(stream) for _ in range(args.batch_size)]

    # Untimed: one batch each (first-call costs, file cache), then freeze what exists, as train_capi.py does before
    # its loop (gc.freeze): the CAPI collate's gc.collect() then scans only what the batch made, as in its workers.
    for name in names:
        indices = draw()
        for side in sides[name]:
            if side is not None:
                batch = side.batch(indices)
                if args.verbose:
                    print(f"check {name} {side.name}: {describe(batch)}")
    gc.collect()
    gc.freeze()

    per_round: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names:
            hf, original = sides[name]
            pair = [hf, original] if round_index % 2 == 0 else [original, hf]
            marks = {side.name: len(side.cpu) for side in pair if side is not None}
            for _ in range(args.batches):
                indices = draw()
                for side in pair:
                    if side is not None:
                        time_batch(side, indices)
            if original is not None:
                hf_cpu = sum(hf.cpu[marks["hf_mim"] :])
                original_cpu = sum(original.cpu[marks["original"] :])
                per_round[name].append((original_cpu / hf_cpu, sum(original.wall[marks["original"] :])
                                        / sum(hf.wall[marks["hf_mim"] :])))  # fmt: skip

    images = args.batch_size * args.batches * args.rounds
    print(f"\nData pipeline, one worker: {source}; batch {args.batch_size}, {args.rounds} rounds x {args.batches} "
          f"batch(es) per side; torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, Pillow {PIL.__version__}")  # fmt: skip
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    print("\n| method | hf_mim img/s | original img/s | hf_mim / original | per-round range | wall img/s hf_mim / "
          "original |")  # fmt: skip
    print("|---|---:|---:|---:|---|---|")
    for name in names:
        hf, original = sides[name]
        hf_rate = images / sum(hf.cpu)
        if original is None:
            print(f"| {name} | {hf_rate:.1f} | — | — | — | {images / sum(hf.wall):.1f} / — |")
            continue
        original_rate = images / sum(original.cpu)
        ratios = [cpu for cpu, _ in per_round[name]]
        print(f"| {name} | {hf_rate:.1f} | {original_rate:.1f} | {hf_rate / original_rate:.2f}x | "
              f"{min(ratios):.2f}-{max(ratios):.2f} | {images / sum(hf.wall):.1f} / "
              f"{images / sum(original.wall):.1f} |")  # fmt: skip
    print(
        "\nimg/s: images over the process CPU time of the timed batches (decode, transforms, masks, collate); the "
        "ratio is hf_mim's speed over the original's (> 1: hf_mim faster)."
    )
    if args.verbose:
        for name in names:
            if per_round[name]:
                cpu = " ".join(f"{c:.2f}" for c, _ in per_round[name])
                wall = " ".join(f"{w:.2f}" for _, w in per_round[name])
                print(f"{name}: per-round speed-up by CPU time {cpu}; by wall clock {wall}; median batch CPU ms "
                      f"hf_mim {statistics.median(sides[name][0].cpu) * 1e3:.1f}, original "
                      f"{statistics.median(sides[name][1].cpu) * 1e3:.1f}")  # fmt: skip
    if args.profile:
        for name in names:
            for side in sides[name]:
                if side is not None:
                    side.name = f"{name} {side.name.split(' ')[-1]}"
                    profile_side(side, [draw() for _ in range(args.profile_batches)], args.profile)


if __name__ == "__main__":
    main()
