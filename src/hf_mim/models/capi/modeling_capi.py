"""CAPI: a ViT with registers and CAPI's 2-D RoPE, plus the cross-attention predictor that defines its global
representation. Composed from `hf_mim.layers`; weights load from the released checkpoints through
`scripts/convert/convert_capi_to_hf.py`."""

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.utils import ModelOutput, logging

from ...layers import (
    AttentivePooler,
    CapiRope2D,
    CrossAttentionBlock,
    Encoding,
    PatchEmbeddings,
    SelfAttentionBlock,
    build_norm,
    edge_register_coordinates,
    encode_blocks,
    normalized_grid_coordinates,
)
from ...masking import InverseBlockMasking, to_absolute
from ...modeling_utils import RemoteCodeExportMixin, classification_output, output_flags
from ...teacher import EmaTeacherMixin
from .configuration_capi import CapiConfig
from .loss_capi import clustering_loss, sinkhorn_targets, student_loss, target_entropy

logger = logging.get_logger(__name__)


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


class CapiPreTrainedModel(RemoteCodeExportMixin, PreTrainedModel):
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
        elif isinstance(module, CapiPredictionHead):
            init.trunc_normal_(module.direction, std=0.02)
            init.ones_(module.magnitude)
        elif isinstance(module, CapiClusteringHead):
            init.normal_(module.weight, std=1.0)
            if module.bias is not None:
                init.zeros_(module.bias)


class CapiModel(CapiPreTrainedModel):
    """The CAPI backbone. `forward` returns the encoder tokens (registers + patches, normalised), the patch feature
    map, and CAPI's global representation as `pooler_output` (pass `compute_global_representation=False` to skip
    the predictor block that produces it)."""

    # A pretraining folder (a run, or a converted release with its heads) also holds these; loading the backbone
    # alone is silent.
    _keys_to_ignore_on_load_unexpected = [r"^teacher\.", r"^clustering_head\.", r"^prediction_head\."]

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
    ) -> Encoding:
        """Encoder pass on registers + (visible) patches; `visible_indices` index the flattened (B * N) patches. The
        result's `tokens` are normalised, registers first; `coords` are their RoPE coordinates (the predictor's
        context positions) and `patch_coords` those of every patch position (where it places its queries)."""
        hidden, coords, patch_coords, grid = self.embeddings(pixel_values, visible_indices)
        return encode_blocks(
            self.encoder.layer,
            self.layernorm,
            hidden,
            grid,
            coords,
            patch_coords,
            output_hidden_states,
            output_attentions,
        )

    def predict(self, encoding: Encoding, query_coords: torch.Tensor, num_layers: int | None = None):
        """Predictor queries at `query_coords` (B, n_q, 2) cross-attending to the encoder output."""
        return self.predictor(encoding.tokens, encoding.coords, query_coords, num_layers)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        compute_global_representation: bool = True,
    ) -> CapiModelOutput | tuple:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )

        encoding = self.encode(pixel_values, None, output_hidden_states, output_attentions)
        tokens = encoding.tokens
        num_registers = self.config.num_register_tokens
        global_repr = None
        if compute_global_representation and self.predictor is not None:
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
        # Keep only the predictor blocks the head uses: block 0 for the global representation, none otherwise, so
        # no parameter is left without a gradient (DDP) and nothing is computed twice.
        # The dropped blocks' weights in a backbone folder (keys `predictor.*`) or a pretraining / classifier folder
        # (`capi.predictor.*`) are expected, not reported on load.
        if pooling in ("global", "global_avg_patch"):
            self.capi.predictor.layer = self.capi.predictor.layer[:1]
            self._keys_to_ignore_on_load_unexpected = [r"^(capi\.)?predictor\.layer\.([1-9]|\d{2,})\."]
        else:
            self.capi.predictor = None
            self._keys_to_ignore_on_load_unexpected = [r"^(capi\.)?predictor\."]
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
    ) -> ImageClassifierOutput | tuple:
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        needs_global = self.config.classifier_pooling in ("global", "global_avg_patch")
        outputs = self.capi(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            compute_global_representation=needs_global,
        )
        return classification_output(
            self, self._features(outputs), labels, outputs, outputs.hidden_states, return_dict
        )


