"""Did pretraining learn anything? Fixed, offline probes of a frozen backbone: the one k-NN protocol of hf_mim.

Two probes, both built from scikit-learn's handwritten digits (shipped inside the installed wheel, 10 classes, 1797
images) with the same stratified 70 / 30 split (seed 0), at the model's resolution:

* `digits`: the clean digits, nearest-upsampled, white strokes on black. Raw pixels score about 98 % here, so
  this probe shows whether a representation is sane, not what self-supervised features are for.
* `transformed_digits`: the same digits zoomed (0.8-1.5 of the canvas: larger ones are seen through a random
  window), shifted and rotated (+-15 degrees) at random (`hf_mim.evaluation.transformed_digits`, fixed seed), train
  bank and test split alike. Raw pixels must match digits across positions and scales and fall to about 74 %; this
  is where invariances learned from random crops can show.

For each feature (`pooler_output`, and the mean patch token), a weighted k-NN classifier (k = 20, T = 0.07, cosine;
the DINO protocol of `hf_mim.evaluation.knn`) of the test split on the train split gives top-1 accuracy, and the
effective rank of the test features says whether the representation collapsed (1) or spreads over many dimensions.
Raw pixels through the same k-NN are the reference.

`evaluate_probes` is the one entry point: the main jobs' learning report (`hf_mim.trainers.learning_report`),
`examples/pytorch/image-classification/run_knn.py` and `benchmarks/benchmark_learning.py` all call it, with
`probe_suite(processor class, image size)` at the resolution the model was trained at.
"""

from dataclasses import dataclass

import numpy as np
import torch

from ..losses import effective_rank
from .knn import extract_pooled_features, knn_accuracy

PROBE_TEST_FRACTION, PROBE_SPLIT_SEED, PROBE_K, PROBE_TEMPERATURE = 0.3, 0, 20, 0.07
FEATURES = {"pooled": "pooler", "mean_patch": "mean_patch"}
PROBES = {
    "digits": "clean digits (white on black, upsampled)",
    "transformed_digits": "transformed digits (random zoom, position and rotation, seed 0)",
}
RAW_PIXELS = "raw_pixels"


@dataclass
class ProbeData:
    """Processed probe images: pixel values and labels of the train bank and the held-out test split."""

    train_pixels: torch.Tensor
    train_labels: torch.Tensor
    test_pixels: torch.Tensor
    test_labels: torch.Tensor
    image_size: int


def probe_processor(image_processor_class, image_size: int):
    """`image_processor_class` resizing straight to `image_size` x `image_size` (no crop: the digit stays whole)."""
    side = {"height": image_size, "width": image_size}
    return image_processor_class(size=side, crop_size=side, do_center_crop=False)


def _probe_data(splits: dict, image_processor_class, image_size: int) -> ProbeData:
    from ..data.labelled import pixel_values_for

    processor = probe_processor(image_processor_class, image_size)
    return ProbeData(
        train_pixels=pixel_values_for(splits["train"], processor),
        train_labels=torch.tensor(splits["train"]["label"]),
        test_pixels=pixel_values_for(splits["test"], processor),
        test_labels=torch.tensor(splits["test"]["label"]),
        image_size=image_size,
    )


def digits_probe_data(image_processor_class, image_size: int) -> ProbeData:
    """The clean digits splits at `image_size` px through `image_processor_class` (resize to the side, no crop)."""
    from ..data.labelled import digits_dataset

    splits = {
        name: digits_dataset(name, image_size, test_fraction=PROBE_TEST_FRACTION, seed=PROBE_SPLIT_SEED)
        for name in ("train", "test")
    }
    return _probe_data(splits, image_processor_class, image_size)


def transformed_digits_probe_data(image_processor_class, image_size: int) -> ProbeData:
    """The same split, every digit varied by `transformed_digits_dataset` (the shipped variation, seed 0)."""
    from .transformed_digits import transformed_digits_dataset

    splits = {
        name: transformed_digits_dataset(
            name, image_size, test_fraction=PROBE_TEST_FRACTION, split_seed=PROBE_SPLIT_SEED
        )
        for name in ("train", "test")
    }
    return _probe_data(splits, image_processor_class, image_size)


def probe_suite(image_processor_class, image_size: int, probes=tuple(PROBES)) -> dict[str, ProbeData]:
    """{probe name: ProbeData} of the named `probes` (default: both) at `image_size` px."""
    makers = {"digits": digits_probe_data, "transformed_digits": transformed_digits_probe_data}
    unknown = set(probes) - set(makers)
    if unknown:
        raise ValueError(f"Unknown probes {sorted(unknown)}; choose from {sorted(makers)}.")
    return {name: makers[name](image_processor_class, image_size) for name in probes}


def _knn(train: torch.Tensor, data: ProbeData, test: torch.Tensor) -> float:
    return float(
        knn_accuracy(train, data.train_labels, test, data.test_labels, k=PROBE_K, temperature=PROBE_TEMPERATURE)
    )


