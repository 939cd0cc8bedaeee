"""I-JEPA image processor: bicubic resize of the shorter side + center crop, ImageNet mean/std (what I-JEPA was
trained and evaluated with; transformers' Hub conversions used mean = std = 0.5 instead)."""

from ...image_processing_utils import HfMimImageProcessor


class IJepaImageProcessor(HfMimImageProcessor):
    min_image_size = 14


__all__ = ["IJepaImageProcessor"]
