"""Did pretraining learn anything? A fixed, offline probe of a frozen backbone before and after training.

The probe is scikit-learn's handwritten digits (shipped inside the installed wheel, 10 classes, 1797 images), drawn
at the model's resolution (nearest upsampling, white strokes on black) and split 70 / 30, stratified, with a fixed
seed. For each feature (`pooler_output`, and the mean patch token), a weighted k-NN classifier (k = 20, T = 0.07,
cosine; the DINO protocol of `hf_mim.evaluation.knn`) of the test split on the train split gives top-1 accuracy, and
the effective rank of the test features says whether the representation collapsed (1) or spreads over many
dimensions. Raw pixels through the same k-NN are the reference a representation should approach.

The main jobs (`run_<method>.py` on their embedded default) print this table before and after training, and
`benchmarks/benchmark_learning.py` uses the same functions over several seeds.
"""

from dataclasses import dataclass

import numpy as np
import torch

from ..losses import effective_rank
from .knn import extract_features, knn_accuracy

PROBE_TEST_FRACTION, PROBE_SPLIT_SEED, PROBE_K, PROBE_TEMPERATURE = 0.3, 0, 20, 0.07
FEATURES = {"pooled": "pooler", "mean_patch": "mean_patch"}


@dataclass
class ProbeData:
    """Processed digits: pixel values and labels of the train and test splits."""

    train_pixels: torch.Tensor
    train_labels: torch.Tensor
    test_pixels: torch.Tensor
    test_labels: torch.Tensor
    image_size: int


def digits_probe_data(image_processor_class, image_size: int) -> ProbeData:
    """The digits splits at `image_size` px through `image_processor_class` (resize to the side, no crop)."""
    from ..data.labelled import digits_dataset, pixel_values_for

    side = {"height": image_size, "width": image_size}
    processor = image_processor_class(size=side, crop_size=side, do_center_crop=False)
    splits = {
        name: digits_dataset(name, image_size, test_fraction=PROBE_TEST_FRACTION, seed=PROBE_SPLIT_SEED)
        for name in ("train", "test")
    }
    return ProbeData(
        train_pixels=pixel_values_for(splits["train"], processor),
        train_labels=torch.tensor(splits["train"]["label"]),
        test_pixels=pixel_values_for(splits["test"], processor),
        test_labels=torch.tensor(splits["test"]["label"]),
        image_size=image_size,
    )


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
        for name, pooling in FEATURES.items():
            train = extract_features(model, data.train_pixels, pooling=pooling, batch_size=batch_size)
            test = extract_features(model, data.test_pixels, pooling=pooling, batch_size=batch_size)
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


def format_learning_table(before: dict, after: dict, raw: dict | None = None, title: str = "") -> str:
    """A small text table: k-NN top-1 and effective rank per feature, at initialisation and after training."""
    lines = [title] if title else []
    lines.append(f"{'feature':<12} {'k-NN before':>11} {'k-NN after':>10} {'change':>8} {'rank before':>11} "
                 f"{'rank after':>10}")  # fmt: skip
    for name in FEATURES:
        b, a = before[name], after[name]
        change = 100 * (a["knn_top1"] - b["knn_top1"])
        lines.append(
            f"{name:<12} {100 * b['knn_top1']:>10.1f}% {100 * a['knn_top1']:>9.1f}% {change:>+7.1f} "
            f"{b['effective_rank']:>11.1f} {a['effective_rank']:>10.1f}"
        )
    if raw is not None:
        lines.append(f"{'raw pixels':<12} {100 * raw['knn_top1']:>10.1f}% {'':>10} {'':>8} "
                     f"{raw['effective_rank']:>11.1f}")  # fmt: skip
    return "\n".join(lines)


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


def pca_picture(rows: dict[str, torch.Tensor], pixel_values: torch.Tensor, image_mean, image_std, cell: int = 96):
    """A PIL image: the input images in the first row, then per named model the PCA colours of its patch features.

    `rows` maps a label (e.g. "initialisation", "trained") to (B, h, w, D) feature maps of the same B images."""
    import PIL.Image
    import PIL.ImageDraw

    mean = torch.tensor(image_mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(image_std, dtype=torch.float32).view(1, -1, 1, 1)
    images = ((pixel_values.float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    images = images.permute(0, 2, 3, 1).numpy()
    count, label_width = images.shape[0], 110
    canvas = PIL.Image.new("RGB", (label_width + count * cell, (1 + len(rows)) * cell), "white")
    draw = PIL.ImageDraw.Draw(canvas)
    all_rows = [("input", images)] + [(label, pca_rgb(maps)) for label, maps in rows.items()]
    for r, (label, pictures) in enumerate(all_rows):
        draw.text((4, r * cell + cell // 2 - 6), label, fill="black")
        for c in range(count):
            tile = PIL.Image.fromarray(pictures[c]).convert("RGB").resize((cell, cell), PIL.Image.NEAREST)
            canvas.paste(tile, (label_width + c * cell, r * cell))
    return canvas


__all__ = [
    "FEATURES",
    "ProbeData",
    "digits_probe_data",
    "format_learning_table",
    "patch_feature_maps",
    "pca_picture",
    "pca_rgb",
    "probe_backbone",
    "probe_raw_pixels",
]
