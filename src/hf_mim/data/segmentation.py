"""Semantic segmentation data: an embedded SYNTHETIC data set for offline demos and tests, and paired image / mask
transforms.

The synthetic set is not a benchmark. Each image is a random crop of one of the bundled real photos
(`bundled_photos()`: scikit-image / scikit-learn samples) with 1 to `max_digits` handwritten digits from scikit-learn's
`load_digits()` pasted on it as solid-coloured shapes. A digit is upsampled bilinearly from 8x8 and thresholded at
half its intensity range, so its shape is a binary mask; exactly the pasted pixels take the digit's colour and its
label, later digits overwrite earlier ones. Labels: 0 = background, 1 + d = digit d (`SYNTHETIC_SEGMENTATION_LABELS`,
11 classes). Everything is drawn from `numpy.random.default_rng((seed, split, index))`, so an example depends only on
the seed, its split and its index (not on how many are generated). Train and validation draw their digits from the
disjoint 75 % / 25 % parts of scikit-learn's stratified split (`labelled.digits_dataset`'s "train" / "test") and their
backgrounds from disjoint photos (every fourth bundled photo is a validation background, when there are at least
four).

Transforms: `SegmentationTransform` crops, flips and resizes an image and its mask with the same parameters
(torchvision transforms v2 with `tv_tensors.Mask`, which always resamples masks with nearest neighbour), then
normalises the image only. Training: RandomResizedCrop + horizontal flip; evaluation: a square resize (CAPI's
`Resize((224, 224))`; labels are evaluated at this resolution). Images and masks are decoded by
`hf_mim.data.transforms` (`decode_image` / `load_image`: EXIF orientation applied to both, as `datasets` does);
`SegmentationExamples` skips a pair whose image or mask is unreadable, naming the file (`hf_mim.data.skipped`).
"""

import functools
from collections.abc import Sequence

import datasets
import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from .bundled import bundled_photos
from .labelled import _digits_split_indices
from .skipped import SkippingCollator
from .transforms import DECODE_ERRORS, IMAGENET_MEAN, IMAGENET_STD, decode_failure, decode_image, load_image

IGNORE_INDEX = 255
SYNTHETIC_SEGMENTATION_LABELS = ("background",) + tuple(str(digit) for digit in range(10))
SPLITS = ("train", "validation")
_SPLIT_IDS = {"train": 0, "validation": 1}
_DIGIT_THRESHOLD = 8.0  # half of load_digits' 0..16 range


@functools.lru_cache(maxsize=1)
def _photos() -> tuple:
    return tuple(photo.convert("RGB") for photo in bundled_photos())


def _split_photos(photos: Sequence, split: str) -> list:
    if len(photos) < 4:
        return list(photos)
    keep = [index % 4 == 3 for index in range(len(photos))]
    if split == "train":
        keep = [not k for k in keep]
    return [photo for photo, k in zip(photos, keep) if k]