@torch.no_grad()
def probe_backbone(model: torch.nn.Module, data: ProbeData, batch_size: int = 256) -> dict[str, dict[str, float]]:
    """{feature: {"knn_top1", "effective_rank"}} of a frozen backbone (`pooled` and `mean_patch` features)."""
    was_training = model.training
    model.eval()
    try:
        results = {}
        poolings = tuple(FEATURES.values())
        train_sets = extract_pooled_features(model, data.train_pixels, poolings, batch_size=batch_size)
        test_sets = extract_pooled_features(model, data.test_pixels, poolings, batch_size=batch_size)
        for name, pooling in FEATURES.items():
            train, test = train_sets[pooling], test_sets[pooling]
            if not (torch.isfinite(train).all() and torch.isfinite(test).all()):
                results[name] = {"knn_top1": float("nan"), "effective_rank": float("nan")}
                continue
            results[name] = {"knn_top1": _knn(train, data, test), "effective_rank": float(effective_rank(test))}
        return results
    finally:
        model.train(was_training)


def probe_raw_pixels(data: ProbeData) -> dict[str, float]:
    """The same k-NN on the flattened normalised pixels (what a representation should not fall far below)."""
    train, test = data.train_pixels.flatten(1), data.test_pixels.flatten(1)
    return {"knn_top1": _knn(train, data, test), "effective_rank": float(effective_rank(test))}


def evaluate_probes(suite: dict[str, ProbeData], backbones: dict[str, torch.nn.Module]) -> dict[str, dict]:
    """{probe: {"raw_pixels": {...}, label: {feature: {...}}}} for every probe of `suite` and every named backbone
    (e.g. {"random init": ..., "trained": ...}); labels keep their order, raw pixels come first."""
    results = {}
    for probe, data in suite.items():
        results[probe] = {RAW_PIXELS: probe_raw_pixels(data)}
        for label, model in backbones.items():
            results[probe][label] = probe_backbone(model, data)
    return results


def format_probe_tables(results: dict[str, dict], suite: dict[str, ProbeData] | None = None, title: str = "") -> str:
    """A text table per probe: raw pixels, each backbone, and the change from the first backbone to the last.

    Columns: k-NN top-1 and effective rank of the pooled and mean-patch features (raw pixels: one feature)."""
    lines = [title] if title else []
    header = f"{'':<18} {'k-NN pooled':>11} {'k-NN mean_patch':>15} {'rank pooled':>11} {'rank mean_patch':>15}"
    for probe, rows in results.items():
        size = ""
        if suite is not None and probe in suite:
            data = suite[probe]
            size = f": {len(data.test_labels)} test / {len(data.train_labels)} train images, {data.image_size} px"
        lines += [f"{PROBES.get(probe, probe)}{size}", header]
        raw = rows[RAW_PIXELS]
        lines.append(f"{'raw pixels':<18} {100 * raw['knn_top1']:>10.1f}% {'':>15} {raw['effective_rank']:>11.1f}")
        models = [label for label in rows if label != RAW_PIXELS]
        for label in models:
            r = rows[label]
            lines.append(
                f"{label:<18} {100 * r['pooled']['knn_top1']:>10.1f}% {100 * r['mean_patch']['knn_top1']:>14.1f}% "
                f"{r['pooled']['effective_rank']:>11.1f} {r['mean_patch']['effective_rank']:>15.1f}"
            )
        if len(models) > 1:
            first, last = rows[models[0]], rows[models[-1]]
            change = {f: 100 * (last[f]["knn_top1"] - first[f]["knn_top1"]) for f in FEATURES}
            lines.append(f"{'change':<18} {change['pooled']:>+11.1f} {change['mean_patch']:>+15.1f}")
    return "\n".join(lines)


def random_baseline(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A fresh, seeded random initialisation of `model`'s own class and config (same patch, width and size): the
    baseline a trained checkpoint is compared with, never a preset of other dimensions."""
    import copy

    torch.manual_seed(seed)
    return type(model)(copy.deepcopy(model.config))


def trained_image_size(model: torch.nn.Module, image_processor=None) -> int:
    """The resolution a checkpoint was trained at: its processor's crop (what every run and converter writes, see
    `image_processor_at`), else its config's `image_size`."""
    crop = getattr(image_processor, "crop_size", None) or {}
    if crop.get("height"):
        return int(crop["height"])
    return int(model.config.image_size)


# ---------------------------------------------------------------------------------------------------- PCA picture
def pca_rgb(features: torch.Tensor) -> np.ndarray:
    """(..., D) features -> (..., 3) uint8: the first three principal components, min-max scaled per channel.

    Fit once over every position of every image passed in, so colours are comparable across the images."""
    shape, d = features.shape[:-1], features.shape[-1]
    flat = features.reshape(-1, d).double()
    flat = flat - flat.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(flat, full_matrices=False)
    projected = flat @ v[:3].T
    if projected.shape[1] < 3:  # fewer than 3 dimensions: pad with zeros
        projected = torch.nn.functional.pad(projected, (0, 3 - projected.shape[1]))
    low, high = projected.min(0).values, projected.max(0).values
    scaled = (projected - low) / (high - low).clamp_min(1e-12)
    return (scaled.reshape(*shape, 3).numpy() * 255).round().astype(np.uint8)


