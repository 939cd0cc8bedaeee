"""Data pieces: transforms with safe decoding, bundled real images, collators that draw masks."""

from .bundled import bundled_photo_dataset, bundled_photos
from .collators import PretrainingCollator, capi_collator, ijepa_collator
from .transforms import SafeImageTransform, decode_image, pretraining_transform

__all__ = [
    "PretrainingCollator",
    "SafeImageTransform",
    "bundled_photo_dataset",
    "bundled_photos",
    "capi_collator",
    "decode_image",
    "ijepa_collator",
    "pretraining_transform",
]
