"""CAE: BEiT-style encoder (`CaeModel`), classification heads for CAE's three protocols, and the pretraining model of
CAE v1 and v2 (`CaeForPreTraining`: latent regressor, v1 alignment + token decoder, v2 latent head). Composed from
`hf_mim.layers`."""

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from ...layers import (
    Attention,
    Encoding,
    LayerScale,
    Mlp,
    PatchEmbeddings,
    RelativePositionBias,
    SelfAttentionBlock,
    drop_path_schedule,
    encode_blocks,
    relative_position_index,
    residual_with_drop_path,
    resize_position_embeddings,
    sincos_2d_position_embedding,
)
from ...losses import autocast_off, runs_in_float32
from ...masking import BlockMasking
from ...modeling_utils import RemoteCodeExportMixin, classification_output, output_flags
from .configuration_cae import CaeConfig
from .loss_cae import v1_losses, v2_cosine_loss


def cae_position_table(width: int, grid: int) -> torch.Tensor:
    """(1, 1 + grid^2, width): CAE's fixed sin-cos table, [sin(row), cos(row), sin(col), cos(col)] (the first half
    encodes the row, unlike MAE / I-JEPA), with a zero row for the cls token."""
    table = sincos_2d_position_embedding(width, grid, grid, first_half="row")
    return torch.cat([torch.zeros(1, width), table])[None]


# In CPU training at CAE's short lengths (19-37 tokens in benchmarks/benchmark_cae.py), "sdpa" runs as two batched
# matmuls around a softmax (`hf_mim.layers.attention.matmul_attention`, as the original computes it), which is faster
# there than torch's CPU flash kernel: up to this many keys (see `Attention.attention_function`).
MATMUL_ATTENTION_MAX_KV_TOKENS = 40


def _block_kwargs(config: CaeConfig, width: int, heads: int, intermediate: int, layer_scale: float, drop_path: float):
    """The BEiT-style pre-norm block of the encoder and the v1 decoder: q and v biases, none on k; layer scale."""
    return dict(
        hidden_size=width, num_heads=heads, intermediate_size=intermediate, norm_eps=config.layer_norm_eps,
        qkv_bias=True, key_bias=False, hidden_act=config.hidden_act, layer_scale_init=layer_scale,
        drop_path_rate=drop_path,
    )  # fmt: skip


def _set_layer_scale_init(blocks, value: float) -> None:
    """Record each block's layer-scale init value on its `LayerScale`s: `_init_weights` restores it from there (the
    encoder's and the decoder's differ)."""
    for block in blocks:
        for name in ("layer_scale1", "layer_scale2"):
            scale = getattr(block, name)
            if isinstance(scale, LayerScale):
                scale._init_value = value


def _blocks(config: CaeConfig, width: int, heads: int, intermediate: int, layer_scale: float, depth: int):
    """`depth` such blocks on CAE's drop-path schedule, with CAE's CPU speed paths: one qkv matmul (as the
    original's Linear(dim, 3 * dim)) and `matmul_attention` at short lengths."""
    rates = drop_path_schedule(config.drop_path_rate, depth)
    blocks = nn.ModuleList(
        SelfAttentionBlock(config, **_block_kwargs(config, width, heads, intermediate, layer_scale, rate))
        for rate in rates
    )
    for block in blocks:
        block.attention.matmul_max_kv_tokens = MATMUL_ATTENTION_MAX_KV_TOKENS
        block.attention.fuse_qkv = True
        for projection in (block.attention.q_proj, block.attention.k_proj, block.attention.v_proj):
            projection._cae_role = "fused_qkv"  # initialised as the original's one qkv Linear (`_init_weights`)
    _set_layer_scale_init(blocks, layer_scale)
    return blocks


