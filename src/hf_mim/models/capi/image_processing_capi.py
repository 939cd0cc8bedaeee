"""CAPI image processor: bicubic resize of the shorter side to 256, center crop 224, ImageNet mean/std."""

from ...image_processing_utils import HfMimImageProcessor


class CapiImageProcessor(HfMimImageProcessor):
    """Eval transform of CAPI's classification protocol (`Resize(256, bicubic)`, `CenterCrop(224)`, ImageNet
    normalisation). Images smaller than one 14-pixel patch are rejected."""

    min_image_size = 14


__all__ = ["CapiImageProcessor"]
