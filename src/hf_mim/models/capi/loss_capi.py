"""CAPI's objective: Sinkhorn-Knopp soft cluster assignments of the teacher's patch tokens are the targets; the
clustering head learns to predict them from its own logits, and the student's prediction head predicts them at the
masked positions.

Both losses are soft cross-entropies (`hf_mim.losses.soft_cross_entropy`, as the Sinkhorn, in float32 with autocast
off under mixed precision). They have disjoint gradients (the clustering head's logits come from the teacher's
tokens, which carry none), so one backward of their sum equals the original's two backward passes.
"""

import torch

from ...losses import sinkhorn_knopp, soft_cross_entropy


def sinkhorn_targets(logits: torch.Tensor, iterations: int, temperature: float, positionwise: bool) -> torch.Tensor:
    """Soft assignments (positions, batch, K), without gradient, of the clustering logits (positions, batch, K):
    Sinkhorn-Knopp on `logits / temperature` per position (`positionwise`) or over every token at once. The
    division happens inside the Sinkhorn, on the fly: its result is the only new (tokens, K) tensor."""
    scores = logits.detach()
    if positionwise:
        return sinkhorn_knopp(scores, iterations, temperature=temperature)
    flat = sinkhorn_knopp(scores.flatten(0, -2), iterations, temperature=temperature)
    return flat.unflatten(0, logits.shape[:-1])


def clustering_loss(assignments: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The clustering head's loss: its own logits (at `temperature`) against the Sinkhorn assignments, averaged
    over every token."""
    return soft_cross_entropy(assignments.flatten(0, -2), logits.flatten(0, -2), temperature).mean()


def student_loss(targets: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of the student's prediction-head logits (n, K) against the teacher's assignments (n, K) at the
    predicted positions, averaged through a float64 sum as CAPI does."""
    per_token = soft_cross_entropy(targets, student_logits, temperature)
    return (per_token.double().sum() / per_token.shape[0]).to(per_token.dtype)


def target_entropy(targets: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the Sinkhorn targets, a logged diagnostic: collapse shows as a drop."""
    with torch.no_grad():
        return -(targets * torch.log(targets.clamp_min(1e-30))).sum(-1).mean()