def digit_mask(digit_image: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 `load_digits` image (values 0..16) -> the (size, size) bool shape that the synthetic set pastes:
    bilinear upsampling (PIL, float) thresholded at 8."""
    image = PIL.Image.fromarray(np.asarray(digit_image, dtype=np.float32))
    upsampled = np.asarray(image.resize((size, size), resample=PIL.Image.Resampling.BILINEAR))
    return upsampled > _DIGIT_THRESHOLD


def _background(rng: np.random.Generator, photo: PIL.Image.Image, image_size: int) -> np.ndarray:
    side = max(1, int(round(rng.uniform(0.25, 1.0) * min(photo.size))))
    left = int(rng.integers(0, photo.width - side + 1))
    top = int(rng.integers(0, photo.height - side + 1))
    crop = photo.crop((left, top, left + side, top + side))
    crop = crop.resize((image_size, image_size), resample=PIL.Image.Resampling.BILINEAR)
    array = np.array(crop, dtype=np.uint8)
    if rng.random() < 0.5:
        array = array[:, ::-1].copy()
    return array


def _render(
    rng: np.random.Generator,
    photos: list,
    digit_images: np.ndarray,
    digit_labels: np.ndarray,
    pool: np.ndarray,
    image_size: int,
    max_digits: int,
    digit_size: tuple[float, float],
):
    image = _background(rng, photos[int(rng.integers(len(photos)))], image_size)
    mask = np.zeros((image_size, image_size), dtype=np.uint8)
    low = max(8, int(round(digit_size[0] * image_size)))
    high = max(low, int(round(digit_size[1] * image_size)))
    objects = []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        index = int(pool[int(rng.integers(len(pool)))])
        size = int(rng.integers(low, high + 1))
        top = int(rng.integers(0, image_size - size + 1))
        left = int(rng.integers(0, image_size - size + 1))
        color = [int(c) for c in rng.integers(0, 256, size=3)]
        shape = digit_mask(digit_images[index], size)
        window = (slice(top, top + size), slice(left, left + size))
        image[window][shape] = color
        mask[window][shape] = 1 + int(digit_labels[index])
        objects.append(
            {"digit": int(digit_labels[index]), "digits_index": index, "top": top, "left": left, "size": size,
             "color": color}
        )  # fmt: skip
    return PIL.Image.fromarray(image), PIL.Image.fromarray(mask), objects


def synthetic_segmentation_dataset(
    split: str = "train",
    num_images: int | None = None,
    image_size: int = 112,
    seed: int = 0,
    max_digits: int = 3,
    digit_size: tuple[float, float] = (0.25, 0.55),
) -> datasets.Dataset:
    """The SYNTHETIC digits-on-photos segmentation set (see the module docstring) as a `datasets.Dataset`.

    Columns: "image" (PIL RGB, `image_size` square), "label" (PIL "L" mask: 0 background, 1 + digit class) and
    "objects" (per pasted digit, in paste order: `digit`, `digits_index` into `load_digits()`, `top`, `left`, `size`
    and RGB `color`, enough to re-render the mask). `num_images` defaults to 256 (train) / 64 (validation); digit
    sides are drawn uniformly in `digit_size` x `image_size` pixels.
    """
    from sklearn.datasets import load_digits

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if num_images is None:
        num_images = 256 if split == "train" else 64
    if num_images < 0:
        raise ValueError(f"num_images must be non-negative, got {num_images}.")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}.")
    if max_digits < 1:
        raise ValueError(f"max_digits must be positive, got {max_digits}.")
    if not 0.0 < digit_size[0] <= digit_size[1] <= 1.0:
        raise ValueError(f"digit_size must satisfy 0 < low <= high <= 1, got {digit_size}.")

    digits = load_digits()
    digit_labels = np.asarray(digits.target, dtype=np.int64)
    pool = _digits_split_indices("train" if split == "train" else "test", 0.25, 0, digit_labels)
    photos = _split_photos(_photos(), split)

    images, masks, objects = [], [], []
    for index in range(num_images):
        rng = np.random.default_rng((seed, _SPLIT_IDS[split], index))
        image, mask, placed = _render(
            rng, photos, digits.images, digit_labels, pool, image_size, max_digits, digit_size
        )
        images.append(image)
        masks.append(mask)
        objects.append(placed)
    object_feature = {
        "digit": datasets.Value("int64"), "digits_index": datasets.Value("int64"), "top": datasets.Value("int64"),
        "left": datasets.Value("int64"), "size": datasets.Value("int64"), "color": datasets.List(datasets.Value("int64")),
    }  # fmt: skip
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.Image(), "objects": datasets.List(object_feature)}
    )
    return datasets.Dataset.from_dict(
        {"image": images, "label": masks, "objects": objects}, features=features, split=split
    )


def synthetic_segmentation_datasets(
    num_train: int = 256, num_validation: int = 64, image_size: int = 112, seed: int = 0, **kwargs
) -> datasets.DatasetDict:
    """Both splits of `synthetic_segmentation_dataset` as a `DatasetDict` ("train", "validation")."""
    return datasets.DatasetDict(
        train=synthetic_segmentation_dataset("train", num_train, image_size, seed, **kwargs),
        validation=synthetic_segmentation_dataset("validation", num_validation, image_size, seed, **kwargs),
    )


# ------------------------------------------------------------------------------------------------------ transforms


def reduce_labels(labels: np.ndarray | torch.Tensor, ignore_index: int = IGNORE_INDEX):
    """transformers' `do_reduce_labels` (ADE20K's convention): 0 (background / "other") -> `ignore_index`, every other
    label - 1; `ignore_index` stays."""
    if isinstance(labels, torch.Tensor):
        reduced = labels.long() - 1
        reduced[(labels == 0) | (labels == ignore_index)] = ignore_index
        return reduced.to(labels.dtype)
    labels = np.asarray(labels)
    reduced = labels.astype(np.int64) - 1
    reduced[(labels == 0) | (labels == ignore_index)] = ignore_index
    return reduced.astype(labels.dtype)


def mask_to_array(mask) -> np.ndarray:
    """A segmentation map (PIL "L" / "P" / "I" / "I;16" image, path, bytes, datasets dict or array) -> (H, W) int64
    class indices. Files are read by `load_image` (EXIF-oriented like their images, closed after reading; one of
    DECODE_ERRORS when unreadable). RGB(A) masks are refused: a colour-coded map needs its palette to be turned into
    indices."""
    if not isinstance(mask, np.ndarray | torch.Tensor | list | tuple):
        mask = load_image(mask)
    if isinstance(mask, PIL.Image.Image):
        if mask.mode in ("RGB", "RGBA"):
            raise ValueError(
                "Segmentation masks must hold one class index per pixel (mode L, P or I), got an RGB mask."
            )
        mask = np.array(mask)
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"A segmentation mask must be 2-D, got shape {array.shape}.")
    return array.astype(np.int64)


class SegmentationTransform:
    """Paired image + mask transform: `transform(image, mask) -> (pixel_values (3, S, S) float, labels (S, S) int64)`.

    Training (`train=True`): RandomResizedCrop(`image_size`, `scale`, `ratio`) and, with `hflip`, a horizontal flip
    with probability 0.5; evaluation: a resize to `image_size` x `image_size`. The image is resampled with
    `interpolation` (bilinear, VICRegL's; bicubic, CAPI's), the mask always with nearest neighbour, and both get the
    same crop and flip (torchvision transforms v2 draw the parameters once per call, from torch's global RNG). Then
    the image is scaled to [0, 1] and normalised with `mean` / `std`; with `reduce_labels` the mask is remapped by
    `reduce_labels` (0 -> `ignore_index`, others - 1).
    """

    def __init__(
        self,
        image_size: int | tuple[int, int],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        train: bool = False,
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: bool = True,
        interpolation: str = "bilinear",
        reduce_labels: bool = False,
        ignore_index: int = IGNORE_INDEX,
    ):
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        mode = v2.InterpolationMode(interpolation)
        if train:
            steps = [v2.RandomResizedCrop(size, scale=scale, ratio=ratio, interpolation=mode, antialias=True)]
            if hflip:
                steps.append(v2.RandomHorizontalFlip(0.5))
        else:
            steps = [v2.Resize(size, interpolation=mode, antialias=True)]
        self.geometry = v2.Compose(steps)
        self.normalize = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
        self.size = size
        self.train = train
        self.reduce_labels = reduce_labels
        self.ignore_index = ignore_index

    def __call__(self, image, mask) -> tuple[torch.Tensor, torch.Tensor]:
        image = decode_image(image)
        labels = mask_to_array(mask)
        if labels.shape != (image.height, image.width):
            raise ValueError(f"Mask of shape {labels.shape} for an image of size {image.height}x{image.width}.")
        pixels = tv_tensors.Image(torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1))
        pixels, labels = self.geometry(pixels, tv_tensors.Mask(torch.from_numpy(labels)))
        labels = labels.as_subclass(torch.Tensor).long()
        if self.reduce_labels:
            labels = reduce_labels(labels, self.ignore_index)
        return self.normalize(pixels).as_subclass(torch.Tensor), labels

    def __repr__(self) -> str:
        return f"{type(self).__name__}(geometry={self.geometry}, reduce_labels={self.reduce_labels})"


class SegmentationExamples:
    """`Dataset.with_transform` function: a batch of examples -> {"pixel_values": [...], "labels": [...],
    "skipped_file": [...]} through a `SegmentationTransform` applied to the `image_column` / `label_column` pairs.

    A pair whose image or mask cannot be read (one of DECODE_ERRORS, truncated files included) gives `pixel_values`
    and `labels` None and `skipped_file` = (name of the unreadable file, error), for `segmentation_collator` to turn
    into an ignored placeholder. A readable pair that does not fit (an RGB mask, sizes that differ) still raises.
    Cast both columns with `hf_mim.data.transforms.without_decoding` first, so that `datasets` hands the files over
    undecoded."""

    def __init__(self, transform: SegmentationTransform, image_column: str = "image", label_column: str = "label"):
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column

    def __call__(self, examples: dict) -> dict:
        pixel_values, labels, skipped = [], [], []
        for image, mask in zip(examples[self.image_column], examples[self.label_column]):
            image, mask, failure = _decode_pair(image, mask)
            if failure is None:
                pixels, target = self.transform(image, mask)
            else:
                pixels = target = None
            pixel_values.append(pixels)
            labels.append(target)
            skipped.append(failure)
        return {"pixel_values": pixel_values, "labels": labels, "skipped_file": skipped}


def _decode_pair(image, mask):
    """(RGB image, mask, None), or (None, None, (name, error)) naming the first of the two that cannot be read."""
    try:
        decoded = decode_image(image)
    except DECODE_ERRORS as error:
        return None, None, decode_failure(image, error)
    if isinstance(mask, np.ndarray | torch.Tensor | list | tuple):
        return decoded, mask, None
    try:
        return decoded, load_image(mask), None
    except DECODE_ERRORS as error:
        return None, None, decode_failure(mask, error)


def segmentation_collator(
    image_size: int | tuple[int, int], ignore_index: int = IGNORE_INDEX, num_channels: int = 3
) -> SkippingCollator:
    """Collator for `SegmentationExamples` that may hold unreadable pairs: stacks "pixel_values" (B, C, H, W) and
    "labels" (B, H, W) int64; an unreadable pair becomes a zero image with an all-`ignore_index` mask and is
    reported in `skipped_files` (see `hf_mim.data.skipped.SkippingCollator`)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    placeholders = {
        "pixel_values": torch.zeros(num_channels, height, width),
        "labels": torch.full((height, width), ignore_index, dtype=torch.long),
    }
    return SkippingCollator(placeholders)


def segmentation_collate(examples: list[dict]) -> dict:
    """Stack "pixel_values" (B, 3, H, W) and "labels" (B, H, W) int64."""
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "labels": torch.stack([torch.as_tensor(example["labels"]).long() for example in examples]),
    }


__all__ = [
    "IGNORE_INDEX",
    "SYNTHETIC_SEGMENTATION_LABELS",
    "SegmentationExamples",
    "SegmentationTransform",
    "digit_mask",
    "mask_to_array",
    "reduce_labels",
    "segmentation_collate",
    "segmentation_collator",
    "synthetic_segmentation_dataset",
    "synthetic_segmentation_datasets",
]
