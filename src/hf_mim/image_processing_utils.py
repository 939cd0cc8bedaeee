"""Shared image-processor base: transformers' torchvision backend plus the input hygiene every hf_mim model needs.

Real-world images come as grayscale, palette, RGBA/LA, 16-bit PNGs, bool masks or tiny thumbnails. This base turns
all of those into 8-bit RGB (or, with `do_convert_rgb=False`, 8-bit images with their own channels) before the usual
resize / crop / normalise pipeline, and rejects with a clear message what cannot be processed meaningfully (an image
smaller than `min_image_size`, empty arrays, unknown dtypes, `image_mean` / `image_std` of the wrong length).
"""

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    ChannelDimension,
    PILImageResampling,
)
from transformers.processing_utils import ImagesKwargs


class HfMimImagesKwargs(ImagesKwargs, total=False):
    """min_image_size (`int`): images whose height or width is below this are rejected (e.g. one patch)."""

    min_image_size: int


def _integer_array_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map bool / 8-bit / 16-bit (and 32-bit ints holding 16-bit data, as PIL's mode "I") to uint8."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"Unsupported image dtype {array.dtype}")
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if low < 0 or high > 65535:
        raise ValueError(f"Integer image values must lie in [0, 65535]; got [{low}, {high}] ({array.dtype}).")
    if array.dtype in (np.uint16, np.int32, np.uint32, np.int64) and (array.dtype == np.uint16 or high > 255):
        # 16-bit data: 65535 -> 255, with rounding.
        return np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
    return array.astype(np.uint8)


def _pil_to_rgb_array(image: PIL.Image.Image) -> np.ndarray:
    """Any PIL mode to an (H, W, 3) uint8 array; transparency is composited on white (as transformers does)."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        gray = _integer_array_to_uint8(np.asarray(image))
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode == "F":
        gray = np.clip(np.asarray(image, dtype=np.float32), 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, rgba)
    return np.array(image.convert("RGB"))


def _pil_to_array(image: PIL.Image.Image) -> np.ndarray:
    """A PIL image to a uint8 array with the mode's own bands (no RGB conversion): (H, W) for one band, else (H, W, C).

    Only what is not pixel values is decoded: palette modes become RGB (RGBA with transparency), 16-bit / 32-bit
    integer and float modes become 8-bit single-channel images as in `_pil_to_rgb_array`, mode "1" becomes 0 / 255.
    """
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return _integer_array_to_uint8(np.asarray(image))
    if image.mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0, 255).round().astype(np.uint8)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "PA":
        image = image.convert("RGBA")
    return _integer_array_to_uint8(np.array(image))


def _check_mean_std_length(channels: int, image_mean, image_std, converted_to_rgb: bool) -> None:
    """`image_mean` / `image_std` must be a single number or have one entry per channel.

    torchvision would otherwise broadcast silently: a 1-channel image normalised with 3 means becomes 3 channels.
    """
    for name, value in (("image_mean", image_mean), ("image_std", image_std)):
        if value is None or np.ndim(value) == 0 or len(value) == channels:
            continue
        count = len(value)
        described = f"{channels} channel{'' if channels == 1 else 's'}"
        hint = (
            f"Pass image_mean and image_std with one value per channel (e.g. image_mean={[0.5] * channels}, "
            f"image_std={[0.5] * channels}) or a single float for every channel"
        )
        if converted_to_rgb:
            described += " (after RGB conversion)"
            hint += ", or do_convert_rgb=False to keep the image's own channels"
        else:
            hint += ", or do_convert_rgb=True to get RGB images"
        raise ValueError(
            f"The image has {described} but {name} has {count} entr{'y' if count == 1 else 'ies'} "
            f"({tuple(value)}). {hint}."
        )


class HfMimImageProcessor(TorchvisionBackend):
    """Resize (shortest edge) + center crop + ImageNet normalisation, torchvision-backed, with robust input handling.

    Accepts PIL images of any mode, numpy arrays and torch tensors (HWC or CHW, uint8, uint16, bool or float in
    [0, 1] with `do_rescale=False`; 2-D arrays are single-channel images). Integer images are always made 8-bit
    first (16-bit -> 8-bit with rounding, bool -> 0 / 255).

    Channels:

    - `do_convert_rgb=True` (default): every image becomes RGB. Grayscale is repeated over three channels, RGBA / LA
      and palette transparency are composited on white, 4-channel arrays are read as RGBA (transformers' rule).
    - `do_convert_rgb=False`: the channels are kept as given. Arrays and tensors pass through with any channel count
      (1, 3 or 4 are recognised in HWC or CHW; pass `input_data_format` for other counts); PIL images keep their
      mode's bands ("L" -> 1, "LA" -> 2, "RGB" -> 3, "RGBA" / "CMYK" -> 4), only palette modes are decoded to their
      colours and 16-bit / float modes to one 8-bit channel. Use it for models configured with
      `num_channels != 3`, e.g. grayscale: `CapiImageProcessor(do_convert_rgb=False, image_mean=[0.5],
      image_std=[0.5])` gives (B, 1, H, W) pixel values for `CapiConfig(num_channels=1)`.

    `image_mean` / `image_std` must have one entry per channel of the processed image, or be a single float used for
    every channel; anything else raises a `ValueError` naming both counts (the 3-entry ImageNet defaults do not fit
    a 1- or 4-channel image, and are not silently broadcast or truncated).
    """

    valid_kwargs = HfMimImagesKwargs
    resample = PILImageResampling.BICUBIC
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    size = {"shortest_edge": 256}
    crop_size = {"height": 224, "width": 224}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    min_image_size = 1

    def _prepare_images_structure(self, images, expected_ndims: int = 3):
        # transformers only accepts 3-D arrays; a 2-D array or tensor is a single grayscale image (H, W).
        def add_channel(image):
            if isinstance(image, np.ndarray | torch.Tensor) and image.ndim == 2:
                return image[None]
            return image

        if isinstance(images, list | tuple):
            images = [add_channel(image) for image in images]
        else:
            images = add_channel(images)
        return super()._prepare_images_structure(images, expected_ndims=expected_ndims)

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, device=None, **kwargs):
        if isinstance(image, PIL.Image.Image):
            image.load()  # surface truncated/corrupt files here, with PIL's own message
            image = _pil_to_rgb_array(image) if do_convert_rgb else _pil_to_array(image)
            input_data_format = "channels_last"
        elif isinstance(image, np.ndarray) and not np.issubdtype(image.dtype, np.floating):
            image = _integer_array_to_uint8(image)
        elif isinstance(image, torch.Tensor) and not image.is_floating_point():
            image = torch.from_numpy(_integer_array_to_uint8(image.cpu().numpy()))
        if getattr(image, "size", 1) == 0 or (hasattr(image, "numel") and image.numel() == 0):
            raise ValueError("Received an empty image.")
        # RGB conversion after the layout is known (PIL images are already converted above), so that a channel
        # count transformers cannot convert gets a clear message.
        tensor = super().process_image(
            image, do_convert_rgb=False, input_data_format=input_data_format, device=device, **kwargs
        )
        channels = tensor.shape[0]
        if do_convert_rgb and channels != 3:
            if channels not in (1, 4):
                raise ValueError(
                    f"Cannot convert an image with {channels} channels to RGB (only 1-, 3- or 4-channel images can "
                    "be); pass do_convert_rgb=False to keep its channels."
                )
            tensor = self.convert_to_rgb(tensor, input_data_format=ChannelDimension.FIRST).contiguous()
            channels = tensor.shape[0]
        if kwargs.get("do_normalize"):
            _check_mean_std_length(channels, kwargs.get("image_mean"), kwargs.get("image_std"), bool(do_convert_rgb))
        height, width = tensor.shape[-2:]
        min_size = self.min_image_size or 1
        if height < min_size or width < min_size:
            raise ValueError(
                f"Image of size {height}x{width} is smaller than the minimum {min_size}x{min_size} "
                f"({type(self).__name__}.min_image_size, one patch); upsample it or drop it."
            )
        return tensor


def input_statistics(source: str | None, image_size: int | None, config=None, cache_dir: str | None = None):
    """(image_size, mean, std, processor) for an example script's transforms: `image_size` if given, else the image
    processor's crop (or shortest edge) found at `source`, else `config.image_size`, else 224; mean / std from that
    processor, else ImageNet's. `processor` is the one loaded (None when `source` has none)."""
    from transformers import AutoImageProcessor
    from transformers.utils import logging

    processor = None
    if source:
        try:
            processor = AutoImageProcessor.from_pretrained(source, cache_dir=cache_dir)
        except (OSError, ValueError, KeyError) as error:
            logging.get_logger(__name__).warning(
                "No image processor at %s (%s): using ImageNet mean/std.", source, error
            )
    mean = tuple(getattr(processor, "image_mean", None) or IMAGENET_DEFAULT_MEAN)
    std = tuple(getattr(processor, "image_std", None) or IMAGENET_DEFAULT_STD)
    size = image_size
    if size is None and processor is not None:
        crop = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
        crop = crop if isinstance(crop, dict) else dict(crop)
        size = crop.get("height") or crop.get("shortest_edge")
    if size is None:
        size = getattr(config, "image_size", None) or 224
    return int(size), mean, std, processor


# The released evaluation protocols resize the shorter side to 256 and center-crop 224.
EVAL_RESIZE, EVAL_CROP = 256, 224


def image_processor_at(processor_class: type, image_size: int, **kwargs):
    """`processor_class` for a model trained at `image_size` px: center crop `image_size` x `image_size` after
    resizing the shorter side to `round(image_size * 256 / 224)` (the releases' 256 / 224 evaluation ratio).

    Every folder a pretraining run or a converter writes gets its processor from here, so its crop size is the
    resolution the model was trained at (e.g. 56 px -> shortest_edge 64, crop 56; 224 -> 256, 224)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}.")
    size = {"shortest_edge": round(image_size * EVAL_RESIZE / EVAL_CROP)}
    crop_size = {"height": image_size, "width": image_size}
    return processor_class(**{"size": size, "crop_size": crop_size, **kwargs})
