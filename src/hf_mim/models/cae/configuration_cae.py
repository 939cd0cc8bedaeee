"""CAE (v1: DALL-E token targets; v2: CLIP latent targets) configuration."""

import numbers

from transformers import PreTrainedConfig

from ...backbone_utils import ViTBackboneConfigMixin, pop_backbone_kwargs

_CHOICES = {"pooling": ("cls", "mean"), "classifier_type": ("finetune", "linear", "attentive")}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class CaeConfig(ViTBackboneConfigMixin, PreTrainedConfig):
    r"""Configuration of hf_mim's CAE (Chen et al., IJCV 2023) and CAE v2 (Zhang et al., 2022). Defaults: CAE v1 base.

    Args:
        cae_version (`int`, *optional*, defaults to 1): 1 (DALL-E token targets, alignment branch, decoder blocks) or
            2 (CLIP latent targets; no alignment, no decoder blocks).
        image_size (`int`, *optional*, defaults to 224): Pretraining resolution (the position-table grid).
        patch_size (`int`, *optional*, defaults to 16)
        num_channels (`int`, *optional*, defaults to 3)
        hidden_size (`int`, *optional*, defaults to 768): Encoder width.
        num_hidden_layers (`int`, *optional*, defaults to 12)
        num_attention_heads (`int`, *optional*, defaults to 12): (12 also for tiny / small.)
        intermediate_size (`int`, *optional*, defaults to 3072)
        hidden_act (`str`, *optional*, defaults to `"gelu"`): exact GELU.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6)
        layer_scale_init_value (`float`, *optional*, defaults to 0.1): Encoder layer scale (large: 1e-5).
        drop_path_rate (`float`, *optional*, defaults to 0.0): Stochastic depth of encoder, regressor and decoder
            (each linear 0 -> rate over its blocks; the pretraining recipe uses 0.1).
        initializer_range (`float`, *optional*, defaults to 0.02): trunc-normal std of tokens and patch embedding.
        decoder_hidden_size (`int`, *optional*, defaults to 768): Regressor / decoder width (v2 tiny: 96); when it
            differs from `hidden_size` the latents pass through a Linear + LayerNorm first.
        decoder_num_attention_heads (`int`, *optional*, defaults to 12)
        decoder_intermediate_size (`int`, *optional*): 4 x decoder_hidden_size by default.
        decoder_layer_scale_init_value (`float`, *optional*, defaults to 0.1)
        regressor_num_layers (`int`, *optional*, defaults to 4): Latent regressor depth (v2 small / tiny: 1).
        decoder_num_layers (`int`, *optional*, defaults to 4): v1 decoder depth (v2: 0).
        vocab_size (`int`, *optional*, defaults to 8192): v1 target vocabulary (DALL-E tokens).
        target_hidden_size (`int`, *optional*, defaults to 512): v2 target width (CLIP ViT-B/16 projection).
        num_masking_patches (`int`, *optional*): Masked patches per image; default half the grid (98 of 196 for v1
            and v2 base; v2 tiny / small: 30 / 49).
        min_masking_patches_per_block (`int`, *optional*, defaults to 16): BEiT block-masking minimum block size.
        alignment_loss_weight (`float`, *optional*, defaults to 2.0): v1 weight of the latent alignment MSE.
        pooling (`str`, *optional*, defaults to `"cls"`): `pooler_output` of `CaeModel`: `"cls"` (cls token after
            the final LayerNorm: the linear-probe feature) or `"mean"` (the final LayerNorm of the mean of the
            un-normed patch tokens: the fine-tuning feature).
        classifier_type (`str`, *optional*, defaults to `"finetune"`): `CaeForImageClassification` head: `"finetune"`
            (mean pooling + Linear), `"linear"` (cls + BatchNorm without affine + Linear: the linear probe) or
            `"attentive"` (a learned query cross-attending to the normed tokens, no residual / MLP; BatchNorm + Linear).
        use_relative_position_bias (`bool`, *optional*, defaults to `False`): A BEiT-style relative position bias of
            its own in every encoder block (the original's `use_rel_pos_bias`, on in its fine-tuning and segmentation
            recipes): a table of (2h - 1)(2w - 1) + 3 rows per head (h x w the patch grid of `image_size`; the last
            three rows are cls-to-token, token-to-cls and cls-to-cls), zeros at init, trainable, added to the
            attention scores (`hf_mim.layers.relative_position`). The input must have the configured grid.
        use_shared_relative_position_bias (`bool`, *optional*, defaults to `False`): One such table shared by every
            encoder block (the original's `use_shared_rel_pos_bias`); with both on, both are added, as in the original.
        out_features (`list[str]`, *optional*):
            Backbone use (`CaeBackbone`, `AutoBackbone`): the stages whose feature maps are returned, among
            `stage_names` = `["stem", "stage1", ..., "stage<num_hidden_layers>"]` ("stem": the embedding output,
            "stage<i>": the output of block i). Aligned with `out_indices`; default: the last stage.
        out_indices (`list[int]`, *optional*):
            The same choice by index into `stage_names` (`out_indices=[i]` is `hidden_states[i]`).
        backbone_apply_layernorm (`bool`, *optional*, defaults to `True`):
            Backbone use: pass each returned map through the encoder's final norm (the LayerNorm of
            `last_hidden_state`). CAE's UperNet protocol takes the un-normed outputs of blocks 4, 6, 8 and 12 (ViT-B)
            through the adapters: `backbone_apply_layernorm=False, backbone_multiscale=True,
            out_indices=[4, 6, 8, 12]` (ViT-L: `[8, 12, 16, 24]`).
        backbone_multiscale (`bool`, *optional*, defaults to `False`):
            Backbone use: map exactly four chosen stages to 4x, 2x, 1x and 1/2x the patch grid with the BEiT / CAE
            segmentation adapters (`hf_mim.layers.dense.MultiScaleAdapter`), the pyramid an UperNet head takes.
    """

    model_type = "cae"

    def __init__(
        self,
        cae_version: int = 1,
        image_size: int = 224,
        patch_size: int = 16,
        num_channels: int = 3,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-6,
        layer_scale_init_value: float = 0.1,
        drop_path_rate: float = 0.0,
        initializer_range: float = 0.02,
        decoder_hidden_size: int = 768,
        decoder_num_attention_heads: int = 12,
        decoder_intermediate_size: int | None = None,
        decoder_layer_scale_init_value: float = 0.1,
        regressor_num_layers: int = 4,
        decoder_num_layers: int = 4,
        vocab_size: int = 8192,
        target_hidden_size: int = 512,
        num_masking_patches: int | None = None,
        min_masking_patches_per_block: int = 16,
        alignment_loss_weight: float = 2.0,
        pooling: str = "cls",
        classifier_type: str = "finetune",
        backbone_apply_layernorm: bool = True,
        backbone_multiscale: bool = False,
        use_relative_position_bias: bool = False,
        use_shared_relative_position_bias: bool = False,
        **kwargs,
    ):
        out_features, out_indices = pop_backbone_kwargs(kwargs)
        super().__init__(**kwargs)
        self.cae_version = cae_version
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.layer_scale_init_value = layer_scale_init_value
        self.drop_path_rate = drop_path_rate
        self.initializer_range = initializer_range
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.decoder_intermediate_size = decoder_intermediate_size or 4 * decoder_hidden_size
        self.decoder_layer_scale_init_value = decoder_layer_scale_init_value
        self.regressor_num_layers = regressor_num_layers
        self.decoder_num_layers = decoder_num_layers
        self.vocab_size = vocab_size
        self.target_hidden_size = target_hidden_size
        self.num_masking_patches = (
            num_masking_patches if num_masking_patches is not None else (image_size // patch_size) ** 2 // 2
        )
        self.min_masking_patches_per_block = min_masking_patches_per_block
        self.alignment_loss_weight = alignment_loss_weight
        self.pooling = pooling
        self.classifier_type = classifier_type
        self.backbone_apply_layernorm = backbone_apply_layernorm
        self.backbone_multiscale = backbone_multiscale
        self.use_relative_position_bias = use_relative_position_bias
        self.use_shared_relative_position_bias = use_shared_relative_position_bias
        self._store_backbone_outputs(out_features, out_indices)
        self._check_fields()

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    def validate(self):
        super().validate()
        self._check_fields()

    def _check_fields(self) -> None:
        def fail(message: str):
            raise ValueError(f"{type(self).__name__}: {message}")

        if self.cae_version not in (1, 2):
            fail(f"cae_version must be 1 or 2, got {self.cae_version!r}.")
        for name in (
            "image_size", "patch_size", "num_channels", "hidden_size", "num_attention_heads", "intermediate_size",
            "decoder_hidden_size", "decoder_num_attention_heads", "decoder_intermediate_size", "vocab_size",
            "target_hidden_size", "num_masking_patches", "min_masking_patches_per_block",
        ):  # fmt: skip
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                fail(f"{name} must be a positive integer, got {value!r}.")
        for name in ("num_hidden_layers", "regressor_num_layers", "decoder_num_layers"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                fail(f"{name} must be a non-negative integer, got {value!r}.")
        if self.image_size < self.patch_size:
            fail(f"image_size={self.image_size} must be at least patch_size={self.patch_size}.")
        for prefix in ("", "decoder_"):
            width, heads = getattr(self, f"{prefix}hidden_size"), getattr(self, f"{prefix}num_attention_heads")
            if width % heads:
                fail(f"{prefix}hidden_size={width} must be divisible by {prefix}num_attention_heads={heads}.")
            if width % 4:
                fail(f"{prefix}hidden_size={width} must be divisible by 4 (2-D sin-cos position embedding).")
        if self.num_masking_patches >= self.grid_size**2:
            fail(
                f"num_masking_patches={self.num_masking_patches} must leave a visible patch of the {self.grid_size}^2 grid."
            )
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                fail(f"{name} must be one of {', '.join(map(repr, choices))}; got {getattr(self, name)!r}.")
        for name in ("use_relative_position_bias", "use_shared_relative_position_bias"):
            if not isinstance(getattr(self, name), bool):
                fail(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if not 0 <= self.drop_path_rate < 1:
            fail(f"drop_path_rate must lie in [0, 1), got {self.drop_path_rate!r}.")
        if not self.layer_norm_eps > 0:
            fail(f"layer_norm_eps must be positive, got {self.layer_norm_eps!r}.")
        self._check_backbone_fields(fail)

    # ------------------------------------------------------------------ presets
    @classmethod
    def base(cls, **kwargs) -> "CaeConfig":
        """CAE v1 ViT-B/16 (cae_base_*ep releases)."""
        return cls(**kwargs)

    @classmethod
    def large(cls, **kwargs) -> "CaeConfig":
        """CAE v1 ViT-L/16 (layer scale 1e-5)."""
        defaults = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                        layer_scale_init_value=1e-5, decoder_layer_scale_init_value=1e-5, decoder_hidden_size=1024,
                        decoder_num_attention_heads=16)  # fmt: skip
        return cls(**{**defaults, **kwargs})

    @classmethod
    def v2_tiny(cls, **kwargs) -> "CaeConfig":
        """CAE v2 ViT-Tiny/16 at 224 px (preset `cae-v2-vitt16`): a paper architecture, not the toy `tiny`."""
        defaults = dict(cae_version=2, hidden_size=192, num_attention_heads=12, intermediate_size=768,
                        decoder_hidden_size=96, decoder_num_attention_heads=12, regressor_num_layers=1,
                        decoder_num_layers=0, num_masking_patches=30)  # fmt: skip
        return cls(**{**defaults, **kwargs})

    @classmethod
    def v2_small(cls, **kwargs) -> "CaeConfig":
        defaults = dict(cae_version=2, hidden_size=384, num_attention_heads=12, intermediate_size=1536,
                        decoder_hidden_size=384, decoder_num_attention_heads=12, regressor_num_layers=1,
                        decoder_num_layers=0, num_masking_patches=49)  # fmt: skip
        return cls(**{**defaults, **kwargs})

    @classmethod
    def v2_base(cls, **kwargs) -> "CaeConfig":
        return cls(**{"cae_version": 2, "decoder_num_layers": 0, **kwargs})

    @classmethod
    def v2_large(cls, **kwargs) -> "CaeConfig":
        return cls.large(**{"cae_version": 2, "decoder_num_layers": 0, "target_hidden_size": 768, **kwargs})

    @classmethod
    def tiny(cls, **kwargs) -> "CaeConfig":
        """A 64-wide, 2-block CAE (v1 unless `cae_version=2`) for CPU demos and tests: 64 px, 4x4 grid of 16 px
        patches, 6 masked."""
        defaults = dict(image_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
                        decoder_hidden_size=32, decoder_num_attention_heads=4, regressor_num_layers=2,
                        decoder_num_layers=2, vocab_size=64, target_hidden_size=24, num_masking_patches=6,
                        min_masking_patches_per_block=2)  # fmt: skip
        if kwargs.get("cae_version") == 2:
            defaults["decoder_num_layers"] = 0
        return cls(**{**defaults, **kwargs})


__all__ = ["CaeConfig"]
