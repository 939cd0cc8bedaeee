"""CAPI: a ViT with registers and CAPI's 2-D RoPE, plus the cross-attention predictor that defines its global
representation. Composed from `hf_mim.layers`; weights load from the released checkpoints through
`scripts/convert/convert_capi_to_hf.py`."""

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput

from ...layers import (
    AttentivePooler,
    CapiRope2D,
    CrossAttentionBlock,
    PatchEmbeddings,
    SelfAttentionBlock,
    build_norm,
    edge_register_coordinates,
    normalized_grid_coordinates,
)
from .configuration_capi import CapiConfig


@dataclass
class CapiModelOutput(ModelOutput):
    """
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_register_tokens + num_patches, hidden_size)`):
        Encoder output after the final (parameter-free) RMSNorm: registers first, then patches in row-major order.
    pooler_output (`torch.FloatTensor` of shape `(batch_size, decoder_hidden_size)`):
        CAPI's global representation: the mean over positions of the normalised output of predictor block 0, whose
        queries are the mask token at every patch position.
    feature_map (`torch.FloatTensor` of shape `(batch_size, height // patch_size, width // patch_size, hidden_size)`):
        The patch tokens of `last_hidden_state` as a spatial map.
    register_tokens (`torch.FloatTensor` of shape `(batch_size, num_register_tokens, hidden_size)`):
        The register tokens of `last_hidden_state`.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        Encoder input embeddings and every encoder block's output (before the final norm).
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        Encoder attention probabilities, one (batch, heads, tokens, tokens) tensor per block.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    feature_map: torch.FloatTensor | None = None
    register_tokens: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class CapiEncoding(ModelOutput):
    """Internal result of the encoder pass, shared by inference and pretraining."""

    tokens: torch.Tensor | None = None  # normalised encoder output, registers first
    coords: torch.Tensor | None = None  # (B, R + n_visible, 2) RoPE coordinates of those tokens
    patch_coords: torch.Tensor | None = None  # (B, N, 2) coordinates of every patch position
    grid: tuple[int, int] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def gather_tokens(tokens: torch.Tensor, absolute_indices: torch.Tensor) -> torch.Tensor:
    """Select tokens by indices into the flattened (B * N) token array; every image must keep the same count."""
    batch = tokens.shape[0]
    if absolute_indices.numel() % batch:
        raise ValueError(f"{absolute_indices.numel()} indices cannot be split evenly over a batch of {batch} images.")
    return tokens.flatten(0, 1)[absolute_indices].reshape(batch, -1, tokens.shape[-1])


class CapiEmbeddings(nn.Module):
    """Patch embedding + register tokens, and the RoPE coordinates of every token."""

    def __init__(self, config: CapiConfig):
        super().__init__()
        self.config = config
        self.patch_embeddings = PatchEmbeddings(config.patch_size, config.num_channels, config.hidden_size, bias=True)
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, config.hidden_size))

    def register_coordinates(self, visible_coords: torch.Tensor) -> torch.Tensor:
        batch, dtype, device = visible_coords.shape[0], visible_coords.dtype, visible_coords.device
        count = self.config.num_register_tokens
        if self.config.register_coordinates == "edge":
            coords = edge_register_coordinates(count, dtype, device)[None].expand(batch, -1, -1)
        else:
            coords = torch.zeros(batch, count, 2, dtype=dtype, device=device)
        if self.config.scale_registers_to_visible:
            # Registers follow the bounding box of what the encoder sees (identity on a full image with > 1 row/col).
            low = visible_coords.min(dim=1, keepdim=True).values
            high = visible_coords.max(dim=1, keepdim=True).values
            coords = low + coords * (high - low)
        return coords

    def forward(self, pixel_values: torch.Tensor, visible_indices: torch.Tensor | None = None):
        patches, grid = self.patch_embeddings(pixel_values)
        batch = patches.shape[0]
        patch_coords = normalized_grid_coordinates(*grid, patches.dtype, patches.device)[None].expand(batch, -1, -1)
        if visible_indices is not None:
            patches = gather_tokens(patches, visible_indices)
            coords = gather_tokens(patch_coords, visible_indices)
        else:
            coords = patch_coords
        registers = self.register_tokens.expand(batch, -1, -1).to(patches.dtype)
        tokens = torch.cat([registers, patches], dim=1)
        coords = torch.cat([self.register_coordinates(coords), coords], dim=1)
        return tokens, coords, patch_coords, grid


def _block_kwargs(config: CapiConfig, width: int, heads: int, intermediate: int) -> dict:
    return dict(
        hidden_size=width,
        num_heads=heads,
        intermediate_size=intermediate,
        norm_type="rmsnorm",
        norm_eps=config.rms_norm_eps,
        qkv_bias=config.attention_bias,
        proj_bias=config.attention_bias,
        mlp_bias=config.mlp_bias,
        hidden_act=config.hidden_act,
        drop_path_rate=config.drop_path_rate,
        drop_path_mode=config.drop_path_mode,
        rope=CapiRope2D(width // heads, config.rope_max_freq, config.rope_min_freq),
    )


class CapiEncoder(nn.Module):
    def __init__(self, config: CapiConfig):
        super().__init__()
        kwargs = lambda: _block_kwargs(  # noqa: E731  (a fresh RoPE module per block)
            config, config.hidden_size, config.num_attention_heads, config.intermediate_size
        )
        self.layer = nn.ModuleList([SelfAttentionBlock(config, **kwargs()) for _ in range(config.num_hidden_layers)])


class CapiPredictor(nn.Module):
    """Cross-attention-only predictor: mask-token queries at requested positions attend to the encoder output."""

    def __init__(self, config: CapiConfig):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, config.decoder_hidden_size))
        kwargs = lambda: _block_kwargs(  # noqa: E731
            config, config.decoder_hidden_size, config.decoder_num_attention_heads, config.decoder_intermediate_size
        )
        self.layer = nn.ModuleList(
            [
                CrossAttentionBlock(config, context_size=config.hidden_size, **kwargs())
                for _ in range(config.decoder_num_hidden_layers)
            ]
        )
        self.layernorm = build_norm(
            "rmsnorm", config.decoder_hidden_size, config.rms_norm_eps, elementwise_affine=False
        )

    def forward(
        self,
        context: torch.Tensor,
        context_coords: torch.Tensor,
        query_coords: torch.Tensor,
        num_layers: int | None = None,
    ) -> torch.Tensor:
        """Run the first `num_layers` blocks (all by default) and return the normalised queries (B, n_q, D)."""
        queries = self.mask_token.to(context.dtype)[None].expand(*query_coords.shape[:2], -1)
        for block in self.layer[:num_layers]:
            queries, _ = block(queries, query_coords, context, context_coords)
        return self.layernorm(queries)


class CapiPreTrainedModel(PreTrainedModel):
    config_class = CapiConfig
    config: CapiConfig
    base_model_prefix = "capi"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["SelfAttentionBlock", "CrossAttentionBlock"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The original init: xavier-uniform Linear weights, zero biases, xavier on the flattened patch kernel,
        N(0, 0.02) registers and mask token, unit norm weights, analytic RoPE tables."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            fan_out, fan_in = module.weight.shape[0], math.prod(module.weight.shape[1:])
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.uniform_(module.bias, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))
        elif isinstance(module, (nn.RMSNorm, nn.LayerNorm)):
            if module.weight is not None:
                init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, CapiEmbeddings):
            init.normal_(module.register_tokens, std=std)
        elif isinstance(module, CapiPredictor):
            init.normal_(module.mask_token, std=std)
        elif isinstance(module, CapiRope2D):
            init.copy_(module.freqs, module.analytic_freqs(module.head_dim, module.max_freq, module.min_freq))
        elif isinstance(module, AttentivePooler):
            init.trunc_normal_(module.query, std=std)


class CapiModel(CapiPreTrainedModel):
    """The CAPI backbone. `forward` returns the encoder tokens (registers + patches, normalised), the patch feature
    map, and CAPI's global representation as `pooler_output` (pass `compute_global_representation=False` to skip
    the predictor block that produces it)."""

    def __init__(self, config: CapiConfig):
        super().__init__(config)
        self.embeddings = CapiEmbeddings(config)
        self.encoder = CapiEncoder(config)
        self.layernorm = build_norm("rmsnorm", config.hidden_size, config.rms_norm_eps, elementwise_affine=False)
        self.predictor = CapiPredictor(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def encode(
        self,
        pixel_values: torch.Tensor,
        visible_indices: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> CapiEncoding:
        """Encoder pass on registers + (visible) patches; `visible_indices` index the flattened (B * N) patches."""
        hidden, coords, patch_coords, grid = self.embeddings(pixel_values, visible_indices)
        all_hidden = (hidden,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in self.encoder.layer:
            hidden, weights = block(hidden, coords, None, None, output_attentions)
            if output_hidden_states:
                all_hidden += (hidden,)
            if output_attentions:
                all_attentions += (weights,)
        return CapiEncoding(
            tokens=self.layernorm(hidden),
            coords=coords,
            patch_coords=patch_coords,
            grid=grid,
            hidden_states=all_hidden,
            attentions=all_attentions,
        )

    def predict(self, encoding: CapiEncoding, query_coords: torch.Tensor, num_layers: int | None = None):
        """Predictor queries at `query_coords` (B, n_q, 2) cross-attending to the encoder output."""
        return self.predictor(encoding.tokens, encoding.coords, query_coords, num_layers)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        compute_global_representation: bool = True,
        **kwargs,
    ) -> CapiModelOutput | tuple:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        encoding = self.encode(pixel_values, None, output_hidden_states, output_attentions)
        tokens = encoding.tokens
        num_registers = self.config.num_register_tokens
        global_repr = None
        if compute_global_representation:
            # Only predictor block 0 defines the global representation; later blocks would not change it.
            global_repr = self.predict(encoding, encoding.patch_coords, num_layers=1).mean(dim=1)
        feature_map = tokens[:, num_registers:].reshape(tokens.shape[0], *encoding.grid, tokens.shape[-1])
        output = CapiModelOutput(
            last_hidden_state=tokens,
            pooler_output=global_repr,
            feature_map=feature_map,
            register_tokens=tokens[:, :num_registers],
            hidden_states=encoding.hidden_states,
            attentions=encoding.attentions,
        )
        return output if return_dict else output.to_tuple()


class CapiForImageClassification(CapiPreTrainedModel):
    """CAPI backbone + a classification head on the features chosen by `config.classifier_pooling`.

    The default, `"attentive"`, is CAPI's attentive probe (a learned query attends over the patch tokens, then a
    linear layer); the other choices feed a linear layer with the global representation and/or the mean patch token.
    """

    def __init__(self, config: CapiConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.capi = CapiModel(config)
        pooling = config.classifier_pooling
        width = {
            "attentive": config.hidden_size,
            "global": config.decoder_hidden_size,
            "avg_patch": config.hidden_size,
            "global_avg_patch": config.decoder_hidden_size + config.hidden_size,
        }[pooling]
        head_dim = 64 if config.hidden_size % 64 == 0 else config.hidden_size // config.num_attention_heads
        self.pooler = AttentivePooler(config.hidden_size, head_dim) if pooling == "attentive" else None
        self.classifier = nn.Linear(width, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def _features(self, outputs: CapiModelOutput) -> torch.Tensor:
        pooling = self.config.classifier_pooling
        patches = outputs.last_hidden_state[:, self.config.num_register_tokens :]
        if pooling == "attentive":
            return self.pooler(patches)
        if pooling == "global":
            return outputs.pooler_output
        if pooling == "avg_patch":
            return patches.mean(dim=1)
        return torch.cat([outputs.pooler_output, patches.mean(dim=1)], dim=-1)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        needs_global = self.config.classifier_pooling in ("global", "global_avg_patch")
        outputs = self.capi(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            compute_global_representation=needs_global,
        )
        logits = self.classifier(self._features(outputs))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)
        output = ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


__all__ = ["CapiModel", "CapiForImageClassification", "CapiPreTrainedModel", "CapiModelOutput"]
