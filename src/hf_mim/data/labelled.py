"""Small labelled image data sets that ship inside installed wheels, for offline evaluation (k-NN, linear probes).

`digits_dataset` turns scikit-learn's 1797 8x8 handwritten digits (10 classes) into RGB images of any size, split
deterministically and stratified into train / test. `ProcessedExamples` feeds any labelled image set (an image
folder, too) to an image processor through `decode_image`, skipping unreadable files (`hf_mim.data.skipped`).
"""

import numpy as np
import PIL.Image
import torch
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature

from .transforms import DECODE_ERRORS, decode_failure, decode_image, without_decoding

_RESAMPLING = {"nearest": PIL.Image.Resampling.NEAREST, "bicubic": PIL.Image.Resampling.BICUBIC}


def _digits_split_indices(split: str, test_fraction: float, seed: int, labels: np.ndarray) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    train_index, test_index = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=seed, shuffle=True
    )
    return train_index if split == "train" else test_index


def digits_dataset(
    split: str = "train",
    image_size: int = 56,
    test_fraction: float = 0.25,
    seed: int = 0,
    resample: str = "nearest",
) -> Dataset:
    """scikit-learn's `load_digits()` as a `datasets.Dataset` with columns "image" (PIL RGB) and "label" (int).

    The 8x8 images (values 0..16) are scaled to 0..255 (white strokes on black), upsampled to `image_size` x
    `image_size` with `resample` ("nearest" or "bicubic") and repeated over three channels. The split is a
    stratified `train_test_split(test_size=test_fraction, random_state=seed)`: the same arguments always give the same
    rows, "train" and "test" are disjoint, cover all 1797 images together, and hold every class.
    """
    from sklearn.datasets import load_digits

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}.")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}.")
    if resample not in _RESAMPLING:
        raise ValueError(f"resample must be one of {sorted(_RESAMPLING)}, got {resample!r}.")

    digits = load_digits()
    labels = np.asarray(digits.target, dtype=np.int64)
    indices = _digits_split_indices(split, test_fraction, seed, labels)
    pixels = np.clip(np.round(np.asarray(digits.images, dtype=np.float64) * (255.0 / 16.0)), 0, 255).astype(np.uint8)

    images = []
    for index in indices:
        image = PIL.Image.fromarray(pixels[index], mode="L")
        if image_size != image.width:
            image = image.resize((image_size, image_size), resample=_RESAMPLING[resample])
        images.append(image.convert("RGB"))
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    return Dataset.from_dict({"image": images, "label": labels[indices].tolist()}, features=features, split=split)


def pixel_values_for(dataset, image_processor, batch_size: int = 512) -> torch.Tensor:
    """The (N, 3, H, W) float tensor that `image_processor` (an hf_mim image processor) makes of `dataset["image"]`.

    Images are decoded by `decode_image` and processed `batch_size` at a time (`image_processor(images=[...],
    return_tensors="pt")`). Configure the processor for the data's scale, e.g. `CapiImageProcessor(size={
    "shortest_edge": 56}, crop_size={"height": 56, "width": 56})` for 56-pixel digits. One row per image: an
    unreadable one raises (one of DECODE_ERRORS); for data that may hold broken files, use `ProcessedExamples`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    dataset = without_decoding(dataset, "image")
    chunks = []
    for start in range(0, len(dataset), batch_size):
        images = [decode_image(value) for value in dataset[start : start + batch_size]["image"]]
        chunks.append(image_processor(images=images, return_tensors="pt")["pixel_values"])
    if not chunks:
        raise ValueError("The dataset holds no images.")
    return torch.cat(chunks)


class ProcessedExamples:
    """`Dataset.with_transform` function: the readable images of a batch (decoded by `decode_image`) through
    `image_processor` in one call -> "pixel_values"; labels -> "labels". An unreadable image gives `pixel_values` None
    and `skipped_file` (name, error), for a `hf_mim.data.skipped.SkippingCollator` to drop. Cast the image column with
    `without_decoding` first, so that `datasets` hands the files over undecoded."""

    def __init__(self, image_processor, image_column: str = "image", label_column: str | None = "label"):
        self.image_processor = image_processor
        self.image_column = image_column
        self.label_column = label_column

    def __call__(self, examples: dict) -> dict:
        values = examples[self.image_column]
        images, skipped = [], []
        for value in values:
            try:
                images.append(decode_image(value))
                skipped.append(None)
            except DECODE_ERRORS as error:
                images.append(None)
                skipped.append(decode_failure(value, error))
        readable = [image for image in images if image is not None]
        processed = iter(
            self.image_processor(images=readable, return_tensors="pt")["pixel_values"] if readable else ()
        )
        output = {
            "pixel_values": [None if image is None else next(processed) for image in images],
            "skipped_file": skipped,
        }
        if self.label_column is not None:
            output["labels"] = examples[self.label_column]
        return output


__all__ = ["ProcessedExamples", "digits_dataset", "pixel_values_for"]
