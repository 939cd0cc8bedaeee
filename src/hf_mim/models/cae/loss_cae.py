"""CAE's objectives. v1: cross-entropy of the decoder's token logits against the DALL-E tokenizer's ids of the
masked patches, plus the weighted alignment MSE between the regressor's masked predictions and the encoder's own
(gradient-free) latents of those patches. v2: mean cosine distance between the L2-normalised head outputs and the
CLIP teacher's features, at [cls, visible, masked].

Precision: both run in float32 under half precision (as the original's `.float()`), in float64 for a float64 model,
with autocast off (`runs_in_float32`).
"""

import torch
import torch.nn.functional as F

from ...losses import runs_in_float32


@runs_in_float32
def v1_losses(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    predictions: torch.Tensor,
    latent_targets: torch.Tensor,
    alignment_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy on the masked patches' token ids, `alignment_weight` x alignment MSE)."""
    return F.cross_entropy(logits, token_ids), alignment_weight * F.mse_loss(predictions, latent_targets)


@runs_in_float32
def v2_cosine_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(prediction, target) for unit-length `predictions` (the L2-normalised logits): their dot
    product with the L2-normalised targets. `F.cosine_similarity` would divide both by their norms again, which took
    2.4 of the loss's 5.2 ms (forward + backward) in a v2 step of benchmarks/benchmark_cae.py."""
    return (1 - (predictions * F.normalize(targets, dim=-1)).sum(dim=-1)).mean()
