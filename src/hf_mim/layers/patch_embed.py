"""Image to patch-token embedding."""

import torch
from torch import nn


class PatchEmbeddings(nn.Module):
    """Non-overlapping patches projected by a strided convolution.

    Returns tokens in row-major order, shape (batch, grid_h * grid_w, hidden_size), and the grid size. Any input whose
    height and width are multiples of the patch size is accepted (no resizing, no padding): models with relative or
    interpolated positions handle the grid.
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
        if height % self.patch_size or width % self.patch_size or height == 0 or width == 0:
            raise ValueError(
                f"Input image size ({height}x{width}) must be a non-zero multiple of the patch size {self.patch_size}."
            )
        pixel_values = pixel_values.to(self.projection.weight.dtype)
        embeddings = self.projection(pixel_values)
        grid = (embeddings.shape[-2], embeddings.shape[-1])
        # (B, D, h, w) -> (B, h*w, D) made contiguous once here: a transposed view would otherwise be kept by every
        # `x + branch(x)` residual downstream (elementwise ops follow their first input's strides), costing copies
        # in every block.
        return embeddings.flatten(2).transpose(1, 2).contiguous(), grid