def _masked_count(bool_masked_pos: torch.Tensor, expected: int | None = None) -> int:
    """The number of masked patches of every image (they all need the same).

    Without `expected` it is read from the mask, a host sync: the encoder given a mask of its own in eager mode
    accepts any count. With `expected` (`config.num_masking_patches`, the count CAE's mask generators draw) every
    shape depends on the config alone, as the training step and torch.compile / torch.export need: the mask is
    checked against it on the host when it is there (eager), else on the device (`torch._assert_async`, no sync).
    """
    counts = bool_masked_pos.sum(dim=1)
    if expected is None or (bool_masked_pos.device.type == "cpu" and not torch.compiler.is_compiling()):
        found = counts.tolist()
        if len(set(found)) > 1 or (expected is not None and found and found[0] != expected):
            wanted = "the same number of" if expected is None else f"config.num_masking_patches={expected}"
            raise ValueError(f"Every image needs {wanted} masked patches; got {found}.")
        return found[0] if found else expected or 0
    message = f"Every image needs config.num_masking_patches={expected} masked patches."
    torch._assert_async(torch.all(counts == expected), message)
    return expected


def _patch_order(bool_masked_pos: torch.Tensor) -> torch.Tensor:
    """(B, N) each image's patch positions, its visible ones first, then its masked ones, each in row-major order:
    a stable sort of the mask. Sorted once per mask; every split of that batch (`_split_visible`) reuses it."""
    return torch.argsort(bool_masked_pos, dim=1, stable=True)


def _split_visible(
    tokens: torch.Tensor, order: torch.Tensor, num_masked: int, keep_masked: bool = False
) -> torch.Tensor:
    """(B, N, D) tokens -> (B, K, D) at the visible (or the `num_masked` masked) positions, row-major, by the mask's
    `_patch_order`: a gather of a size known in advance, where boolean indexing would wait for the device and give
    torch.compile / torch.export a data-dependent shape. The same tokens as `tokens[~bool_masked_pos]` (or
    `[bool_masked_pos]`)."""
    num_visible = tokens.shape[1] - num_masked
    index = order[:, num_visible:] if keep_masked else order[:, :num_visible]
    return torch.gather(tokens, 1, index[..., None].expand(-1, -1, tokens.shape[-1]))


@runs_in_float32
def _unit_vectors(x: torch.Tensor) -> torch.Tensor:
    """v2's L2-normalised head output, in float32 under half precision as the losses (`loss_cae`) it feeds."""
    return F.normalize(x, dim=-1)


class CaeEmbeddings(nn.Module):
    """Patch embedding + cls token + the fixed sin-cos table (stored, not trained), interpolated bicubically for
    other input sizes (the original asserts its training size)."""

    def __init__(self, config: CaeConfig):
        super().__init__()
        self.config = config
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.patch_embeddings = PatchEmbeddings(config.patch_size, config.num_channels, config.hidden_size)
        self.position_embeddings = nn.Parameter(
            torch.zeros(1, 1 + config.grid_size**2, config.hidden_size), requires_grad=False
        )

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None,
        keep_masked: bool = False,
        num_masked: int | None = None,
        patch_order: torch.Tensor | None = None,
    ):
        patches, grid = self.patch_embeddings(pixel_values)
        table = self.position_embeddings.to(patches.dtype)
        native = (self.config.grid_size, self.config.grid_size)
        patches = patches + resize_position_embeddings(table[:, 1:], native, grid)
        if bool_masked_pos is not None:
            if bool_masked_pos.shape != patches.shape[:2]:
                raise ValueError(
                    f"bool_masked_pos must be (batch, {patches.shape[1]}) for this input, got "
                    f"{tuple(bool_masked_pos.shape)}."
                )
            mask = bool_masked_pos.bool()
            if num_masked is None:  # any count in eager mode; traced, the config's (a count read would be a sync)
                traced = torch.compiler.is_compiling()
                num_masked = _masked_count(mask, self.config.num_masking_patches if traced else None)
            order = _patch_order(mask) if patch_order is None else patch_order
            patches = _split_visible(patches, order, num_masked, keep_masked)
        cls = (self.cls_token + table[:, :1]).expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1), grid


