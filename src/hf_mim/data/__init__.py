"""Data pieces: transforms with safe decoding, bundled real images, collators that draw masks."""

from .bundled import bundled_photo_dataset, bundled_photos
from .collators import PretrainingCollator, capi_collator, ijepa_collator
from .multicrop import (
    VICREGL_MEAN,
    VICREGL_STD,
    MultiCropCollator,
    MultiCropTransform,
    crop_location_grid,
    vicregl_color_pipeline,
)
from .segmentation import (
    SYNTHETIC_SEGMENTATION_LABELS,
    SegmentationExamples,
    SegmentationTransform,
    segmentation_collate,
    synthetic_segmentation_dataset,
    synthetic_segmentation_datasets,
)
from .transforms import SafeImageTransform, decode_image, pretraining_transform
from .two_view import CLIP_MEAN, CLIP_STD, TwoViewCollator, TwoViewCropTransform

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "MultiCropCollator",
    "MultiCropTransform",
    "PretrainingCollator",
    "SYNTHETIC_SEGMENTATION_LABELS",
    "SafeImageTransform",
    "SegmentationExamples",
    "SegmentationTransform",
    "TwoViewCollator",
    "TwoViewCropTransform",
    "VICREGL_MEAN",
    "VICREGL_STD",
    "bundled_photo_dataset",
    "bundled_photos",
    "capi_collator",
    "crop_location_grid",
    "decode_image",
    "ijepa_collator",
    "pretraining_transform",
    "segmentation_collate",
    "synthetic_segmentation_dataset",
    "synthetic_segmentation_datasets",
    "vicregl_color_pipeline",
]