class CapiClusteringHead(nn.Module):
    """CAPI's online clustering of teacher patch tokens (the original `OnlineClustering`).

    L2-normalised tokens -> Linear(D, K) logits; Sinkhorn-Knopp on logits / target_temp gives the soft assignments
    (targets); the head itself is trained to predict those assignments from its own logits (temperature
    `clustering_pred_temp`, see `loss_capi`). Its gradients come only from that loss: the teacher backbone runs
    without gradients.
    """

    def __init__(self, config: CapiConfig):
        super().__init__()
        self.config = config
        # Own parameters rather than an nn.Linear: its N(0, 1) init must not be overwritten by the generic Linear init.
        self.weight = nn.Parameter(torch.zeros(config.num_prototypes, config.hidden_size))
        self.bias = nn.Parameter(torch.zeros(config.num_prototypes)) if config.clustering_bias else None

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: (positions, batch, D). Returns (assignments (positions, batch, K) without grad, loss)."""
        config = self.config
        logits = nn.functional.linear(nn.functional.normalize(tokens, dim=-1, p=2, eps=1e-7), self.weight, self.bias)
        # Under --bf16 the logits are bfloat16 (one matmul, as the original's); the Sinkhorn and both cross-entropies
        # run in float32 with autocast off (hf_mim.losses), so the assignments are float32.
        assignments = sinkhorn_targets(
            logits, config.sinkhorn_iterations, config.target_temp, config.positionwise_sinkhorn
        )
        return assignments, clustering_loss(assignments, logits, config.clustering_pred_temp)


class CapiPredictionHead(nn.Module):
    """The student's weight-normalised, L2-normalised linear head (original `L2NormLinear`, no bias).

    logits = normalize(x) @ W^T with W_r = v_r * g_r / (||v_r|| + 1e-8) (the original's weight norm, note the +1e-8).
    g is `magnitude` (K, 1, trainable) and v is `direction` (K, D); they are the original's `weight_g` / `weight_v`,
    renamed because transformers rewrites `weight_g`/`weight_v` keys as torch weight-norm parametrizations.
    """

    def __init__(self, config: CapiConfig):
        super().__init__()
        self.magnitude = nn.Parameter(torch.ones(config.num_prototypes, 1))
        self.direction = nn.Parameter(torch.zeros(config.num_prototypes, config.decoder_hidden_size))

    def weight(self) -> torch.Tensor:
        return self.direction * (self.magnitude / (self.direction.norm(dim=1, keepdim=True) + 1e-8))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        eps = 1e-6 if hidden_states.dtype == torch.float16 else 1e-12
        return nn.functional.linear(nn.functional.normalize(hidden_states, dim=-1, eps=eps), self.weight())


@dataclass
class CapiForPreTrainingOutput(ModelOutput):
    """
    loss (`torch.FloatTensor`): student_loss + clustering_loss (the two have disjoint gradients, so one backward of
        the sum equals the original's two backward passes).
    student_loss (`torch.FloatTensor`): cross-entropy of the student's predictions against the teacher assignments.
    clustering_loss (`torch.FloatTensor`): the clustering head's own loss.
    target_entropy (`torch.FloatTensor`): mean entropy of the Sinkhorn targets (collapse shows as a drop).
    student_logits (`(n_predict_total, num_prototypes)`): prediction-head logits (before the temperature).
    targets (`(n_predict_total, num_prototypes)`): teacher assignments at the predicted positions.
    predictions (`(n_predict_total, decoder_hidden_size)`): normalised predictor outputs, image-major.
    teacher_patch_tokens (`(batch, num_patches, hidden_size)`): teacher encoder output (registers removed).
    pooled_features (`(batch, hidden_size)`): mean teacher patch token, for feature-health monitoring.
    hidden_states (`tuple`, *optional*): student-encoder input embeddings and block outputs, each
        `(batch, num_register_tokens + n_visible, hidden_size)`, when asked (argument or config).
    attentions (`tuple`, *optional*): student-encoder attention probabilities, each
        `(batch, heads, tokens, tokens)`, when asked.
    """

    loss: torch.FloatTensor | None = None
    student_loss: torch.FloatTensor | None = None
    clustering_loss: torch.FloatTensor | None = None
    target_entropy: torch.FloatTensor | None = None
    student_logits: torch.FloatTensor | None = None
    targets: torch.FloatTensor | None = None
    predictions: torch.FloatTensor | None = None
    teacher_patch_tokens: torch.FloatTensor | None = None
    pooled_features: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None

    # The fields a trainer logs next to `loss` (MimPretrainingTrainer): the loss components and the target entropy.
    loss_parts: ClassVar[tuple[str, ...]] = ("student_loss", "clustering_loss", "target_entropy")


class CapiForPreTraining(EmaTeacherMixin, CapiPreTrainedModel):
    """The full CAPI objective: student encoder + predictor (`capi`), EMA teacher (`teacher`, same architecture),
    online clustering head on the teacher's patch tokens, and the student's prediction head.

    Pass `visible_indices` / `predict_indices` (per-image (B, n) or the original's flat absolute indices) for
    deterministic runs; otherwise CAPI's inverse-block masks are drawn from torch's global RNG. The teacher is updated
    by `update_teacher(momentum)` after each optimizer step (the trainer does it). `model.teacher` is a complete
    `CapiModel`: the EMA weights CAPI releases. A bare `CapiModel` checkpoint (e.g. a converted release) also loads:
    the teacher then starts as a copy of the student, as CAPI starts training.

    Sharding: wrap the blocks (`_no_split_modules`) and the root, as accelerate's FSDP2 transformer-based policy does.
    If you also `fully_shard` `model.capi` / `model.teacher` themselves, register their `encode` and `predict` methods
    with `torch.distributed.fsdp.register_fsdp_forward_method` (they are called instead of `forward`).
    """

    def __init__(self, config: CapiConfig):
        super().__init__(config)
        self.capi = CapiModel(config)
        self.teacher = CapiModel(config)
        self.clustering_head = CapiClusteringHead(config)
        self.prediction_head = CapiPredictionHead(config)
        self.mask_generator = self.build_mask_generator(config)
        self.post_init()
        # post_init inherits the backbone's ignore patterns; every key of a pretraining folder is expected here, so an
        # unexpected one must be reported.
        self._keys_to_ignore_on_load_unexpected = set()
        self.init_teacher()

    @staticmethod
    def build_mask_generator(config: CapiConfig) -> InverseBlockMasking:
        """CAPI's inverse-block masks as `config` describes them; the one place the mask settings are read. The model
        keeps it as `mask_generator` (drawn from when no masks are given) and a data collator takes it from there
        (`PretrainingCollator.for_model`)."""
        return InverseBlockMasking(
            config.mask_ratio, config.prediction_subsampling, config.mask_min_aspect, roll=config.mask_roll
        )

    @staticmethod
    def _absolute_indices(indices: torch.Tensor, num_tokens: int) -> torch.Tensor:
        return to_absolute(indices, num_tokens) if indices.ndim == 2 else indices

    student_attribute, teacher_attribute = "capi", "teacher"

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        visible_indices: torch.Tensor | None = None,
        predict_indices: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> CapiForPreTrainingOutput | tuple:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        batch, _, height, width = pixel_values.shape
        grid = (height // self.config.patch_size, width // self.config.patch_size)
        num_tokens = grid[0] * grid[1]
        if (visible_indices is None) != (predict_indices is None):
            raise ValueError("Pass both visible_indices and predict_indices, or neither.")
        if visible_indices is None:
            masks = self.mask_generator(batch, grid)
            visible_indices, predict_indices = masks.visible_indices, masks.predict_indices
        visible = self._absolute_indices(visible_indices, num_tokens).to(pixel_values.device)
        predict = self._absolute_indices(predict_indices, num_tokens).to(pixel_values.device)
        num_registers = self.config.num_register_tokens

        # Teacher: full image, no gradients; clustering head on its patch tokens laid out (positions, batch, D).
        with torch.no_grad():
            teacher_tokens = self.teacher.encode(pixel_values).tokens[:, num_registers:]
        assignments, clustering_ce = self.clustering_head(teacher_tokens.transpose(0, 1))
        # predict holds image-major flat indices b * N + n; assignments are (N, B, K): gather the rows at n * B + b
        # directly instead of copying the whole tensor into image-major order first.
        positions, batch_size = assignments.shape[:2]
        targets = assignments.flatten(0, 1).index_select(0, (predict % positions) * batch_size + predict // positions)

        # Student: visible patches only; predictor queries at the positions to predict.
        student = self.capi.encode(pixel_values, visible, output_hidden_states, output_attentions)
        query_coords = student.patch_coords.flatten(0, 1)[predict].reshape(batch, -1, 2)
        predictions = self.capi.predict(student, query_coords).flatten(0, 1)
        student_logits = self.prediction_head(predictions)
        student_ce = student_loss(targets, student_logits, self.config.student_temp)

        output = CapiForPreTrainingOutput(
            loss=student_ce + clustering_ce,
            student_loss=student_ce,
            clustering_loss=clustering_ce,
            target_entropy=target_entropy(targets),
            student_logits=student_logits,
            targets=targets,
            predictions=predictions,
            teacher_patch_tokens=teacher_tokens,
            pooled_features=teacher_tokens.mean(dim=1),
            hidden_states=student.hidden_states,
            attentions=student.attentions,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "CapiModel",
    "CapiForImageClassification",
    "CapiForPreTraining",
    "CapiForPreTrainingOutput",
    "CapiPreTrainedModel",
    "CapiModelOutput",
]
