"""VICRegL: backbone (`VicreglModel`, weights interchangeable with transformers' ResNetModel / ConvNextModel), linear
classification head, and the full self-supervised objective (`VicreglForPreTraining`)."""

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ...modeling_utils import RemoteCodeExportMixin, classification_output, output_flags
from .configuration_vicregl import VicreglConfig, parse_mlp_spec
from .convnets_vicregl import (
    ConvNextEmbeddings,
    ConvNextEncoder,
    ConvNextLayer,
    ResNetEmbeddings,
    ResNetEncoder,
)
from .loss_vicregl import VicregCoefficients, vicreg_global_loss, vicregl_local_loss


@dataclass
class VicreglModelOutput(ModelOutput):
    """
    last_hidden_state: (B, C, h, w) last stage output as transformers' ResNetModel / ConvNextModel return it (ResNet:
        post-ReLU; ConvNeXt: before the final norm).
    pooler_output: (B, C) VICRegL's representation (ResNet: average pool; ConvNeXt: mean of the normed tokens).
    feature_map: (B, h, w, C) VICRegL's dense maps (ResNet: the last map; ConvNeXt: each token after the final norm).
    hidden_states: stem output and every stage output, (B, C_s, H_s, W_s) each, when asked.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    feature_map: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


class VicreglPreTrainedModel(RemoteCodeExportMixin, PreTrainedModel):
    config_class = VicreglConfig
    config: VicreglConfig
    base_model_prefix = "vicregl"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ConvNextLayer", "ResNetBottleNeckLayer"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The originals' init: ResNet convs kaiming-normal (fan_out, ReLU), BN (1, 0) with the last BN of each
        block at 0 (`zero_init_residual`); ConvNeXt conv/linear trunc-normal(0.02), zero bias; LayerNorm (1, 0);
        projector Linear layers keep PyTorch's default init (VICRegL builds them with nn.Linear defaults); the
        classification head N(0, 0.01), zero bias (VICRegL's linear evaluation)."""
        config = self.config
        if isinstance(module, nn.Conv2d):
            if config.backbone_type == "resnet":
                init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            else:
                init.trunc_normal_(module.weight, std=config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            if getattr(module, "_vicregl_role", None) == "projector":
                _torch_default_linear_init(module)
            elif getattr(module, "_vicregl_role", None) == "classifier":
                init.normal_(module.weight, std=0.01)
                init.zeros_(module.bias)
            else:
                init.trunc_normal_(module.weight, std=config.initializer_range)
                if module.bias is not None:
                    init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            if getattr(module, "is_last_block_norm", False) and config.zero_init_residual:
                init.zeros_(module.weight)
            else:
                init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ConvNextLayer) and module.layer_scale_parameter is not None:
            init.constant_(module.layer_scale_parameter, config.layer_scale_init_value)


def _torch_default_linear_init(module: nn.Linear) -> None:
    """`nn.Linear.reset_parameters`, through transformers' init functions (which skip weights loaded from a file)."""
    init.kaiming_uniform_(module.weight, a=5**0.5)
    if module.bias is not None:
        bound = 1 / module.weight.shape[1] ** 0.5
        init.uniform_(module.bias, -bound, bound)


class VicreglModel(VicreglPreTrainedModel):
    """The VICRegL backbone. Its modules (and so its state dict) are those of transformers' `ResNetModel`
    (`backbone_type="resnet"`: `embedder`, `encoder`) or `ConvNextModel` (`"convnext"`: `embeddings`, `encoder`,
    `layernorm`). Any input size works (ConvNeXt needs at least 32 px per side). See `VicreglModelOutput`."""

    # A pretraining folder (a run, or a converted full checkpoint) also holds the projectors.
    _keys_to_ignore_on_load_unexpected = [r"^projector\.", r"^maps_projector\."]

    def __init__(self, config: VicreglConfig):
        super().__init__(config)
        if config.backbone_type == "resnet":
            self.embedder = ResNetEmbeddings(config)
            self.encoder = ResNetEncoder(config)
        else:
            self.embeddings = ConvNextEmbeddings(config)
            self.encoder = ConvNextEncoder(config)
            self.layernorm = nn.LayerNorm(config.representation_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        if self.config.backbone_type == "resnet":
            return self.embedder.embedder.convolution
        return self.embeddings.patch_embeddings

    def _check_input(self, pixel_values: torch.Tensor) -> None:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must be (batch, {self.config.num_channels}, height, width), got "
                f"{tuple(pixel_values.shape)}."
            )
        smallest = self.config.total_stride if self.config.backbone_type == "convnext" else 1
        if min(pixel_values.shape[-2:]) < smallest:
            raise ValueError(
                f"Input of {tuple(pixel_values.shape[-2:])} px is smaller than the backbone's total stride "
                f"({smallest} px): the last feature map would be empty."
            )

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> VicreglModelOutput | tuple:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        _, output_hidden_states, return_dict = output_flags(self.config, False, output_hidden_states, return_dict)
        self._check_input(pixel_values)
        if self.config.backbone_type == "resnet":
            last, hidden_states = self.encoder(self.embedder(pixel_values), output_hidden_states)
            feature_map = last.permute(0, 2, 3, 1)
            pooled = F.adaptive_avg_pool2d(last, 1).flatten(1)
        else:
            last, hidden_states = self.encoder(self.embeddings(pixel_values), output_hidden_states)
            feature_map = self.layernorm(last.permute(0, 2, 3, 1))
            pooled = feature_map.flatten(1, 2).mean(dim=1)  # VICRegL: mean of the normed tokens (not LN of the mean)
        output = VicreglModelOutput(
            last_hidden_state=last, pooler_output=pooled, feature_map=feature_map, hidden_states=hidden_states
        )
        return output if return_dict else output.to_tuple()


