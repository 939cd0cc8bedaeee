"""Shared image-processor base: transformers' torchvision backend plus the input hygiene every hf_mim model needs.

Real-world images come as grayscale, palette, RGBA/LA, 16-bit PNGs, bool masks or tiny thumbnails. This base turns
all of those into 8-bit RGB before the usual resize / crop / normalise pipeline, and rejects with a clear message
what cannot be processed meaningfully (an image smaller than `min_image_size`, empty arrays, unknown dtypes).
"""

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
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


class HfMimImageProcessor(TorchvisionBackend):
    """Resize (shortest edge) + center crop + ImageNet normalisation, torchvision-backed, with robust input handling.

    Accepts PIL images of any mode, numpy arrays and torch tensors (HWC or CHW, 1/3/4 channels, uint8, uint16, bool
    or float in [0, 1] with `do_rescale=False`); every integer image is first turned into 8-bit RGB.
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
            image = _pil_to_rgb_array(image)
            input_data_format = "channels_last"
        elif isinstance(image, np.ndarray) and not np.issubdtype(image.dtype, np.floating):
            image = _integer_array_to_uint8(image)
        elif isinstance(image, torch.Tensor) and not image.is_floating_point():
            image = torch.from_numpy(_integer_array_to_uint8(image.cpu().numpy()))
        if getattr(image, "size", 1) == 0 or (hasattr(image, "numel") and image.numel() == 0):
            raise ValueError("Received an empty image.")
        tensor = super().process_image(
            image, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, device=device, **kwargs
        )
        if tensor.shape[0] not in (1, 3):
            raise ValueError(f"Expected a 1-, 3- or 4-channel image, got {tensor.shape[0]} channels.")
        if tensor.shape[0] == 1:
            tensor = tensor.expand(3, -1, -1).contiguous()
        height, width = tensor.shape[-2:]
        min_size = self.min_image_size or 1
        if height < min_size or width < min_size:
            raise ValueError(
                f"Image of size {height}x{width} is smaller than the minimum {min_size}x{min_size} "
                f"({type(self).__name__}.min_image_size, one patch); upsample it or drop it."
            )
        return tensor
