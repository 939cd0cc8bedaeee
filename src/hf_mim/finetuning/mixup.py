"""Mixup / CutMix with label smoothing, batch mode (the MAE / I-JEPA fine-tuning recipe, timm's semantics).

One mixing coefficient per batch: with probability `prob` the batch is mixed - by CutMix with probability
`switch_prob` (when both are enabled), else by Mixup - with the batch flipped along its first dimension (image `i`
mixes with image `B - 1 - i`). CutMix pastes one box of the flipped batch and corrects lambda to the pasted area.
Targets are label-smoothed one-hot vectors mixed with the same lambda, so every row sums to 1.
"""

import math

import numpy as np
import torch


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B,) integer labels -> (B, C) float targets: `1 - smoothing + smoothing / C` on the label, `smoothing / C`
    elsewhere (the convention of timm and of `torch.nn.functional.cross_entropy(label_smoothing=...)`)."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must lie in [0, 1), got {smoothing}")
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, dtype=torch.float32, device=labels.device)
    return targets.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def cutmix_box(
    height: int, width: int, lam: float, rng: np.random.Generator
) -> tuple[tuple[int, int, int, int], float]:
    """A box covering about `1 - lam` of the image, centred uniformly at random and clipped to the borders.
    Returns ((top, bottom, left, right), corrected lambda = 1 - box area / image area)."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
    left, right = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
    corrected = 1.0 - (bottom - top) * (right - left) / float(height * width)
    return (top, bottom, left, right), corrected


class MixupCutmix:
    """Batch-mode Mixup / CutMix: `mix(pixel_values, labels) -> (mixed pixel_values, (B, C) soft targets)`.

    Args:
        mixup_alpha: Beta(alpha, alpha) parameter of Mixup; 0 disables Mixup.
        cutmix_alpha: Beta(alpha, alpha) parameter of CutMix; 0 disables CutMix.
        prob: probability that a batch is mixed at all (otherwise lambda = 1: only label smoothing).
        switch_prob: probability of CutMix rather than Mixup when both are enabled.
        label_smoothing: smoothing of the one-hot targets before mixing.
        num_classes: number of classes of the targets.

    Randomness comes from `generator` when given (a `torch.Generator`), else from torch's global RNG, so
    `torch.manual_seed` makes it reproducible. After each call, `last_lambda`, `last_mode` ("mixup", "cutmix" or
    None) and `last_box` ((top, bottom, left, right) for CutMix) describe what was done.
    """

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        num_classes: int = 1000,
    ):
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError("mixup_alpha and cutmix_alpha must be >= 0")
        if not 0.0 <= prob <= 1.0 or not 0.0 <= switch_prob <= 1.0:
            raise ValueError("prob and switch_prob must lie in [0, 1]")
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes
        self.last_lambda: float = 1.0
        self.last_mode: str | None = None
        self.last_box: tuple[int, int, int, int] | None = None

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def _numpy_rng(self, generator: torch.Generator | None) -> np.random.Generator:
        seed = torch.randint(0, 2**62, (1,), generator=generator).item()
        return np.random.default_rng(seed)

    def sample(self, generator: torch.Generator | None = None) -> tuple[float, str | None, np.random.Generator]:
        """Draw (lambda, mode) for one batch; mode is None when the batch is left unmixed."""
        rng = self._numpy_rng(generator)
        if not self.enabled or rng.random() >= self.prob:
            return 1.0, None, rng
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = rng.random() < self.switch_prob
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(rng.beta(alpha, alpha)), ("cutmix" if use_cutmix else "mixup"), rng

    def __call__(
        self, pixel_values: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if labels.ndim != 1:
            raise ValueError(f"labels must be a (B,) tensor of class indices, got shape {tuple(labels.shape)}")
        lam, mode, rng = self.sample(generator)
        box = None
        mixed = pixel_values
        if mode == "mixup":
            mixed = pixel_values * lam + pixel_values.flip(0) * (1.0 - lam)
        elif mode == "cutmix":
            box, lam = cutmix_box(pixel_values.shape[-2], pixel_values.shape[-1], lam, rng)
            top, bottom, left, right = box
            mixed = pixel_values.clone()
            mixed[..., top:bottom, left:right] = pixel_values.flip(0)[..., top:bottom, left:right]
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        targets = targets * lam + targets.flip(0) * (1.0 - lam)
        self.last_lambda, self.last_mode, self.last_box = lam, mode, box
        return mixed, targets.to(pixel_values.device)


__all__ = ["MixupCutmix", "cutmix_box", "smooth_one_hot"]
