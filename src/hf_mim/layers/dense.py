"""Dense (per-patch) features of the ViT encoders: tokens -> spatial maps, and the multi-scale adapter that turns four
same-resolution maps into a pyramid for FPN / UperNet heads. Shared by `CapiBackbone`, `IJepaBackbone` and
`CaeBackbone`."""

import math
from collections.abc import Sequence

import torch
from torch import nn
from transformers import initialization as init


def tokens_to_feature_map(tokens: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 0) -> torch.Tensor:
    """(B, num_prefix_tokens + h * w, D) tokens, patches in row-major order after any prefix (cls token, registers)
    -> (B, D, h, w)."""
    patches = tokens[:, num_prefix_tokens:]
    height, width = grid
    if patches.shape[1] != height * width:
        raise ValueError(
            f"{patches.shape[1]} patch tokens (after {num_prefix_tokens} prefix tokens) do not fill a {height}x{width} "
            "grid."
        )
    return patches.reshape(patches.shape[0], height, width, patches.shape[-1]).permute(0, 3, 1, 2).contiguous()


class MultiScaleAdapter(nn.Module):
    """The FPN adapters of BEiT / CAE segmentation backbones (the CAE paper's UperNet protocol on ADE20K), one per map:

    * `fpn1`: ConvTranspose2d(2x2, stride 2) -> BatchNorm2d -> GELU -> ConvTranspose2d(2x2, stride 2): 4x the grid
    * `fpn2`: ConvTranspose2d(2x2, stride 2): 2x
    * `fpn3`: identity: 1x
    * `fpn4`: MaxPool2d(2): 1/2x

    so four (B, D, h, w) maps become strides patch/4, patch/2, patch and 2 * patch pixels. The original uses
    SyncBatchNorm; convert with `torch.nn.SyncBatchNorm.convert_sync_batchnorm` for multi-GPU training.
    """

    scales = (4.0, 2.0, 1.0, 0.5)

    def __init__(self, hidden_size: int, batch_norm_eps: float = 1e-5):
        super().__init__()
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(hidden_size, hidden_size, kernel_size=2, stride=2),
            nn.BatchNorm2d(hidden_size, eps=batch_norm_eps),
            nn.GELU(),
            nn.ConvTranspose2d(hidden_size, hidden_size, kernel_size=2, stride=2),
        )
        self.fpn2 = nn.ConvTranspose2d(hidden_size, hidden_size, kernel_size=2, stride=2)
        self.fpn3 = nn.Identity()
        self.fpn4 = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(feature_maps) != 4:
            raise ValueError(f"MultiScaleAdapter takes exactly 4 feature maps, got {len(feature_maps)}.")
        return tuple(op(x) for op, x in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), feature_maps, strict=True))

    @staticmethod
    @torch.no_grad()
    def init_module(module: nn.Module) -> bool:
        """Initialise one of the adapter's layers as PyTorch does by default (what the original adapters keep),
        through transformers' init functions so weights loaded from a checkpoint are left alone. Returns whether
        `module` was one (a model's `_init_weights` calls this per module: transformers may skip modules without
        parameters of their own, such as the adapter itself)."""
        if isinstance(module, nn.ConvTranspose2d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.weight.shape[1] * math.prod(module.kernel_size))  # fan_in
            init.uniform_(module.bias, -bound, bound)
            return True
        if isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
            return True
        return False


__all__ = ["MultiScaleAdapter", "tokens_to_feature_map"]
