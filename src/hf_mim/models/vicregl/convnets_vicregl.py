"""VICRegL's two convolutional backbones, owned here but with the module names of transformers' `ResNetModel` and
`ConvNextModel`, so their state dicts are interchangeable key for key (and, through the converter, with the original
`resnet.py` / `convnext.py`).

* ResNet: torchvision's v1.5 bottleneck ResNet (stride in the 3x3 conv), what VICRegL trains; ReLU after each
  block, so the last map is post-ReLU as VICRegL's `maps`.
* ConvNeXt: 4x4 stem + channels-first LayerNorm, blocks (7x7 depthwise -> LN -> 4x MLP with exact GELU ->
  optional layer scale -> drop path), LN + 2x2 stride-2 conv between stages. VICRegL trains without layer scale.

Each `forward(pixel_values, output_hidden_states)` returns the last map (B, C, h, w) and, when asked, the stem output
followed by every stage output (transformers' `hidden_states` convention).
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from ...layers import DropPath, drop_path_schedule
from .configuration_vicregl import VicreglConfig

# ConvNeXt's stem, block and downsampling LayerNorms use 1e-6 in the original and in transformers, whatever
# `layer_norm_eps` (which only sets the final norm) says.
CONVNEXT_INNER_EPS = 1e-6


class StagedEncoder(nn.Module):
    """`stages` run in order; returns the last map and, when asked, the input followed by every stage output."""

    stages: nn.ModuleList

    def forward(self, hidden: torch.Tensor, output_hidden_states: bool = False):
        states = (hidden,) if output_hidden_states else None
        for stage in self.stages:
            hidden = stage(hidden)
            if output_hidden_states:
                states += (hidden,)
        return hidden, states


# --------------------------------------------------------------------------------------------------- ResNet
class ReplaySafeBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that folds each training batch into its running statistics once, also under gradient
    checkpointing.

    Checkpointing replays a block's forward inside backward; a plain BatchNorm would then update `running_mean`,
    `running_var` and `num_batches_tracked` a second time with the same batch (measured: the counter doubles and the
    statistics drift). In that replay this normalises with the batch statistics, as training mode does, and updates
    throwaway copies of the running statistics (the same op, so the replay saves what the first pass saved, as
    non-reentrant checkpointing checks). `nn.SyncBatchNorm.convert_sync_batchnorm` turns it into a plain SyncBatchNorm.
    Under torch.compile the check is skipped: `_current_graph_task_id` cannot be traced (a graph break in every block,
    then an autograd version error), and the compiled graph's forward updates the statistics once.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        replay = not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1
        if self.training and self.track_running_stats and replay:
            mean, var = self.running_mean.clone(), self.running_var.clone()
            return F.batch_norm(x, mean, var, self.weight, self.bias, True, self.momentum or 0.0, self.eps)
        return super().forward(x)


class ResNetConvLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, act: bool = True):
        super().__init__()
        self.convolution = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        )
        self.normalization = ReplaySafeBatchNorm2d(out_channels)
        self.activation = nn.ReLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.normalization(self.convolution(x)))


class ResNetShortCut(nn.Module):
    """1x1 conv + BN on the residual path where the width or the resolution changes (torchvision's `downsample`)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.convolution = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        self.normalization = ReplaySafeBatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalization(self.convolution(x))


class ResNetBottleNeckLayer(GradientCheckpointingLayer):
    """1x1 reduce (width out/4) -> 3x3 (stride here, v1.5) -> 1x1 expand (no activation) + shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, downsample_in_bottleneck: bool):
        super().__init__()
        inner = out_channels // 4
        needs_shortcut = in_channels != out_channels or stride != 1
        self.shortcut = ResNetShortCut(in_channels, out_channels, stride) if needs_shortcut else nn.Identity()
        first_stride, middle_stride = (stride, 1) if downsample_in_bottleneck else (1, stride)
        self.layer = nn.Sequential(
            ResNetConvLayer(in_channels, inner, kernel_size=1, stride=first_stride),
            ResNetConvLayer(inner, inner, stride=middle_stride),
            ResNetConvLayer(inner, out_channels, kernel_size=1, act=False),
        )
        self.layer[2].normalization.is_last_block_norm = True  # zero-initialised with config.zero_init_residual
        self.activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.layer(x) + self.shortcut(x))


class ResNetStage(nn.Module):
    def __init__(self, config: VicreglConfig, in_channels: int, out_channels: int, stride: int, depth: int):
        super().__init__()
        flag = config.downsample_in_bottleneck
        self.layers = nn.Sequential(
            ResNetBottleNeckLayer(in_channels, out_channels, stride, flag),
            *[ResNetBottleNeckLayer(out_channels, out_channels, 1, flag) for _ in range(depth - 1)],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ResNetEmbeddings(nn.Module):
    """7x7 stride-2 conv + BN + ReLU, 3x3 stride-2 max pool (VICRegL's explicit 1-pixel zero pad + conv padding 2
    equals this padding of 3)."""

    def __init__(self, config: VicreglConfig):
        super().__init__()
        self.embedder = ResNetConvLayer(config.num_channels, config.embedding_size, kernel_size=7, stride=2)
        self.pooler = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.pooler(self.embedder(pixel_values))


class ResNetEncoder(StagedEncoder):
    def __init__(self, config: VicreglConfig):
        super().__init__()
        widths = [config.embedding_size, *config.hidden_sizes]
        self.stages = nn.ModuleList(
            ResNetStage(config, widths[i], widths[i + 1], 2 if i > 0 or config.downsample_in_first_stage else 1, d)
            for i, d in enumerate(config.depths)
        )


# --------------------------------------------------------------------------------------------------- ConvNeXt
class ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map (biased variance, eps inside the square root, as the
    original's hand-written channels-first norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNextEmbeddings(nn.Module):
    def __init__(self, config: VicreglConfig):
        super().__init__()
        width = config.hidden_sizes[0]
        self.patch_embeddings = nn.Conv2d(
            config.num_channels, width, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.layernorm = ChannelsFirstLayerNorm(width, eps=CONVNEXT_INNER_EPS)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layernorm(self.patch_embeddings(pixel_values))


class ConvNextLayer(GradientCheckpointingLayer):
    def __init__(self, config: VicreglConfig, width: int, drop_path: float):
        super().__init__()
        self.dwconv = nn.Conv2d(width, width, kernel_size=7, padding=3, groups=width)
        self.layernorm = nn.LayerNorm(width, eps=CONVNEXT_INNER_EPS)
        self.pwconv1 = nn.Linear(width, 4 * width)
        self.act = nn.GELU() if config.hidden_act == "gelu" else nn.ReLU()
        self.pwconv2 = nn.Linear(4 * width, width)
        scale = config.layer_scale_init_value
        self.layer_scale_parameter = nn.Parameter(scale * torch.ones(width)) if scale > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.dwconv(x).permute(0, 2, 3, 1)
        branch = self.pwconv2(self.act(self.pwconv1(self.layernorm(branch))))
        if self.layer_scale_parameter is not None:
            branch = self.layer_scale_parameter * branch
        return x + self.drop_path(branch.permute(0, 3, 1, 2))


class ConvNextStage(nn.Module):
    def __init__(self, config: VicreglConfig, in_channels: int, out_channels: int, stride: int, rates: list[float]):
        super().__init__()
        if in_channels != out_channels or stride > 1:
            self.downsampling_layer = nn.Sequential(
                ChannelsFirstLayerNorm(in_channels, eps=CONVNEXT_INNER_EPS),
                nn.Conv2d(in_channels, out_channels, kernel_size=stride, stride=stride),
            )
        else:
            self.downsampling_layer = nn.Identity()
        self.layers = nn.Sequential(*[ConvNextLayer(config, out_channels, rate) for rate in rates])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.downsampling_layer(x))


class ConvNextEncoder(StagedEncoder):
    def __init__(self, config: VicreglConfig):
        super().__init__()
        rates = drop_path_schedule(config.drop_path_rate, sum(config.depths))  # linear over all blocks
        widths = [config.hidden_sizes[0], *config.hidden_sizes]
        stages, start = [], 0
        for i, depth in enumerate(config.depths):
            stride = 2 if i > 0 else 1
            stages.append(ConvNextStage(config, widths[i], widths[i + 1], stride, rates[start : start + depth]))
            start += depth
        self.stages = nn.ModuleList(stages)


__all__ = [
    "ChannelsFirstLayerNorm",
    "ConvNextEmbeddings",
    "ConvNextEncoder",
    "ConvNextLayer",
    "ResNetBottleNeckLayer",
    "ResNetConvLayer",
    "ResNetEmbeddings",
    "ResNetEncoder",
]