@torch.no_grad()
def patch_feature_maps(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, h, w, D) patch features of a frozen backbone (`feature_map` of its outputs)."""
    was_training = model.training
    model.eval()
    try:
        outputs = model(pixel_values.to(next(model.parameters()).dtype))
    finally:
        model.train(was_training)
    feature_map = getattr(outputs, "feature_map", None)
    if feature_map is None or feature_map.ndim != 4:
        raise ValueError(f"{type(model).__name__} does not return a (B, h, w, D) feature_map.")
    return feature_map.float()


def pca_shared_scale(rows: dict[str, torch.Tensor], quantile: float = 0.99) -> dict[str, tuple[np.ndarray, float]]:
    """{label: ((B, h, w, 3) uint8 colours, explained)} of several models' (B, h, w, D) feature maps on ONE scale.

    Each model's features get their own principal components (two networks share no basis), fitted over every
    position of every image. The three leading components are measured in units of that model's total feature
    spread (the square root of its summed variance) and mapped to colour with a symmetric range shared by all rows
    (the `quantile` of |component| over all rows): grey is the mean, saturated colour a large share of the variance.
    Per-row min-max scaling would stretch any row, however weak its structure, to full colour; here a row whose top
    components carry little of its variance stays pale. `explained` is that share (0..1) of the three components."""
    projected, explained = {}, {}
    for label, maps in rows.items():
        flat = maps.reshape(-1, maps.shape[-1]).double()
        flat = flat - flat.mean(0, keepdim=True)
        _, singular, v = torch.linalg.svd(flat, full_matrices=False)
        components = flat @ v[:3].T
        # The sign of a principal component is arbitrary: make its largest excursion positive, so reruns agree.
        peak = components.gather(0, components.abs().argmax(0, keepdim=True))
        components = components * torch.where(peak < 0, -1.0, 1.0)
        if components.shape[1] < 3:
            components = torch.nn.functional.pad(components, (0, 3 - components.shape[1]))
        total = singular.square().sum()
        projected[label] = components / (total / flat.shape[0]).sqrt().clamp_min(1e-12)
        explained[label] = float(singular[:3].square().sum() / total.clamp_min(1e-12))
    scale = max(float(torch.quantile(z.abs().flatten().float(), quantile)) for z in projected.values())
    colours = {}
    for label, z in projected.items():
        unit = (0.5 + 0.5 * (z / max(scale, 1e-12)).clamp(-1, 1)).float()
        shape = rows[label].shape[:-1]
        colours[label] = ((unit.reshape(*shape, 3).numpy() * 255).round().astype(np.uint8), explained[label])
    return colours


def pca_picture(
    rows: dict[str, torch.Tensor], pixel_values: torch.Tensor, image_mean, image_std, cell: int = 160, caption=()
):
    """A PIL image: the input images in the first row, then per named model the PCA colours of its patch features
    (`pca_shared_scale`: one colour scale for every row), and the `caption` lines below.

    `rows` maps a label (e.g. "initialisation", "trained") to (B, h, w, D) feature maps of the same B images."""
    import PIL.Image
    import PIL.ImageDraw

    mean = torch.tensor(image_mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1)
    images = ((pixel_values.float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    images = images.permute(0, 2, 3, 1).numpy()
    count, label_width, line = images.shape[0], 150, 14
    shared = pca_shared_scale(rows)
    all_rows = [("input", images)]
    all_rows += [(f"{label}\n(top 3 PCs: {100 * explained:.0f} %)", colours) for label, (colours, explained) in
                 shared.items()]  # fmt: skip
    height = len(all_rows) * cell + line * len(caption) + (8 if caption else 0)
    canvas = PIL.Image.new("RGB", (label_width + count * cell, height), "white")
    draw = PIL.ImageDraw.Draw(canvas)
    for r, (label, pictures) in enumerate(all_rows):
        draw.multiline_text((4, r * cell + cell // 2 - 12), label, fill="black")
        for c in range(count):
            tile = PIL.Image.fromarray(pictures[c]).convert("RGB").resize((cell, cell), PIL.Image.NEAREST)
            canvas.paste(tile, (label_width + c * cell, r * cell))
    for i, text in enumerate(caption):
        draw.text((4, len(all_rows) * cell + 4 + i * line), text, fill="black")
    return canvas


__all__ = [
    "FEATURES",
    "PROBES",
    "ProbeData",
    "digits_probe_data",
    "evaluate_probes",
    "format_probe_tables",
    "patch_feature_maps",
    "pca_picture",
    "pca_rgb",
    "pca_shared_scale",
    "probe_backbone",
    "probe_processor",
    "probe_raw_pixels",
    "probe_suite",
    "random_baseline",
    "trained_image_size",
    "transformed_digits_probe_data",
]
