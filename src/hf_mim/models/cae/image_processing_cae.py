"""CAE image processor: bicubic resize of the shorter side to 256, center crop 224, ImageNet mean/std (every CAE
evaluation protocol)."""

from transformers.processing_utils import Unpack

from ...image_processing_utils import HfMimImageProcessor, HfMimImagesKwargs


class CaeImageProcessorKwargs(HfMimImagesKwargs, total=False):
    """Keyword arguments of `CaeImageProcessor`: transformers' `ImagesKwargs` plus `min_image_size`."""


class CaeImageProcessor(HfMimImageProcessor):
    """`Resize(256, bicubic)`, `CenterCrop(224)`, ImageNet normalisation (the official scripts all pass
    `--imagenet_default_mean_and_std`). Images smaller than one 16-pixel patch are rejected."""

    valid_kwargs = CaeImageProcessorKwargs
    min_image_size = 16

    def __init__(self, **kwargs: Unpack[CaeImageProcessorKwargs]):
        super().__init__(**kwargs)


__all__ = ["CaeImageProcessor", "CaeImageProcessorKwargs"]
