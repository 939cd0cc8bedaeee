"""Objective pieces shared across methods, distributed-aware: Sinkhorn-Knopp and soft-target cross-entropy."""

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_(tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce across ranks when running distributed; a no-op otherwise."""
    if _distributed():
        dist.all_reduce(tensor, op=op)
    return tensor


# exp(x - max + offset): the offset keeps the largest value near e^50 (0 for fp16, whose range is small).
_EXP_OFFSET = {torch.float16: 0.0, torch.bfloat16: 50.0, torch.float32: 50.0, torch.float64: 50.0}


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, num_iterations: int = 3, eps: float = 1e-8) -> torch.Tensor:
    """Sinkhorn-Knopp as CAPI runs it on (..., samples, prototypes) scores (already divided by the temperature).

    The "column" step normalises over the sample axis (dim -2) summed over **all ranks**, the "row" step over
    prototypes, `num_iterations` times; the result's rows sum to 1. The max used for the stable exponential is also
    all-reduced, so every rank computes exactly what one process would on the global batch.
    """
    scores = scores.clone()
    shift = scores.max(dim=-2, keepdim=True).values
    all_reduce_(shift, dist.ReduceOp.MAX)
    scores += _EXP_OFFSET[scores.dtype] - shift
    assignments = scores.exp()
    for _ in range(num_iterations):
        assignments /= all_reduce_(assignments.sum(dim=-2, keepdim=True)) + eps
        assignments /= assignments.sum(dim=-1, keepdim=True) + eps
    return assignments


def soft_cross_entropy(targets: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row -sum_k q_k log softmax(logits / T)_k, computed in float32 at least."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return -(targets.to(logits.dtype) * torch.log_softmax(logits / temperature, dim=-1)).sum(dim=-1)


def effective_rank(features: torch.Tensor) -> torch.Tensor:
    """exp(entropy of the normalised singular values) of centred (n, d) features: d for isotropic, 1 for collapse."""
    features = features.float()
    features = features - features.mean(dim=0, keepdim=True)
    singular = torch.linalg.svdvals(features)
    p = singular / singular.sum().clamp_min(1e-12)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
