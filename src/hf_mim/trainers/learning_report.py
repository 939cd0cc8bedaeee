"""The main job's evidence of learning: probe the backbone at initialisation and after training on both probes of
`hf_mim.evaluation.learning` (clean digits, transformed digits), print the table, write it as JSON, and draw the PCA
picture of patch features on bundled photos next to the exported model.

Used by `run_pretraining.run` (on by default when training on the embedded default data, `--learning_report`
turns it on or off). Rank 0 only. The probes and their k-NN are `evaluate_probes`, the code `run_knn.py` and
`benchmarks/benchmark_learning.py` call too.
"""

import json
import logging
from pathlib import Path

import torch

from ..data.bundled import bundled_photo
from ..evaluation.learning import (
    PROBE_K,
    PROBES,
    RAW_PIXELS,
    evaluate_probes,
    format_probe_tables,
    patch_feature_maps,
    pca_picture,
    probe_suite,
)
from ..image_processing_utils import image_processor_at

logger = logging.getLogger(__name__)
# Real photos with visible object parts (a face and suit, a cup on a saucer, a cat, a rocket on its pad), drawn at
# PICTURE_SCALE times the training resolution: at 56 px a tiny model's 8 x 8 patch grid shows no parts.
PICTURE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
PICTURE_SCALE = 4
BEFORE, AFTER = "initialisation", "trained"


class LearningReport:
    def __init__(self, image_processor_class, image_size: int):
        self.suite = probe_suite(image_processor_class, image_size)
        self.image_size = image_size
        picture_processor = image_processor_at(image_processor_class, PICTURE_SCALE * image_size)
        self.image_mean, self.image_std = picture_processor.image_mean, picture_processor.image_std
        photos = [bundled_photo(name) for name in PICTURE_PHOTOS]
        self._picture_pixels = picture_processor(images=photos, return_tensors="pt")["pixel_values"]
        self.before: dict | None = None
        self._initial_maps: torch.Tensor | None = None

    def start(self, backbone: torch.nn.Module) -> None:
        """Probe the untrained backbone (call before training, on the model the run will train)."""
        self.before = evaluate_probes(self.suite, {BEFORE: backbone})
        self._initial_maps = self._maps(backbone)

    def _maps(self, backbone) -> torch.Tensor | None:
        try:
            return patch_feature_maps(backbone, self._picture_pixels)
        except ValueError as error:  # a backbone without a feature map: the table still works
            logger.warning("No PCA picture: %s", error)
            return None

    def results(self, backbone: torch.nn.Module) -> dict[str, dict]:
        """{probe: {"raw_pixels", "initialisation", "trained"}}: the start's results and the trained backbone's."""
        after = evaluate_probes(self.suite, {AFTER: backbone})
        return {probe: {**self.before[probe], AFTER: after[probe][AFTER]} for probe in self.suite}

    def finish(self, backbone: torch.nn.Module, output_dir: Path, picture_dir: Path) -> str:
        """Probe the trained backbone; write `learning_report.json` to `output_dir` and `pca_features.png` to
        `picture_dir`; return the printed table."""
        results = self.results(backbone)
        title = (
            f"Learning report: weighted k-NN top-1 (k={PROBE_K}, cosine) of the frozen backbone on held-out digits, "
            "at initialisation and trained, next to raw pixels"
        )
        table = format_probe_tables(results, self.suite, title=title)
        report = {"image_size": self.image_size, "probes": results}
        (output_dir / "learning_report.json").write_text(json.dumps(report, indent=2) + "\n")
        trained_maps = self._maps(backbone)
        if trained_maps is not None and self._initial_maps is not None:
            picture = pca_picture(
                {BEFORE: self._initial_maps, AFTER: trained_maps},
                self._picture_pixels,
                self.image_mean,
                self.image_std,
                caption=picture_caption(results, PICTURE_SCALE * self.image_size),
            )
            picture.save(picture_dir / "pca_features.png")
            table += f"\nPCA picture of patch features (initialisation vs trained): {picture_dir / 'pca_features.png'}"
        return table


def picture_caption(results: dict[str, dict], picture_size: int) -> list[str]:
    """The PCA picture's caption: what it shows, and the k-NN figures of the run beside it."""
    lines = [
        f"Bundled photos at {picture_size} px. Colours: the first three principal components of each row's patch "
        "features, on one colour scale for both rows (grey = mean).",
    ]
    for probe, rows in results.items():
        lines.append(
            f"k-NN top-1 (pooled), {PROBES[probe].split(' (')[0]}: raw pixels {100 * rows[RAW_PIXELS]['knn_top1']:.1f} %,"
            f" initialisation {100 * rows[BEFORE]['pooled']['knn_top1']:.1f} %, "
            f"trained {100 * rows[AFTER]['pooled']['knn_top1']:.1f} %"
        )
    return lines
