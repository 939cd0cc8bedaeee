"""Image decoding for every hf_mim example, and the pretraining transforms (torchvision transforms v2).

`decode_image` is the one decoding function of the examples (pretraining, fine-tuning, k-NN, segmentation, the dVAE
tokenizer): it reads paths, bytes and `datasets` `{"bytes", "path"}` dicts (use `without_decoding` so that
`datasets` hands those over instead of decoding itself), applies the EXIF orientation as `datasets` does, closes
the file it opened, treats a truncated file as unreadable, and raises one of `DECODE_ERRORS` for any file it cannot
read. `SafeImageTransform` and `hf_mim.data.skipped` turn those errors into skipped, named files.
"""

import contextlib
import hashlib
import io
import os
import struct
from collections.abc import Iterator, Mapping

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import v2
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..image_processing_utils import _pil_to_rgb_array

IMAGENET_MEAN, IMAGENET_STD = tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)
DECODE_ERRORS = (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError)
# What some PIL decoders raise on malformed data besides DECODE_ERRORS; decode_image turns them into an OSError.
_MALFORMED_DATA_ERRORS = (EOFError, IndexError, KeyError, TypeError, ZeroDivisionError, struct.error)
_ORIENTATION = PIL.Image.ExifTags.Base.Orientation
# Modes that `_pil_to_rgb_array` turns into RGB with PIL's own `convert("RGB")` (no palette, alpha or high bit depth);
# decode_image converts these directly instead of through a numpy array (same pixels, about 0.3 ms less per
# ImageNet-size JPEG on one core).
_PLAIN_MODES = ("RGB", "L", "CMYK", "YCbCr")


def _source(value):
    """The thing to open: a path (str), a BytesIO, or an in-memory PIL image."""
    if isinstance(value, Mapping):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return io.BytesIO(value)
    if isinstance(value, str | PIL.Image.Image):
        return value
    raise ValueError(f"Cannot decode an image from {type(value).__name__}")


def _exif_orientation(image: PIL.Image.Image) -> int:
    """The EXIF orientation tag (1 when absent); metadata too broken to read counts as absent: the pixels decide
    whether a file is readable, not its metadata."""
    try:
        return int(image.getexif().get(_ORIENTATION, 1) or 1)
    except (*DECODE_ERRORS, *_MALFORMED_DATA_ERRORS):
        return 1


@contextlib.contextmanager
def _loaded(value) -> Iterator[PIL.Image.Image]:
    """The image of `value`, fully loaded and EXIF-oriented, valid inside the block. A file opened here is closed on
    leaving the block, also on error. PIL's own malformed-data errors become an OSError."""
    source = _source(value)
    try:
        with contextlib.ExitStack() as stack:
            image = source if isinstance(source, PIL.Image.Image) else stack.enter_context(PIL.Image.open(source))
            # Pillow's default ImageFile.LOAD_TRUNCATED_IMAGES = False (never changed here) makes load() raise
            # "image file is truncated" instead of filling the missing part with grey.
            image.load()
            if min(image.size) < 1:
                raise ValueError(f"Image has an empty side: {image.size}")
            if _exif_orientation(image) != 1:
                image = PIL.ImageOps.exif_transpose(image)  # a new image; as datasets' Image feature decodes
            yield image
    except _MALFORMED_DATA_ERRORS as error:
        raise OSError(f"Cannot decode the image: {type(error).__name__}: {error}") from error


def decode_image(value) -> PIL.Image.Image:
    """PIL image, path, bytes or a datasets `{"bytes", "path"}` dict -> RGB PIL image (any mode, 16-bit included).

    The EXIF orientation is applied (`PIL.ImageOps.exif_transpose`, as `datasets` does). A file opened here is closed
    before returning, also when it fails; the image returned is loaded and owns its pixels. Raises one of
    DECODE_ERRORS for an unreadable file - truncated ones included -; the caller decides whether to skip it.
    """
    with _loaded(value) as image:
        if image.mode in _PLAIN_MODES and "transparency" not in image.info:
            if image.mode != "RGB" or image is value:
                image = image.convert("RGB")  # a new image: the caller's stays as it is
            # An image opened here is loaded: its pixels are in memory and it outlives the file (leaving the block
            # closes the file only). Returned as it is, without the copy convert("RGB") would make (0.19 ms per
            # ImageNet-size JPEG, 4 % of CAPI's input path).
            image.info = {}  # no metadata, as from the array path
            return image
        return PIL.Image.fromarray(_pil_to_rgb_array(image))