class CaePreTrainedModel(RemoteCodeExportMixin, PreTrainedModel):
    config_class = CaeConfig
    config: CaeConfig
    base_model_prefix = "cae"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["SelfAttentionBlock", "CaeRegressorBlock"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The original pretraining model's init: every Linear xavier-uniform with zero bias (the top-level re-init of
        CAE); a self-attention block's q / k / v weights with the bound of the original's one fused (D, 3D) `qkv`
        Linear, sqrt(6 / 4D), not sqrt(6 / 2D) each (the regressor's cross-attention has three Linears there too);
        patch embedding / cls / mask tokens trunc-normal(0.02) cut at +-1 std (the original's `trunc_normal_` passes
        a=-std, b=std: a std of 0.0108, not 0.02); LayerNorm (1, 0), layer scales at their init value, the fixed
        sin-cos tables; the classification heads as their protocols (fine-tune trunc-normal 0.02 x 0.001, linear
        probe trunc-normal 0.01, attentive N(0, 0.01), query token 0)."""
        config, std = self.config, self.config.initializer_range
        role = getattr(module, "_cae_role", None)
        if isinstance(module, nn.Linear):
            if role == "finetune_head":  # trunc_normal(0.02) x init_scale 0.001 (the cut at +-2 never binds)
                init.trunc_normal_(module.weight, std=0.02 * 1e-3)
                init.zeros_(module.bias)
            elif role in ("linear_head", "attentive_head"):
                (init.trunc_normal_ if role == "linear_head" else init.normal_)(module.weight, std=0.01)
                init.zeros_(module.bias)
            else:
                if role == "fused_qkv":  # xavier of the original's one (D, 3D) Linear: bound sqrt(6 / (D + 3D))
                    bound = math.sqrt(6.0 / (module.in_features + 3 * module.out_features))
                    init.uniform_(module.weight, -bound, bound)
                else:
                    init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.trunc_normal_(module.weight, std=std, a=-std, b=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm1d) and module.running_mean is not None:
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, LayerScale):
            init.constant_(module.lambda1, getattr(module, "_init_value", config.layer_scale_init_value))
        elif isinstance(module, CaeEmbeddings):
            init.trunc_normal_(module.cls_token, std=std, a=-std, b=std)
            init.copy_(module.position_embeddings, cae_position_table(config.hidden_size, config.grid_size))
        elif isinstance(module, CaeForPreTraining):
            init.trunc_normal_(module.mask_token, std=std, a=-std, b=std)
            init.copy_(
                module.regressor_position_embeddings, cae_position_table(config.decoder_hidden_size, config.grid_size)
            )
        elif isinstance(module, CaeAttentiveHead):
            init.zeros_(module.query_token)
        elif isinstance(module, RelativePositionBias):  # zeros, as the original's; the index from the grid
            init.zeros_(module.relative_position_bias_table)
            init.copy_(module.relative_position_index, relative_position_index(module.grid))

    @torch.no_grad()
    def resize_to_image_size(self, image_size: int) -> None:
        """Adapt the encoder to fine-tune at another resolution, as the original fine-tuning does when it loads a
        checkpoint: the stored position table bicubically resized (what the forward would interpolate on the fly)
        and every relative position table rescaled with the original's geometric cubic resampling
        (`RelativePositionBias.resize_`); `config.image_size` becomes `image_size`, so the model saves and reloads
        at the new size. Encoder models only (`CaeModel`, `CaeForImageClassification`): a pretraining model's
        regressor has its own table and the pretraining recipe never changes resolution."""
        if isinstance(self, CaeForPreTraining):
            raise ValueError("resize_to_image_size adapts an encoder for fine-tuning, not a CaeForPreTraining model.")
        config = self.config
        if image_size % config.patch_size:
            raise ValueError(f"image_size={image_size} is not a multiple of patch_size={config.patch_size}.")
        old, new = (config.grid_size,) * 2, (image_size // config.patch_size,) * 2
        embeddings = self.base_model.embeddings
        table = embeddings.position_embeddings.data
        patches = resize_position_embeddings(table[:, 1:], old, new)
        embeddings.position_embeddings = nn.Parameter(torch.cat([table[:, :1], patches], dim=1), requires_grad=False)
        for module in self.modules():
            if isinstance(module, RelativePositionBias):
                module.resize_(new)
        config.image_size = image_size


@dataclass
class CaeModelOutput(BaseModelOutputWithPooling):
    """BaseModelOutputWithPooling plus `feature_map` (B, h, w, D): the normed patch tokens as a spatial map (only
    without a mask)."""

    feature_map: torch.FloatTensor | None = None


class CaeModel(CaePreTrainedModel):
    """The CAE encoder. `last_hidden_state`: [cls, patches row-major] after the final LayerNorm; with
    `bool_masked_pos` (B, N) (True = masked) only cls + the visible patches, as the original pretraining encoder.
    `pooler_output` follows `config.pooling` ("cls" or "mean", see `CaeConfig`)."""

    _keys_to_ignore_on_load_unexpected = [
        r"^mask_token$", r"^regressor", r"^encoder_to_regressor", r"^decoder\.", r"^classifier", r"^pooler\.",
    ]  # fmt: skip

    def __init__(self, config: CaeConfig):
        super().__init__(config)
        self.embeddings = CaeEmbeddings(config)
        self.layers = _blocks(config, config.hidden_size, config.num_attention_heads, config.intermediate_size,
                              config.layer_scale_init_value, config.num_hidden_layers)  # fmt: skip
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # BEiT-style relative position bias of the fine-tuning / segmentation recipes (off by default): one table
        # shared by every block (`relative_position_bias`) and / or one per block (`layers.<i>.relative_position_bias`,
        # so layer-wise lr decay gives it its block's depth, as the original's `blocks.<i>.attn.` table)
        grid, heads = (config.grid_size, config.grid_size), config.num_attention_heads
        self.relative_position_bias = (
            RelativePositionBias(grid, heads) if config.use_shared_relative_position_bias else None
        )
        if config.use_relative_position_bias:
            for block in self.layers:
                block.relative_position_bias = RelativePositionBias(grid, heads)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def _attention_biases(self, grid: tuple[int, int], dtype: torch.dtype, masked: bool) -> list | None:
        """Each block's additive attention bias (1, heads, 1 + hw, 1 + hw): its own table's plus the shared one's
        (the original adds both when both are on); None without relative position bias."""
        shared = self.relative_position_bias
        if shared is None and not self.config.use_relative_position_bias:
            return None
        if masked:
            raise ValueError(
                "The relative position bias (config.use_relative_position_bias / use_shared_relative_position_bias, "
                "of CAE's fine-tuning and segmentation recipes) covers the full grid: no bool_masked_pos with it."
            )
        shared_bias = None if shared is None else shared(grid)
        biases = []
        for block in self.layers:
            own = getattr(block, "relative_position_bias", None)
            bias = shared_bias if own is None else own(grid) if shared_bias is None else own(grid) + shared_bias
            biases.append(bias[None].to(dtype))
        return biases

    def encode(self, pixel_values, bool_masked_pos=None, keep_masked=False, output_hidden_states=False,
               output_attentions=False, num_masked=None, patch_order=None) -> Encoding:  # fmt: skip
        """Encoder pass on [cls, patches] (with `bool_masked_pos`: the visible patches, or the masked ones with
        `keep_masked`); the result's `last_hidden_state` is the un-normed block output (B, 1 + K, D), `tokens` the
        same after the final LayerNorm. `num_masked`: the masked patches per image when the caller knows it (else read
        from the mask, see `_masked_count`); `patch_order`: the mask's `_patch_order` when the caller has it."""
        hidden, grid = self.embeddings(pixel_values, bool_masked_pos, keep_masked, num_masked, patch_order)
        biases = self._attention_biases(grid, hidden.dtype, bool_masked_pos is not None)
        return encode_blocks(
            self.layers, self.layernorm, hidden, grid,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions, attention_masks=biases,
        )  # fmt: skip

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool | None = None,  # accepted for transformers compatibility; always on
    ) -> CaeModelOutput | tuple:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        encoding = self.encode(
            pixel_values,
            bool_masked_pos,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        normed = encoding.tokens
        if self.config.pooling == "cls":
            pooled = normed[:, 0]
        else:  # the fine-tuning feature: the final norm of the mean of the un-normed patch tokens
            pooled = self.layernorm(encoding.last_hidden_state[:, 1:].mean(dim=1))
        feature_map = None
        if bool_masked_pos is None:
            feature_map = normed[:, 1:].reshape(normed.shape[0], *encoding.grid, normed.shape[-1])
        output = CaeModelOutput(
            last_hidden_state=normed,
            pooler_output=pooled,
            hidden_states=encoding.hidden_states,
            attentions=encoding.attentions,
            feature_map=feature_map,
        )
        return output if return_dict else output.to_tuple()


class CaeCrossAttention(nn.Module):
    """The regressor's (and the attentive probe's) attention: LayerNorms on the query, key and value inputs (the
    position embeddings are added to queries and keys before their norms, never to values), BEiT-style q / v biases."""

    def __init__(self, config: CaeConfig, width: int, heads: int):
        super().__init__()
        self.norm1_q = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.norm1_k = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.norm1_v = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.cross_attention = Attention(config, width, heads, qkv_bias=True, key_bias=False)
        self.cross_attention.matmul_max_kv_tokens = MATMUL_ATTENTION_MAX_KV_TOKENS

    def forward(self, queries, context, query_positions=None, context_positions=None, output_attentions=False):
        q = queries if query_positions is None else queries + query_positions
        k = context if context_positions is None else context + context_positions
        return self.cross_attention.attend(
            self.norm1_q(q), self.norm1_k(k), self.norm1_v(context), output_attentions=output_attentions
        )


class CaeRegressorBlock(GradientCheckpointingLayer):
    """CAE's latent-regressor block (hybrid pre/post norm): masked queries attend to [visible latents, the queries
    themselves]; `h = x + gamma1 * attn(...)`, `h = norm2(h)`, `x = h + gamma2 * mlp(h)`."""

    def __init__(self, config: CaeConfig, drop_path: float):
        super().__init__()
        width = config.decoder_hidden_size
        self.attention = CaeCrossAttention(config, width, config.decoder_num_attention_heads)
        self.norm2 = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.mlp = Mlp(width, config.decoder_intermediate_size, config.hidden_act)
        self.layer_scale1 = LayerScale(width, config.decoder_layer_scale_init_value)
        self.layer_scale2 = LayerScale(width, config.decoder_layer_scale_init_value)
        self.layer_scale1._init_value = self.layer_scale2._init_value = config.decoder_layer_scale_init_value
        self.drop_path_rate = drop_path

    def forward(self, queries, visible, query_positions, visible_positions, output_attentions=False):
        context = torch.cat([visible, queries], dim=1)
        context_positions = torch.cat([visible_positions, query_positions], dim=1)
        captured = []

        def attention_branch(x):
            out, weights = self.attention(x, context, query_positions, context_positions, output_attentions)
            captured.append(weights)
            return self.layer_scale1(out)

        hidden = residual_with_drop_path(queries, attention_branch, self.drop_path_rate, "naive", self.training)
        hidden = self.norm2(hidden)
        hidden = residual_with_drop_path(
            hidden, lambda x: self.layer_scale2(self.mlp(x)), self.drop_path_rate, "naive", self.training
        )
        return hidden, captured[0]


@dataclass
class CaeForPreTrainingOutput(ModelOutput):
    """
    loss: v1: cross-entropy on the masked patches' token ids + alignment_loss_weight x MSE(latent_predictions,
        latent_targets); v2: mean over tokens of 1 - cos(logits, targets). None without targets.
    prediction_loss: the cross-entropy (v1) or cosine loss (v2) part.
    alignment_loss: v1's weighted MSE part.
    logits: v1 (B * M, vocab) token logits of the masked patches (batch-major, row-major); v2 (B, 1 + N, out_dim)
        L2-normalised predictions for [cls, visible, masked].
    latent_predictions: (B, M, D_dec) the regressor's masked predictions (v1 after the regressor norm; v2 after the
        decoder norm), as the original returns them.
    latent_targets: v1 (B, M, D_dec) the encoder run on the masked patches (no gradient).
    pooled_features: (B, D) cls token of the visible-patch encoder output, for feature-health logging.
    """

    loss: torch.FloatTensor | None = None
    prediction_loss: torch.FloatTensor | None = None
    alignment_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    latent_predictions: torch.FloatTensor | None = None
    latent_targets: torch.FloatTensor | None = None
    pooled_features: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None

    # The fields a trainer logs next to `loss` (MimPretrainingTrainer); v2 has no alignment part (None: not logged).
    loss_parts: ClassVar[tuple[str, ...]] = ("prediction_loss", "alignment_loss")


class CaeDecoder(nn.Module):
    """v1: self-attention blocks over the masked predictions, norm, vocabulary head; v2: norm + head only."""

    def __init__(self, config: CaeConfig):
        super().__init__()
        width = config.decoder_hidden_size
        self.layers = _blocks(config, width, config.decoder_num_attention_heads, config.decoder_intermediate_size,
                              config.decoder_layer_scale_init_value, config.decoder_num_layers)  # fmt: skip
        self.layernorm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        out = config.vocab_size if config.cae_version == 1 else config.target_hidden_size
        self.head = nn.Linear(width, out)


class CaeForPreTraining(CaePreTrainedModel):
    """CAE's pretraining model (v1 or v2 by `config.cae_version`). Targets:

    * v1: `labels` (B, N) int64 token ids of every patch (DALL-E tokenizer of the 112 px view); or attach a tokenizer
      with `set_target_model(...)` and pass `target_pixel_values`.
    * v2: `target_features` (B, 1 + N, out_dim) teacher features of [cls, patches row-major] (CLIP's projected tokens);
      or attach a teacher and pass `target_pixel_values`.

    Without targets the forward returns every output but no loss (parity checks need no tokenizer / teacher). The v1
    alignment target is the same encoder run on the masked patches without gradient (no second copy of the weights).
    """

    _keys_to_ignore_on_load_unexpected = [r"^classifier", r"^pooler\."]

    def __init__(self, config: CaeConfig):
        super().__init__(config)
        self.cae = CaeModel(config)
        width, dec = config.hidden_size, config.decoder_hidden_size
        if width != dec:
            self.encoder_to_regressor = nn.Linear(width, dec)
            self.encoder_to_regressor_norm = nn.LayerNorm(dec, eps=config.layer_norm_eps)
        else:
            self.encoder_to_regressor = self.encoder_to_regressor_norm = None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec))
        self.regressor_position_embeddings = nn.Parameter(
            torch.zeros(1, 1 + config.grid_size**2, dec), requires_grad=False
        )
        rates = drop_path_schedule(config.drop_path_rate, config.regressor_num_layers)
        self.regressor = nn.ModuleList(CaeRegressorBlock(config, rate) for rate in rates)
        self.regressor_layernorm = nn.LayerNorm(dec, eps=config.layer_norm_eps) if config.cae_version == 1 else None
        self.decoder = CaeDecoder(config)
        self._target_model = None  # a tokenizer (v1) or teacher (v2): not a submodule, never saved or optimised
        self.mask_generator = self.build_mask_generator(config)
        self.post_init()

    @staticmethod
    def build_mask_generator(config: CaeConfig) -> BlockMasking:
        """CAE's block masks as `config` describes them; the one place the mask settings are read. The model keeps it
        as `mask_generator` (drawn from when no `bool_masked_pos` is given) and a data collator takes it from there
        (`TwoViewCollator.for_model`)."""
        return BlockMasking(config.num_masking_patches, config.min_masking_patches_per_block)

    # ------------------------------------------------------------------ targets
    def set_target_model(self, target_model: nn.Module | None) -> None:
        """Attach the frozen target network: v1 a `DalleTokenizer` (`get_codebook_indices`), v2 a
        `CLIPVisionModelWithProjection`-like teacher (see `hf_mim.models.cae.targets`). It is kept outside the module
        tree: not in the state dict, not in `parameters()` (so never optimised, sharded or averaged)."""
        codes = getattr(getattr(target_model, "config", None), "vocab_size", None)
        if self.config.cae_version == 1 and codes is not None and codes > self.config.vocab_size:
            # caught here rather than as an index error (or a CUDA assert) in the first cross-entropy
            raise ValueError(
                f"The tokenizer has {codes} codes but the CAE head predicts {self.config.vocab_size} "
                f"(config.vocab_size): use a tokenizer with at most {self.config.vocab_size} codes or set vocab_size."
            )
        if target_model is not None:
            target_model.requires_grad_(False).eval()
        self.__dict__["_target_model"] = target_model

    @property
    def target_model(self):
        return self.__dict__.get("_target_model")

    @torch.no_grad()
    def compute_targets(self, target_pixel_values: torch.Tensor) -> torch.Tensor:
        model = self.target_model
        if model is None:
            raise ValueError(
                "target_pixel_values needs a target model: call set_target_model(tokenizer or teacher) first, or pass "
                "labels (v1) / target_features (v2)."
            )
        device = target_pixel_values.device
        if next(iter(model.parameters()), torch.empty(0)).device != device:
            model.to(device)
        if self.config.cae_version == 1:
            # The ids are an argmax whose near-ties bfloat16 flips (measured under --bf16: 1.1 % of the ids, a 15x
            # larger loss gap to float32), so the tokenizer runs outside autocast, as in the original's (BEiT's) loop.
            dtype = next(iter(model.parameters()), target_pixel_values).dtype
            with autocast_off(target_pixel_values):
                return model.get_codebook_indices(target_pixel_values.to(dtype))
        return model.get_target_features(target_pixel_values)

    # ------------------------------------------------------------------ forward
    def _project(self, latents: torch.Tensor) -> torch.Tensor:
        if self.encoder_to_regressor is None:
            return latents
        return self.encoder_to_regressor_norm(self.encoder_to_regressor(latents))

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        target_features: torch.Tensor | None = None,
        target_pixel_values: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> CaeForPreTrainingOutput | tuple:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        config = self.config
        output_attentions, output_hidden_states, return_dict = output_flags(
            config, output_attentions, output_hidden_states, return_dict
        )
        batch = pixel_values.shape[0]
        grid = (pixel_values.shape[-2] // config.patch_size, pixel_values.shape[-1] // config.patch_size)
        if bool_masked_pos is None:
            bool_masked_pos = self.mask_generator(batch, grid).bool_masked_pos.to(pixel_values.device)
        mask = bool_masked_pos.bool()
        num_masked = _masked_count(mask, config.num_masking_patches)  # from the config: no host sync
        order = _patch_order(mask)  # sorted once: both encoder passes, the positions and the targets split by it

        encoding = self.cae.encode(
            pixel_values, mask, False, output_hidden_states, output_attentions, num_masked, patch_order=order
        )
        latents = self._project(encoding.tokens)  # (B, 1 + V, D_dec)
        visible = latents[:, 1:]
        positions = resize_position_embeddings(
            self.regressor_position_embeddings[:, 1:].to(latents.dtype), (config.grid_size,) * 2, encoding.grid
        ).expand(batch, -1, -1)
        masked_positions = _split_visible(positions, order, num_masked, keep_masked=True)
        visible_positions = _split_visible(positions, order, num_masked)
        queries = self.mask_token.to(latents.dtype).expand(batch, masked_positions.shape[1], -1)
        for block in self.regressor:
            queries, _ = block(queries, visible, masked_positions, visible_positions)

        latent_targets = None
        if config.cae_version == 1:
            predictions = self.regressor_layernorm(queries)
            decoded = predictions + masked_positions
            for layer in self.decoder.layers:
                decoded, _ = layer(decoded)
            logits = self.decoder.head(self.decoder.layernorm(decoded)).flatten(0, 1)
            with torch.no_grad():  # the same encoder on the masked patches: the alignment target
                target_encoding = self.cae.encode(
                    pixel_values, mask, keep_masked=True, num_masked=num_masked, patch_order=order
                )
                latent_targets = self._project(target_encoding.tokens)[:, 1:]
        else:
            norm = self.decoder.layernorm
            predictions = norm(queries)
            tokens = torch.cat([norm(latents[:, :1]), norm(visible), predictions], dim=1)
            logits = _unit_vectors(self.decoder.head(tokens))

        loss = prediction_loss = alignment_loss = None
        if target_pixel_values is not None and labels is None and target_features is None:
            computed = self.compute_targets(target_pixel_values)
            labels, target_features = (computed, None) if config.cae_version == 1 else (None, computed)
        if config.cae_version == 1 and labels is not None:
            token_ids = labels.reshape(-1)
            if labels.shape[:2] == mask.shape:  # every patch's id: keep the masked ones, batch-major, row-major
                token_ids = _split_visible(labels.reshape(batch, -1, 1), order, num_masked, keep_masked=True).flatten()
            prediction_loss, alignment_loss = v1_losses(
                logits, token_ids, predictions, latent_targets, config.alignment_loss_weight
            )
            loss = prediction_loss + alignment_loss
        elif config.cae_version == 2 and target_features is not None:
            targets = torch.cat(
                [target_features[:, :1], _split_visible(target_features[:, 1:], order, num_masked),
                 _split_visible(target_features[:, 1:], order, num_masked, keep_masked=True)], dim=1,
            )  # fmt: skip
            prediction_loss = v2_cosine_loss(logits, targets)
            loss = prediction_loss

        output = CaeForPreTrainingOutput(
            loss=loss,
            prediction_loss=prediction_loss,
            alignment_loss=alignment_loss,
            logits=logits,
            latent_predictions=predictions,
            latent_targets=latent_targets,
            # the cls token normed on its own, the logged value bit for bit (a row of `tokens` can differ in the last bit)
            pooled_features=self.cae.layernorm(encoding.last_hidden_state[:, 0]),
            hidden_states=encoding.hidden_states,
            attentions=encoding.attentions,
        )
        return output if return_dict else output.to_tuple()


class CaeAttentiveHead(nn.Module):
    """CAE's attentive probe: a learned query (zeros) cross-attends to the final-normed tokens - one attention, no
    residual, no MLP - then BatchNorm without affine and a Linear."""

    def __init__(self, config: CaeConfig):
        super().__init__()
        self.query_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.attention = CaeCrossAttention(config, config.hidden_size, config.num_attention_heads)
        self.batch_norm = nn.BatchNorm1d(config.hidden_size, affine=False, eps=1e-6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        query = self.query_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        out, _ = self.attention(query, tokens)
        return self.batch_norm(out[:, 0])


class CaeForImageClassification(CaePreTrainedModel):
    """Heads of CAE's three protocols (`config.classifier_type`): "finetune" (Linear on the mean-pooled feature),
    "linear" (cls feature -> BatchNorm without affine -> Linear, the linear probe) and "attentive" (`CaeAttentiveHead`
    -> Linear; the released script raises, this one works). The fine-tuning recipe's relative position bias (zeros at
    init, trainable): `config.use_relative_position_bias` / `use_shared_relative_position_bias`."""

    _keys_to_ignore_on_load_unexpected = [r"^mask_token$", r"^regressor", r"^encoder_to_regressor", r"^decoder\."]

    def __init__(self, config: CaeConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.cae = CaeModel(config)
        kind = config.classifier_type
        self.pooler = None
        if kind == "linear":
            self.pooler = nn.BatchNorm1d(config.hidden_size, affine=False, eps=1e-6)
        elif kind == "attentive":
            self.pooler = CaeAttentiveHead(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.classifier._cae_role = f"{kind}_head"
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
    ):
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        encoding = self.cae.encode(
            pixel_values, output_hidden_states=output_hidden_states, output_attentions=output_attentions
        )
        kind = self.config.classifier_type
        if kind == "finetune":  # the final norm of the mean of the un-normed patch tokens, whatever `pooling` says
            features = self.cae.layernorm(encoding.last_hidden_state[:, 1:].mean(dim=1))
        elif kind == "linear":  # the cls token normed on its own: `tokens[:, 0]` can differ in the last bit
            features = self.pooler(self.cae.layernorm(encoding.last_hidden_state[:, 0]))
        else:
            features = self.pooler(encoding.tokens)
        return classification_output(self, features, labels, encoding, encoding.hidden_states, return_dict)


__all__ = [
    "CaeForImageClassification",
    "CaeForPreTraining",
    "CaeForPreTrainingOutput",
    "CaeModel",
    "CaeModelOutput",
    "CaePreTrainedModel",
    "cae_position_table",
]
