"""VICRegL image processor: the linear evaluation's transform (resize the shorter side to 256, bilinear; center crop
224; ImageNet mean/std)."""

from transformers.image_utils import PILImageResampling
from transformers.processing_utils import Unpack

from ...image_processing_utils import HfMimImageProcessor, HfMimImagesKwargs


class VicreglImageProcessorKwargs(HfMimImagesKwargs, total=False):
    """Keyword arguments of `VicreglImageProcessor`: transformers' `ImagesKwargs` plus `min_image_size` (see
    `HfMimImagesKwargs`); VICRegL adds none of its own."""


class VicreglImageProcessor(HfMimImageProcessor):
    """`Resize(256)` (torchvision's default bilinear), `CenterCrop(224)`, ImageNet mean/std (0.229 - VICRegL's
    pretraining crops use 0.228, a typo of the original kept by `hf_mim.data.MultiCropTransform`). Images smaller than
    32 px (the backbones' total stride) are rejected.

    With `do_convert_rgb=False` the images keep their own channels, for a `VicreglConfig(num_channels=...)` other than
    3; `image_mean` / `image_std` must then have one entry per channel (or be one float)."""

    valid_kwargs = VicreglImageProcessorKwargs
    resample = PILImageResampling.BILINEAR
    min_image_size = 32

    def __init__(self, **kwargs: Unpack[VicreglImageProcessorKwargs]):
        super().__init__(**kwargs)


__all__ = ["VicreglImageProcessor", "VicreglImageProcessorKwargs"]
