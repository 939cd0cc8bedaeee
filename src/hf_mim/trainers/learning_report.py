"""The main job's evidence of learning: probe the backbone at initialisation and after training, print the table,
write it as JSON, and draw the PCA picture of patch features next to the exported model.

Used by `run_pretraining.run` (on by default when training on the embedded default data, `--learning_report`
turns it on or off). Rank 0 only; the probe is `hf_mim.evaluation.learning` (digits, k-NN, effective rank).
"""

import json
import logging
from pathlib import Path

import torch

from ..evaluation.learning import (
    digits_probe_data,
    format_learning_table,
    patch_feature_maps,
    pca_picture,
    probe_backbone,
    probe_raw_pixels,
)

logger = logging.getLogger(__name__)
PICTURE_IMAGES = 8  # test digits drawn in the PCA picture (two of each of the first four classes' first images)


class LearningReport:
    def __init__(self, image_processor_class, image_size: int):
        self.data = digits_probe_data(image_processor_class, image_size)
        self.processor = image_processor_class()
        self.before: dict | None = None
        self._initial_maps: torch.Tensor | None = None
        self._picture_pixels = self._pick_picture_images()

    def _pick_picture_images(self) -> torch.Tensor:
        labels = self.data.test_labels
        chosen = [int(torch.nonzero(labels == digit)[0]) for digit in range(min(PICTURE_IMAGES, 10))]
        return self.data.test_pixels[chosen]

    def start(self, backbone: torch.nn.Module) -> None:
        """Probe the untrained backbone (call before training, on the model the run will train)."""
        self.before = probe_backbone(backbone, self.data)
        self._initial_maps = self._maps(backbone)

    def _maps(self, backbone) -> torch.Tensor | None:
        try:
            return patch_feature_maps(backbone, self._picture_pixels)
        except ValueError as error:  # a backbone without a feature map: the table still works
            logger.warning("No PCA picture: %s", error)
            return None

    def finish(self, backbone: torch.nn.Module, output_dir: Path, picture_dir: Path) -> str:
        """Probe the trained backbone; write `learning_report.json` to `output_dir` and `pca_features.png` to
        `picture_dir`; return the printed table."""
        after = probe_backbone(backbone, self.data)
        raw = probe_raw_pixels(self.data)
        title = (
            f"Learning report: k-NN top-1 (k=20) on held-out scikit-learn digits ({len(self.data.test_labels)} test / "
            f"{len(self.data.train_labels)} train images, {self.data.image_size} px), frozen backbone"
        )
        table = format_learning_table(self.before, after, raw, title=title)
        report = {"before": self.before, "after": after, "raw_pixels": raw, "image_size": self.data.image_size}
        (output_dir / "learning_report.json").write_text(json.dumps(report, indent=2) + "\n")
        trained_maps = self._maps(backbone)
        if trained_maps is not None and self._initial_maps is not None:
            picture = pca_picture(
                {"initialisation": self._initial_maps, "trained": trained_maps},
                self._picture_pixels,
                self.processor.image_mean,
                self.processor.image_std,
            )
            picture.save(picture_dir / "pca_features.png")
            table += f"\nPCA picture of patch features (initialisation vs trained): {picture_dir / 'pca_features.png'}"
        return table
