"""CAPI image processor: bicubic resize of the shorter side to 256, center crop 224, ImageNet mean/std."""

from transformers.processing_utils import Unpack

from ...image_processing_utils import HfMimImageProcessor, HfMimImagesKwargs


class CapiImageProcessorKwargs(HfMimImagesKwargs, total=False):
    """Keyword arguments of `CapiImageProcessor`: transformers' `ImagesKwargs` plus `min_image_size` (see
    `HfMimImagesKwargs`); CAPI adds none of its own."""


class CapiImageProcessor(HfMimImageProcessor):
    """Eval transform of CAPI's classification protocol (`Resize(256, bicubic)`, `CenterCrop(224)`, ImageNet
    normalisation). Images smaller than one 14-pixel patch are rejected.

    With `do_convert_rgb=False` the images keep their own channels, for a `CapiConfig(num_channels=...)` other than 3;
    `image_mean` / `image_std` must then have one entry per channel (or be one float), see `HfMimImageProcessor`."""

    valid_kwargs = CapiImageProcessorKwargs
    min_image_size = 14

    def __init__(self, **kwargs: Unpack[CapiImageProcessorKwargs]):
        super().__init__(**kwargs)


__all__ = ["CapiImageProcessor", "CapiImageProcessorKwargs"]
