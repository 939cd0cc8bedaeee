"""I-JEPA: encoder (weights interchangeable with transformers' `IJepaModel`), narrow predictor, the full
pretraining objective with an EMA target encoder, and classification heads. Composed from `hf_mim.layers`."""

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import ModelOutput, logging

from ...layers import (
    Encoding,
    PatchEmbeddings,
    ViTLayer,
    drop_path_schedule,
    encode_blocks,
    resize_position_embeddings,
    sincos_2d_position_embedding,
)
from ...masking import MultiBlockMasking
from ...modeling_utils import RemoteCodeExportMixin, classification_output, output_flags
from ...teacher import EmaTeacherMixin
from .configuration_ijepa import IJepaConfig
from .loss_ijepa import prediction_loss, target_norm

logger = logging.get_logger(__name__)


def apply_masks(tokens: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Gather (B, N, D) tokens with batch-first (B, n_masks, K) per-image indices -> (B, n_masks, K, D)."""
    batch, num_masks, keep = masks.shape
    index = masks.reshape(batch, num_masks * keep, 1).expand(-1, -1, tokens.shape[-1])
    return torch.gather(tokens, 1, index).reshape(batch, num_masks, keep, tokens.shape[-1])


def _check_masks(name: str, indices: torch.Tensor, batch: int) -> None:
    if indices.ndim != 3 or indices.shape[0] != batch:
        raise ValueError(
            f"{name} must be batch-first (batch={batch}, num_masks, K) indices, got shape {tuple(indices.shape)}; "
            "convert the original's mask-major layout with hf_mim.masking.from_mask_major."
        )


def multiblock_masking(config: IJepaConfig, sampler: str | None = None) -> MultiBlockMasking:
    """The multi-block mask generator `config` describes (`sampler` overrides `config.mask_sampler`); the one place
    the mask settings are read (`IJepaForPreTraining.build_mask_generator`)."""
    return MultiBlockMasking(
        num_targets=config.num_target_blocks,
        target_scale=config.target_block_scale,
        target_aspect_ratio=config.target_aspect_ratio,
        num_context=config.num_context_blocks,
        context_scale=config.context_block_scale,
        min_keep=config.min_keep,
        allow_overlap=config.allow_overlap,
        sampler=sampler or config.mask_sampler,
    )


def _grid(config: IJepaConfig) -> tuple[int, int]:
    side = config.image_size // config.patch_size
    return side, side


def _block_kwargs(config: IJepaConfig, width: int, heads: int, intermediate: int, drop_path: float = 0.0) -> dict:
    return dict(
        hidden_size=width,
        num_heads=heads,
        intermediate_size=intermediate,
        norm_type="layernorm",
        norm_eps=config.layer_norm_eps,
        qkv_bias=config.qkv_bias,
        proj_bias=True,
        mlp_bias=True,
        hidden_act=config.hidden_act,
        drop_path_rate=drop_path,
        drop_path_mode="naive",
        attention_dropout=config.attention_probs_dropout_prob,
    )


class IJepaEmbeddings(nn.Module):
    """Patch embedding + fixed 2-D sin-cos positions (first half of the channels = column index, as the original).

    At another resolution the table is interpolated bicubically (transformers' semantics), so any multiple of the
    patch size works - the original code crashes there.
    """

    def __init__(self, config: IJepaConfig):
        super().__init__()
        self.config = config
        self.patch_embeddings = PatchEmbeddings(config.patch_size, config.num_channels, config.hidden_size, bias=True)
        num_patches = _grid(config)[0] * _grid(config)[1]
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_patches, config.hidden_size))

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        patches, grid = self.patch_embeddings(pixel_values)
        positions = resize_position_embeddings(self.position_embeddings, _grid(self.config), grid)
        return patches + positions.to(patches.dtype), grid


def _load_target_encoder(model, pretrained_model_name_or_path, kwargs) -> None:
    """Copy `target_encoder.*` tensors of a full checkpoint into the model's encoder (if the file has them)."""
    from safetensors.torch import load_file
    from transformers.utils import cached_file

    hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
    path = cached_file(pretrained_model_name_or_path, "model.safetensors", _raise_exceptions_for_missing_entries=False,
                       **hub_kwargs)  # fmt: skip
    if path is None:
        return
    prefix = "target_encoder."
    state = {k[len(prefix) :]: v for k, v in load_file(path).items() if k.startswith(prefix)}
    if not state:
        return
    encoder = model if isinstance(model, IJepaModel) else model.ijepa
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ValueError(f"Target encoder in {pretrained_model_name_or_path} lacks {result.missing_keys}")
    logger.info("Loaded the EMA target encoder (config.standalone_encoder='target').")


class IJepaPreTrainedModel(RemoteCodeExportMixin, PreTrainedModel):
    config_class = IJepaConfig
    config: IJepaConfig
    base_model_prefix = "ijepa"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ViTLayer"]
    _supports_sdpa = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """From a full I-JEPA pretraining checkpoint whose `config.standalone_encoder == "target"`, the encoder of
        `IJepaModel` / `IJepaForImageClassification` is the EMA target encoder (stored under `target_encoder.`)."""
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model
        if cls._uses_standalone_encoder and loaded.config.standalone_encoder == "target":
            _load_target_encoder(loaded, pretrained_model_name_or_path, kwargs)
        return model

    _uses_standalone_encoder = True

    def save_pretrained(self, *args, **kwargs):
        # Write the current transformers names (layers.N.attention.q_proj ...), which both hf_mim and transformers
        # load natively; transformers' older names (encoder.layer.N.attention.attention.query ...) are still read,
        # through the ViT renaming registered for this model type.
        kwargs.setdefault("save_original_format", False)
        return super().save_pretrained(*args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The original init: trunc_normal(0.02) for Linear/Conv, zero biases, LayerNorm (1, 0), analytic sin-cos
        position tables, trunc_normal(0.02) mask token."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear | nn.Conv2d):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, IJepaEmbeddings):
            grid = _grid(self.config)
            table = sincos_2d_position_embedding(self.config.hidden_size, *grid, first_half="column")
            init.copy_(module.position_embeddings, table[None])
        elif isinstance(module, IJepaPredictor):
            grid = _grid(self.config)
            table = sincos_2d_position_embedding(self.config.predictor_hidden_size, *grid, first_half="column")
            init.copy_(module.position_embeddings, table[None])
            init.trunc_normal_(module.mask_token, std=std)


class IJepaModel(IJepaPreTrainedModel):
    """The I-JEPA encoder. `last_hidden_state`: all patch tokens after the final LayerNorm (no CLS);
    `pooler_output`: their mean (I-JEPA's global representation); `feature_map`: (B, h, w, D) in `feature_maps`.

    Parameter names are transformers' `IJepaModel` ones, so `IJepaModel.from_pretrained` reads checkpoints written by
    transformers (old or new key names) and transformers reads ours.
    """

    # A full pretraining folder (converted release or a run) also holds these; loading the encoder alone is silent.
    _keys_to_ignore_on_load_unexpected = [r"^predictor\.", r"^target_encoder\."]

    def __init__(self, config: IJepaConfig):
        super().__init__(config)
        self.embeddings = IJepaEmbeddings(config)
        rates = drop_path_schedule(config.drop_path_rate, config.num_hidden_layers)
        self.layers = nn.ModuleList(
            [
                ViTLayer(
                    config,
                    **_block_kwargs(
                        config, config.hidden_size, config.num_attention_heads, config.intermediate_size, rate
                    ),
                )  # fmt: skip
                for rate in rates
            ]
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def encode(
        self,
        pixel_values: torch.Tensor,
        masks: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> Encoding:
        """Encoder pass; the result's `tokens` are after the final LayerNorm. With batch-first `masks` (B, n_masks, K)
        only those tokens are kept (after the positions are added); each mask is its own sequence, image-major: row
        b * n_masks + m of the (B * n_masks, K, D) tokens."""
        hidden, grid = self.embeddings(pixel_values)
        if masks is not None:
            hidden = apply_masks(hidden, masks).flatten(0, 1)
        return encode_blocks(
            self.layers,
            self.layernorm,
            hidden,
            grid,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool | None = None,  # accepted for transformers compatibility; always on
    ) -> BaseModelOutputWithPooling | tuple:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        encoding = self.encode(pixel_values, None, output_hidden_states, output_attentions)
        tokens = encoding.tokens
        output = IJepaModelOutput(
            last_hidden_state=tokens,
            pooler_output=tokens.mean(dim=1),
            hidden_states=encoding.hidden_states,
            attentions=encoding.attentions,
            feature_map=tokens.reshape(tokens.shape[0], *encoding.grid, tokens.shape[-1]),
        )
        return output if return_dict else output.to_tuple()


@dataclass
class IJepaModelOutput(BaseModelOutputWithPooling):
    """BaseModelOutputWithPooling plus `feature_map` (B, h, w, D): the patch tokens as a spatial map."""

    feature_map: torch.FloatTensor | None = None


class IJepaPredictor(nn.Module):
    """Narrow ViT predictor: context tokens (projected to the predictor width, + sin-cos positions) and mask tokens at
    one target block's positions attend to each other; the mask-token outputs are projected back to the encoder
    width. Every target block is predicted in its own sequence."""

    def __init__(self, config: IJepaConfig):
        super().__init__()
        width = config.predictor_hidden_size
        num_patches = _grid(config)[0] * _grid(config)[1]
        self.config = config
        self.input_proj = nn.Linear(config.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_patches, width))
        self.layers = nn.ModuleList(
            [
                ViTLayer(
                    config,
                    **_block_kwargs(
                        config, width, config.predictor_num_attention_heads, config.predictor_intermediate_size
                    ),
                )  # fmt: skip
                for _ in range(config.predictor_num_hidden_layers)
            ]
        )
        self.layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.output_proj = nn.Linear(width, config.hidden_size)

    def forward(
        self, context: torch.Tensor, context_indices: torch.Tensor, target_indices: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """context: (B * n_ctx, K_ctx, D) context-encoder output (image-major, as `IJepaModel.encode` returns it);
        context_indices (B, n_ctx, K_ctx); target_indices (B, n_tgt, K_tgt), batch-first.

        Every (target block, context block) pair is one sequence: the projected context tokens plus mask tokens at
        that target block's positions. Returns (B, n_tgt * n_ctx, K_tgt, D), pair index t * n_ctx + c (the
        original's order within an image)."""
        batch, num_context, context_keep = context_indices.shape
        num_targets, target_keep = target_indices.shape[1:]
        positions = resize_position_embeddings(self.position_embeddings, _grid(self.config), grid)
        positions = positions.to(context.dtype).expand(batch, -1, -1)
        hidden = self.input_proj(context).reshape(batch, num_context, context_keep, -1)
        hidden = hidden + apply_masks(positions, context_indices)
        queries = self.mask_token.to(hidden.dtype) + apply_masks(positions, target_indices)
        width = hidden.shape[-1]
        pairs = (batch, num_targets, num_context)
        hidden = torch.cat(
            [
                hidden[:, None].expand(*pairs, context_keep, width),
                queries[:, :, None].expand(*pairs, target_keep, width),
            ],
            dim=3,
        ).reshape(-1, context_keep + target_keep, width)
        for layer in self.layers:
            hidden, _ = layer(hidden)
        predictions = self.output_proj(self.layernorm(hidden)[:, context_keep:])
        return predictions.reshape(batch, num_targets * num_context, target_keep, -1)


@dataclass
class IJepaForPreTrainingOutput(ModelOutput):
    """
    Every tensor is batch-first (its first dimension is the batch).

    loss: smooth-L1 (or L2) between predictions and targets, averaged over all elements.
    prediction_loss: the same number, detached (the part the trainer logs).
    predictions: (B, n_tgt * n_ctx, K_tgt, D) predictor outputs, one row per (target block t, context block c) pair,
        index t * n_ctx + c.
    targets: (B, n_tgt * n_ctx, K_tgt, D) the layer-normed target-encoder tokens at the same positions.
    context_tokens: (B, n_ctx, K_ctx, D) context-encoder output.
    pooled_features: (B, D) mean target-encoder token, for feature-health monitoring.
    hidden_states: context-encoder input embeddings and block outputs, each (B * n_ctx, K_ctx, D), when asked.
    attentions: context-encoder attention probabilities, each (B * n_ctx, heads, K_ctx, K_ctx), when asked.
    """

    loss: torch.FloatTensor | None = None
    prediction_loss: torch.FloatTensor | None = None
    predictions: torch.FloatTensor | None = None
    targets: torch.FloatTensor | None = None
    context_tokens: torch.FloatTensor | None = None
    pooled_features: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None

    # The fields a trainer logs next to `loss` (MimPretrainingTrainer).
    loss_parts: ClassVar[tuple[str, ...]] = ("prediction_loss",)


class IJepaForPreTraining(EmaTeacherMixin, IJepaPreTrainedModel):
    """I-JEPA's objective: context encoder (`ijepa`) on the context block, predictor, EMA target encoder
    (`target_encoder`) on the full image whose output gets an extra parameter-free LayerNorm; loss between predicted
    and target tokens of every target block. Pass `context_indices` / `target_indices` ((n, B, K) per-image indices) for
    deterministic runs; otherwise multi-block masks are drawn from torch's global RNG. Position tables stay frozen."""

    _uses_standalone_encoder = False  # it holds both encoders under their own names
    student_attribute, teacher_attribute = "ijepa", "target_encoder"
    # The model keeps it as `mask_generator` (drawn from when no masks are given); a data collator takes it from
    # there (`PretrainingCollator.for_model`, which also marks the block-size lengths dynamic for torch.compile).
    build_mask_generator = staticmethod(multiblock_masking)

    def _after_load(self) -> None:
        # the sin-cos tables are fixed, as in the original (requires_grad=False)
        self.ijepa.embeddings.position_embeddings.requires_grad_(False)
        self.predictor.position_embeddings.requires_grad_(False)

    def __init__(self, config: IJepaConfig):
        super().__init__(config)
        self.ijepa = IJepaModel(config)
        self.target_encoder = IJepaModel(config)
        self.predictor = IJepaPredictor(config)
        self.mask_generator = self.build_mask_generator(config)
        self.post_init()
        # post_init inherits the encoder's ignore patterns; every key of a pretraining folder is expected here, so an
        # unexpected one must be reported.
        self._keys_to_ignore_on_load_unexpected = set()
        self.init_teacher()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        context_indices: torch.Tensor | None = None,
        target_indices: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> IJepaForPreTrainingOutput | tuple:
        """context_indices (B, n_ctx, K_ctx) / target_indices (B, n_tgt, K_tgt): batch-first per-image patch
        indices (`hf_mim.masking.from_mask_major` converts the original's layout). Drawn from torch's global RNG
        when not given."""
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        batch, _, height, width = pixel_values.shape
        grid = (height // self.config.patch_size, width // self.config.patch_size)
        if (context_indices is None) != (target_indices is None):
            raise ValueError("Pass both context_indices and target_indices, or neither.")
        if context_indices is None:
            masks = self.mask_generator(batch, grid)
            context_indices, target_indices = masks.context_indices, masks.target_indices
        _check_masks("context_indices", context_indices, batch)
        _check_masks("target_indices", target_indices, batch)
        context_indices = context_indices.to(pixel_values.device)
        target_indices = target_indices.to(pixel_values.device)
        num_context = context_indices.shape[1]

        with torch.no_grad():
            target_tokens = self.target_encoder.encode(pixel_values).tokens
            normed = target_norm(target_tokens)
            targets = apply_masks(normed, target_indices)  # (B, n_tgt, K, D), each repeated per context block
            targets = targets[:, :, None].expand(-1, -1, num_context, -1, -1).flatten(1, 2)
        context = self.ijepa.encode(pixel_values, context_indices, output_hidden_states, output_attentions)
        context_tokens = context.tokens
        predictions = self.predictor(context_tokens, context_indices, target_indices, grid)
        # A mean over every element, so over flat views it is the same number; inductor's backward would otherwise
        # specialise on the target length (a 4-D elementwise op's channels-last check guards on it): one compilation
        # per new length instead of one for all.
        loss = prediction_loss(predictions.flatten(), targets.flatten(), self.config.loss_type)
        output = IJepaForPreTrainingOutput(
            loss=loss,
            prediction_loss=loss.detach(),
            predictions=predictions,
            targets=targets,
            context_tokens=context_tokens.reshape(batch, num_context, *context_tokens.shape[1:]),
            pooled_features=target_tokens.mean(dim=1),
            hidden_states=context.hidden_states,
            attentions=context.attentions,
        )
        return output if return_dict else output.to_tuple()


class IJepaForImageClassification(IJepaPreTrainedModel):
    """I-JEPA encoder + linear classifier on average-pooled tokens (`classifier_pooling="mean"`, the same head as
    transformers' `IJepaForImageClassification`) or on the concatenation of the average-pooled outputs of the last
    four blocks (`"mean_last4"`, each layer-normed without affine - the recipe's variant, working here)."""

    def __init__(self, config: IJepaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ijepa = IJepaModel(config)
        width = config.hidden_size * (4 if config.classifier_pooling == "mean_last4" else 1)
        if config.classifier_pooling == "mean_last4" and config.num_hidden_layers < 4:
            raise ValueError("classifier_pooling='mean_last4' needs at least 4 encoder layers")
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(width, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def pooled_features(self, outputs) -> torch.Tensor:
        if self.config.classifier_pooling == "mean_last4":
            # outputs of the last four blocks; the last one after the encoder's final LayerNorm
            blocks = list(outputs.hidden_states[-4:-1]) + [outputs.last_hidden_state]
            pooled = [nn.functional.layer_norm(b.mean(dim=1), (b.shape[-1],)) for b in blocks]
            return torch.cat(pooled, dim=-1)
        pooled = outputs.pooler_output
        if self.config.classifier_layernorm:
            pooled = nn.functional.layer_norm(pooled, (pooled.shape[-1],))
        return pooled

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool | None = None,  # accepted for transformers compatibility; always on
    ) -> ImageClassifierOutput | tuple:
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        needs_hidden = self.config.classifier_pooling == "mean_last4"
        outputs = self.ijepa(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states or needs_hidden,
            return_dict=True,
        )
        hidden_states = outputs.hidden_states if output_hidden_states else None
        features = self.dropout(self.pooled_features(outputs))
        return classification_output(self, features, labels, outputs, hidden_states, return_dict)


__all__ = [
    "IJepaForImageClassification",
    "IJepaForPreTraining",
    "IJepaForPreTrainingOutput",
    "IJepaModel",
    "IJepaModelOutput",
    "IJepaPreTrainedModel",
    "IJepaPredictor",
]