def load_image(value) -> PIL.Image.Image:
    """`decode_image` without the RGB conversion: the image in its own mode ("L", "P", "I;16", ...), e.g. a
    segmentation mask. Loaded, EXIF-oriented, independent of any file; raises one of DECODE_ERRORS when unreadable."""
    with _loaded(value) as image:
        return image if image is value else image.copy()  # the opened file's image is closed on leaving the block


def describe(value) -> str:
    """A name for an image in error messages: its path when there is one; for bytes without a path, their size and
    a hash (different images get different names, the same bytes the same one)."""
    if isinstance(value, Mapping):
        if value.get("path"):
            return str(value["path"])
        value = value.get("bytes")
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes, sha1 {hashlib.sha1(value).hexdigest()[:12]}>"
    if isinstance(value, str | os.PathLike):
        return os.fspath(value)
    if value is None:
        return "<no image>"
    return str(getattr(value, "filename", "") or "<in-memory image>")


def decode_failure(value, error: BaseException) -> tuple[str, str]:
    """(name, reason) of an image that failed to decode: `describe(value)` and "OSError: image file is truncated"."""
    return describe(value), f"{type(error).__name__}: {error}"


def without_decoding(dataset, *columns: str):
    """`dataset` (a `datasets` Dataset / IterableDataset / DatasetDict) with its `datasets.Image` columns among
    `columns` cast to `Image(decode=False)`: rows then hold `{"bytes", "path"}` dicts for `decode_image`, instead of
    images `datasets` decoded itself (which raises on the first unreadable file). Other columns are left alone."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict | datasets.IterableDatasetDict):
        return type(dataset)({name: without_decoding(split, *columns) for name, split in dataset.items()})
    features = getattr(dataset, "features", None) or {}
    for column in columns:
        feature = features.get(column)
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


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
    steps.append(NormalizedTensor(IMAGENET_MEAN, IMAGENET_STD))
    return v2.Compose(steps)


def _channels_first(image: PIL.Image.Image, dtype: torch.dtype) -> torch.Tensor:
    """An RGB PIL image's 0-255 values as a contiguous (3, H, W) tensor of `dtype` (exact: integers), in one copy
    from the (H, W, 3) pixels."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).to(dtype, memory_format=torch.contiguous_format)


def to_tensor(image) -> torch.Tensor:
    """torchvision's `transforms.functional.to_tensor` (the same floats: values / 255 in torch's default dtype),
    without its extra copies for RGB PIL images; anything else goes to torchvision's."""
    if isinstance(image, PIL.Image.Image) and image.mode == "RGB":
        return _channels_first(image, torch.get_default_dtype()).div_(255)
    return TF.to_tensor(image)


class NormalizedTensor:
    """An RGB PIL image -> a contiguous (3, H, W) float32 tensor, `(x / 255 - mean) / std` computed exactly as
    torchvision v2's `ToImage`, `ToDtype(torch.float32, scale=True)`, `Normalize(mean, std)` compute it (uint8 to
    float, `mul_(1 / 255)`, `sub(mean)`, `div_(std)`: the same floats), but in channel-first memory: v2 keeps the
    image's channel-last strides, which makes the normalisation and the collator's `torch.stack` slower. Other
    inputs (tensors, other PIL modes) go through those three v2 transforms."""

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.fallback = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def __call__(self, image):
        if not (isinstance(image, PIL.Image.Image) and image.mode == "RGB"):
            return self.fallback(image)
        return _channels_first(image, torch.float32).mul_(1.0 / 255).sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        mean, std = self.mean.flatten().tolist(), self.std.flatten().tolist()
        return f"{type(self).__name__}(mean={mean}, std={std})"


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
                errors.append(": ".join(decode_failure(value, error)))
        if any(isinstance(output, Mapping) for output in pixel_values):
            keys = dict.fromkeys(
                ["pixel_values"] + [k for output in pixel_values if output is not None for k in output]
            )
            columns = {key: [None if output is None else output.get(key) for output in pixel_values] for key in keys}
            return {**columns, "decode_error": errors}
        return {"pixel_values": pixel_values, "decode_error": errors}