class VicreglForImageClassification(VicreglPreTrainedModel):
    """Linear head on VICRegL's representation (`pooler_output`), VICRegL's linear evaluation; `num_labels=0` gives
    the representation itself as logits."""

    _keys_to_ignore_on_load_unexpected = [r"^projector\.", r"^maps_projector\."]

    def __init__(self, config: VicreglConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vicregl = VicreglModel(config)
        if config.num_labels > 0:
            self.classifier = nn.Linear(config.representation_size, config.num_labels)
            self.classifier._vicregl_role = "classifier"
        else:
            self.classifier = nn.Identity()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        _, output_hidden_states, return_dict = output_flags(self.config, False, output_hidden_states, return_dict)
        outputs = self.vicregl(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        return classification_output(self, outputs.pooler_output, labels, outputs, outputs.hidden_states, return_dict)


class VicreglProjector(nn.Sequential):
    """VICRegL's expander ("in-h1-...-out"): Linear -> norm -> ReLU for each hidden width, then Linear without bias.
    Norm: BatchNorm1d for ResNet, LayerNorm (eps 1e-5, PyTorch's default) for ConvNeXt. Module indices are the
    original's (0 Linear, 1 norm, 2 ReLU, 3 Linear, ...), so checkpoints convert by prefix alone."""

    def __init__(self, in_features: int, spec: str, norm: str):
        widths = [in_features, *parse_mlp_spec(spec)]
        layers = []
        for i in range(len(widths) - 2):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            layers.append(nn.BatchNorm1d(widths[i + 1]) if norm == "batch_norm" else nn.LayerNorm(widths[i + 1]))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Linear(widths[-2], widths[-1], bias=False))
        super().__init__(*layers)
        for layer in layers:
            if isinstance(layer, nn.Linear):
                layer._vicregl_role = "projector"


@dataclass
class VicreglForPreTrainingOutput(ModelOutput):
    """
    loss: alpha * global_loss + (1 - alpha) * local_loss.
    global_loss / local_loss: sums of their invariance, variance and covariance parts (None when alpha drops them).
    global_invariance_loss, global_variance_loss, global_covariance_loss, local_invariance_loss,
    local_variance_loss, local_covariance_loss: the parts, coefficients applied.
    pooled_features: (B, C) representation of the first view (feature-health monitoring).
    embeddings: (B, V, D) global expander outputs of every view (when alpha > 0).
    hidden_states: backbone hidden states of the first view, when asked.
    """

    loss: torch.FloatTensor | None = None
    global_loss: torch.FloatTensor | None = None
    local_loss: torch.FloatTensor | None = None
    global_invariance_loss: torch.FloatTensor | None = None
    global_variance_loss: torch.FloatTensor | None = None
    global_covariance_loss: torch.FloatTensor | None = None
    local_invariance_loss: torch.FloatTensor | None = None
    local_variance_loss: torch.FloatTensor | None = None
    local_covariance_loss: torch.FloatTensor | None = None
    pooled_features: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None

    # The fields a trainer logs next to `loss` (MimPretrainingTrainer); those alpha drops are None, not logged.
    loss_parts: ClassVar[tuple[str, ...]] = (
        "global_loss", "local_loss", "global_invariance_loss", "global_variance_loss", "global_covariance_loss",
        "local_invariance_loss", "local_variance_loss", "local_covariance_loss",
    )  # fmt: skip


def _views(pixel_values: torch.Tensor | None, locations: torch.Tensor | None, name: str) -> list:
    """(B, V, C, H, W) views and (B, V, h, w, 2) grids -> [(view, grid (B, h*w, 2) or None)] per view."""
    if pixel_values is None:
        return []
    if pixel_values.ndim != 5:
        raise ValueError(
            f"{name} must be (batch, views, channels, height, width), got {tuple(pixel_values.shape)}; "
            "hf_mim.data.MultiCropCollator builds it."
        )
    if locations is not None and (locations.ndim != 5 or locations.shape[:2] != pixel_values.shape[:2]):
        raise ValueError(
            f"{name}'s location grids must be (batch, views, h, w, 2) matching {tuple(pixel_values.shape[:2])}, "
            f"got {tuple(locations.shape)}."
        )
    return [
        (pixel_values[:, v], None if locations is None else locations[:, v].flatten(1, 2))
        for v in range(pixel_values.shape[1])
    ]


class VicreglForPreTraining(VicreglPreTrainedModel):
    """Backbone + global projector (`projector`, on the representation) + local projector (`maps_projector`, on
    every position of the dense map); VICRegL's loss (see `loss_vicregl`). Views are processed one at a time, as the
    original does, so BatchNorm statistics are per view."""

    def __init__(self, config: VicreglConfig):
        super().__init__(config)
        self.vicregl = VicreglModel(config)
        norm = "batch_norm" if config.backbone_type == "resnet" else "layer_norm"
        width = config.representation_size
        self.projector = VicreglProjector(width, config.projector, norm) if config.uses_global_loss else None
        self.maps_projector = VicreglProjector(width, config.maps_projector, norm) if config.uses_local_loss else None
        self.post_init()

    def _coefficients(self) -> VicregCoefficients:
        c = self.config
        return VicregCoefficients(c.invariance_coeff, c.variance_coeff, c.covariance_coeff)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        locations: torch.Tensor | None = None,
        local_pixel_values: torch.Tensor | None = None,
        local_locations: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> VicreglForPreTrainingOutput | tuple:
        """pixel_values (B, V_g, C, H, W): the global (large) crops; locations (B, V_g, h, w, 2): their grids in
        image pixels (row, col). local_pixel_values / local_locations: the small crops, optional. The local loss
        needs grids; the global loss needs only the views."""
        config = self.config
        _, output_hidden_states, return_dict = output_flags(config, False, output_hidden_states, return_dict)
        views = _views(pixel_values, locations, "pixel_values") + _views(
            local_pixel_values, local_locations, "local_pixel_values"
        )
        if len(views) < 2:
            raise ValueError(f"VICRegL needs at least 2 views, got {len(views)}.")
        if config.uses_local_loss and any(grid is None for _, grid in views):
            raise ValueError("The local loss (alpha < 1) needs location grids for every view.")
        embeddings, maps, grids, first = [], [], [], None
        for index, (view, grid) in enumerate(views):
            out = self.vicregl(view, output_hidden_states=output_hidden_states and index == 0, return_dict=True)
            first = out if index == 0 else first
            if self.projector is not None:
                embeddings.append(self.projector(out.pooler_output))
            if self.maps_projector is not None:
                tokens = out.feature_map.flatten(1, 2)  # (B, h*w, C), row-major as the grids
                if tokens.shape[1] != grid.shape[1]:
                    raise ValueError(
                        f"view {index}: a {tuple(out.feature_map.shape[1:3])} feature map but {grid.shape[1]} grid "
                        "locations; build the grids with the backbone's total stride "
                        f"({config.total_stride} px per cell)."
                    )
                maps.append(self.maps_projector(tokens.flatten(0, 1)).unflatten(0, tokens.shape[:2]))
                # pixel locations: never bfloat16 (steps of 1 px from 128 px on), float64 in a float64 model
                grids.append(grid.to(torch.promote_types(tokens.dtype, torch.float32)))
        coefficients = self._coefficients()
        loss = 0.0
        parts = {}
        if embeddings:
            inv, var, cov = vicreg_global_loss(embeddings, coefficients, config.num_global_views)
            parts.update(global_invariance_loss=inv, global_variance_loss=var, global_covariance_loss=cov)
            parts["global_loss"] = inv + var + cov
            loss = loss + config.alpha * parts["global_loss"]
        if maps:
            inv, var, cov = vicregl_local_loss(
                maps,
                grids,
                coefficients,
                config.num_matches,
                config.l2_all_matches,
                config.num_global_views,
                config.fast_vc_reg,
            )
            parts.update(local_invariance_loss=inv, local_variance_loss=var, local_covariance_loss=cov)
            parts["local_loss"] = inv + var + cov
            loss = loss + (1 - config.alpha) * parts["local_loss"]
        output = VicreglForPreTrainingOutput(
            loss=loss,
            pooled_features=first.pooler_output,
            embeddings=torch.stack(embeddings, dim=1) if embeddings else None,
            hidden_states=first.hidden_states,
            **parts,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "VicreglForImageClassification",
    "VicreglForPreTraining",
    "VicreglForPreTrainingOutput",
    "VicreglModel",
    "VicreglModelOutput",
    "VicreglPreTrainedModel",
    "VicreglProjector",
]
