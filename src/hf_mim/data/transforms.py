"""Pretraining image transforms (torchvision transforms v2) with safe decoding of odd or corrupt files."""

import io
from collections.abc import Mapping

import PIL.Image
import torch
from torchvision.transforms import v2

from ..image_processing_utils import _pil_to_rgb_array

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError)


def decode_image(value) -> PIL.Image.Image:
    """PIL image, path, bytes or a datasets `{"bytes", "path"}` dict -> RGB PIL image (any mode, 16-bit included).

    Raises one of DECODE_ERRORS for an unreadable file; the caller decides whether to skip it.
    """
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes):
        value = PIL.Image.open(io.BytesIO(value))
    elif isinstance(value, str):
        value = PIL.Image.open(value)
    if not isinstance(value, PIL.Image.Image):
        raise ValueError(f"Cannot decode an image from {type(value).__name__}")
    value.load()
    if min(value.size) < 1:
        raise ValueError(f"Image has an empty side: {value.size}")
    return PIL.Image.fromarray(_pil_to_rgb_array(value))


def describe(value) -> str:
    """A name for an image in error messages: its path when there is one."""
    if isinstance(value, dict):
        return str(value.get("path") or "<bytes>")
    if isinstance(value, str):
        return value
    return str(getattr(value, "filename", "") or "<in-memory image>")


def pretraining_transform(
    image_size: int | tuple[int, int],
    crop_scale: tuple[float, float] = (0.6, 1.0),
    hflip: bool = True,
    interpolation: str = "bicubic",
) -> v2.Compose:
    """One random-resized crop + optional horizontal flip + ImageNet normalisation. CAPI: scale (0.6, 1), bicubic,
    flip; I-JEPA: scale (0.3, 1), bilinear, no flip.

    Crop and resize run on the PIL image, as in the originals (torchvision v1 on PIL): the same RNG draws give the
    same crop boxes, and PIL's resampling matches theirs exactly, where a tensor resize differs by up to one 8-bit
    step (tests/test_trajectory_*.py compare against the originals' transforms)."""
    mode = v2.InterpolationMode(interpolation)
    steps = [v2.RandomResizedCrop(image_size, scale=crop_scale, interpolation=mode, antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


class SafeImageTransform:
    """Batch transform for `datasets.Dataset.with_transform`: decodes each image, applies `transform`, and marks
    unreadable files instead of crashing (the collator drops and counts them).

    A transform returning a tensor fills "pixel_values"; one returning a dict (e.g. `MultiCropTransform`) has its
    entries spread into the example, one column per key, None for an unreadable file."""

    def __init__(self, transform, image_column: str = "image"):
        self.transform = transform
        self.image_column = image_column

    def __call__(self, examples: dict) -> dict:
        pixel_values, errors = [], []
        for value in examples[self.image_column]:
            try:
                pixel_values.append(self.transform(decode_image(value)))
                errors.append(None)
            except DECODE_ERRORS as error:
                pixel_values.append(None)
                errors.append(f"{describe(value)}: {type(error).__name__}: {error}")
        if any(isinstance(output, Mapping) for output in pixel_values):
            keys = dict.fromkeys(
                ["pixel_values"] + [k for output in pixel_values if output is not None for k in output]
            )
            columns = {key: [None if output is None else output.get(key) for output in pixel_values] for key in keys}
            return {**columns, "decode_error": errors}
        return {"pixel_values": pixel_values, "decode_error": errors}
