"""I-JEPA's objective: the predictor's outputs regress the target encoder's tokens, after a parameter-free LayerNorm,
at every target block's positions (smooth-L1 as the paper, or L2).

Precision: both run in float32 under mixed precision (`runs_in_float32`: autocast off, half-precision inputs
up-cast); CPU autocast would keep the LayerNorm in bfloat16 (README, "Mixed precision": the 50-step bf16 loss curve
went from 2.6e-3 to 1.2e-3 off float32's with this guard).
"""

import torch
from torch import nn

from ...losses import runs_in_float32


@runs_in_float32
def target_norm(tokens: torch.Tensor) -> torch.Tensor:
    """The parameter-free LayerNorm of the target encoder's output."""
    return nn.functional.layer_norm(tokens, (tokens.shape[-1],))


@runs_in_float32
def prediction_loss(predictions: torch.Tensor, targets: torch.Tensor, loss_type: str) -> torch.Tensor:
    """Smooth-L1 (`loss_type="smooth_l1"`, else L2) averaged over every element."""
    if loss_type == "smooth_l1":
        return nn.functional.smooth_l1_loss(predictions, targets)
    return nn.functional.mse_loss(predictions, targets)
