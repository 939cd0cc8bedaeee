"""Image to patch-token embedding."""

import torch
from torch import nn


class PatchEmbeddings(nn.Module):
    """Non-overlapping patches projected by a strided convolution.

    Returns tokens in row-major order, shape (batch, grid_h * grid_w, hidden_size), and the grid size. Any input of
    at least one patch per side is accepted, as transformers' DINOv2 does: the grid is (H // patch, W // patch) and
    the bottom/right remainder that does not fill a patch is dropped by the strided convolution (a 250-px side with
    patch 14 gives 17 patches, the last 12 pixels unused). Models with relative or interpolated positions handle any
    grid; at the configured size nothing changes.
    """

    def __init__(self, patch_size: int, num_channels: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.projection = nn.Conv2d(num_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be (batch, channels, height, width), got shape {tuple(pixel_values.shape)}"
            )
        _, channels, height, width = pixel_values.shape
        if channels != self.num_channels:
            raise ValueError(
                f"pixel_values has {channels} channels but the model was configured with num_channels={self.num_channels}."
            )
        if height < self.patch_size or width < self.patch_size:
            raise ValueError(
                f"Input image size ({height}x{width}) is smaller than the patch size {self.patch_size}: each side "
                "needs at least one patch."
            )
        pixel_values = pixel_values.to(self.projection.weight.dtype)
        embeddings = self.projection(pixel_values)
        grid = (embeddings.shape[-2], embeddings.shape[-1])
        # (B, D, h, w) -> (B, h*w, D) made contiguous once here: a transposed view would otherwise be kept by every
        # `x + branch(x)` residual downstream (elementwise ops follow their first input's strides), costing copies
        # in every block.
        return embeddings.flatten(2).transpose(1, 2).contiguous(), grid
