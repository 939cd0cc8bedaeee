"""Fine-tuning data: decode (`hf_mim.data.transforms.decode_image`), transform and label a batch of examples, with
unreadable files marked for skipping (`hf_mim.data.skipped`) instead of crashing the run."""

import torch

from ..data.skipped import SkippingCollator
from ..data.transforms import DECODE_ERRORS, decode_failure, decode_image

IGNORE_LABEL = -100  # torch's cross-entropy ignore_index: unreadable examples' placeholder label


class ClassificationExamples:
    """`Dataset.with_transform` function: image -> "pixel_values" (`transform` of the decoded RGB image), label ->
    "labels" (through `label2id` when given, for labels that are not class indices).

    An unreadable image (one of `DECODE_ERRORS`, truncated files included) gives `pixel_values` None and
    `skipped_file` (name, error); `classification_collator` turns it into a placeholder that the trainer drops.
    Cast the image column with `hf_mim.data.transforms.without_decoding` first, so that `datasets` hands the files
    over undecoded."""

    def __init__(self, transform, image_column: str = "image", label_column: str = "label", label2id=None):
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column
        self.label2id = label2id

    def __call__(self, examples: dict) -> dict:
        labels = examples[self.label_column]
        if self.label2id is not None:
            labels = [self.label2id[str(label)] for label in labels]
        pixel_values, skipped = [], []
        for value in examples[self.image_column]:
            try:
                pixel_values.append(self.transform(decode_image(value)))
                skipped.append(None)
            except DECODE_ERRORS as error:
                pixel_values.append(None)
                skipped.append(decode_failure(value, error))
        return {"pixel_values": pixel_values, "labels": labels, "skipped_file": skipped}


def classification_collator(image_size: int | tuple[int, int], num_channels: int = 3) -> SkippingCollator:
    """Stacks "pixel_values" (B, C, H, W) and "labels" (B,) int64; an unreadable example becomes a zero image with
    label -100 (ignored) and is reported in `skipped_files` (see `hf_mim.data.skipped.SkippingCollator`)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    placeholders = {"pixel_values": torch.zeros(num_channels, height, width), "labels": IGNORE_LABEL}
    return SkippingCollator(placeholders)


__all__ = ["IGNORE_LABEL", "ClassificationExamples", "classification_collator"]
