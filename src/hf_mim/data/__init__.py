"""Data pieces: transforms with safe decoding, bundled real images, collators that draw masks."""

from .bundled import bundled_photo_dataset, bundled_photos
from .collators import PretrainingCollator, mark_length_dynamic
from .labelled import ProcessedExamples
from .multicrop import (
    VICREGL_MEAN,
    VICREGL_STD,
    MultiCropCollator,
    MultiCropTransform,
    crop_location_grid,
    vicregl_color_pipeline,
)
from .positional import PositionalDataset, position_seed, seeded_rng
from .segmentation import (
    SYNTHETIC_SEGMENTATION_LABELS,
    SegmentationExamples,
    SegmentationTransform,
    segmentation_collate,
    segmentation_collator,
    synthetic_segmentation_dataset,
    synthetic_segmentation_datasets,
)
from .skipped import SkippedFiles, SkippedFilesTrainerMixin, SkippingCollator, readable_part
from .transforms import (
    DECODE_ERRORS,
    SafeImageTransform,
    decode_failure,
    decode_image,
    load_image,
    pretraining_transform,
    without_decoding,
)
from .two_view import CLIP_MEAN, CLIP_STD, TwoViewCollator, TwoViewCropTransform

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DECODE_ERRORS",
    "PositionalDataset",
    "ProcessedExamples",
    "SkippedFiles",
    "SkippedFilesTrainerMixin",
    "SkippingCollator",
    "decode_failure",
    "load_image",
    "position_seed",
    "readable_part",
    "seeded_rng",
    "segmentation_collator",
    "without_decoding",
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
    "mark_length_dynamic",
    "crop_location_grid",
    "decode_image",
    "pretraining_transform",
    "segmentation_collate",
    "synthetic_segmentation_dataset",
    "synthetic_segmentation_datasets",
    "vicregl_color_pipeline",
]
