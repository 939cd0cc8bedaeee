"""I-JEPA image processor: bicubic resize of the shorter side + center crop, ImageNet mean/std (what I-JEPA was
trained and evaluated with; transformers' Hub conversions used mean = std = 0.5 instead)."""

from transformers.processing_utils import Unpack

from ...image_processing_utils import HfMimImageProcessor, HfMimImagesKwargs


class IJepaImageProcessorKwargs(HfMimImagesKwargs, total=False):
    """Keyword arguments of `IJepaImageProcessor`: transformers' `ImagesKwargs` plus `min_image_size` (see
    `HfMimImagesKwargs`); I-JEPA adds none of its own."""


class IJepaImageProcessor(HfMimImageProcessor):
    """I-JEPA's eval transform (`Resize(256, bicubic)`, `CenterCrop(224)`, ImageNet normalisation). Images smaller
    than one 14-pixel patch are rejected.

    With `do_convert_rgb=False` the images keep their own channels, for an `IJepaConfig(num_channels=...)` other than
    3; `image_mean` / `image_std` must then have one entry per channel (or be one float), see `HfMimImageProcessor`."""

    valid_kwargs = IJepaImageProcessorKwargs
    min_image_size = 14

    def __init__(self, **kwargs: Unpack[IJepaImageProcessorKwargs]):
        super().__init__(**kwargs)


__all__ = ["IJepaImageProcessor", "IJepaImageProcessorKwargs"]
