"""I-JEPA configuration (encoder fields named as transformers' `IJepaConfig`, plus predictor and masking)."""

import numbers

from transformers import PreTrainedConfig

from ...backbone_utils import ViTBackboneConfigMixin, pop_backbone_kwargs

_CHOICES = {
    "mask_sampler": ("uniform", "original"),
    "loss_type": ("smooth_l1", "l2"),
    "classifier_pooling": ("mean", "mean_last4"),
    "standalone_encoder": ("context", "target"),
}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class IJepaConfig(ViTBackboneConfigMixin, PreTrainedConfig):
    r"""Configuration of hf_mim's I-JEPA (Assran et al., CVPR 2023). Defaults: the released ViT-H/14.

    `model_type` is `"hf_mim_ijepa"`, distinct from transformers' `"ijepa"`; the encoder's field and weight names are
    transformers' own, so encoder checkpoints are interchangeable with `transformers.IJepaModel`.

    Values the model cannot use (a width not divisible by the heads or by 4, an unknown option string, block scales
    out of range, ...) raise a `ValueError` naming the field when the config is built (or loaded), and again in
    `save_pretrained`.

    Args:
        image_size (`int`, *optional*, defaults to 224): Pretraining resolution; defines the position-table grid.
        patch_size (`int`, *optional*, defaults to 14): Patch side.
        num_channels (`int`, *optional*, defaults to 3): Input channels.
        hidden_size (`int`, *optional*, defaults to 1280): Encoder width.
        num_hidden_layers (`int`, *optional*, defaults to 32): Encoder depth.
        num_attention_heads (`int`, *optional*, defaults to 16): Encoder heads.
        intermediate_size (`int`, *optional*, defaults to 5120): Encoder MLP width.
        hidden_act (`str`, *optional*, defaults to `"gelu"`): Exact GELU.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6): LayerNorm epsilon (the original's; not 1e-12).
        qkv_bias (`bool`, *optional*, defaults to `True`): Bias in q/k/v projections.
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0): Attention dropout.
        drop_path_rate (`float`, *optional*, defaults to 0.0): Stochastic depth of the encoder (linearly increasing
            over blocks, as in MAE fine-tuning; 0 in pretraining).
        initializer_range (`float`, *optional*, defaults to 0.02): Std of the truncated-normal init.
        predictor_hidden_size (`int`, *optional*, defaults to 384): Predictor width.
        predictor_num_hidden_layers (`int`, *optional*, defaults to 12): Predictor depth (16 for ViT-g).
        predictor_num_attention_heads (`int`, *optional*, defaults to 16): Predictor heads (= encoder heads).
        predictor_intermediate_size (`int`, *optional*, defaults to 1536): Predictor MLP width.
        num_target_blocks (`int`, *optional*, defaults to 4): Target blocks per image.
        target_block_scale (`tuple`, *optional*, defaults to (0.15, 0.2)): Target block area fraction range.
        target_aspect_ratio (`tuple`, *optional*, defaults to (0.75, 1.5)): Target block aspect-ratio range.
        num_context_blocks (`int`, *optional*, defaults to 1): Context blocks per image.
        context_block_scale (`tuple`, *optional*, defaults to (0.85, 1.0)): Context block area fraction range.
        min_keep (`int`, *optional*, defaults to 10): A block must keep more than this many patches.
        allow_overlap (`bool`, *optional*, defaults to `False`): Let the context overlap the targets.
        mask_sampler (`str`, *optional*, defaults to `"uniform"`): `"uniform"` reaches every patch; `"original"`
            replicates the released sampler, which never covers the last row/column.
        loss_type (`str`, *optional*, defaults to `"smooth_l1"`): `"smooth_l1"` (the released code) or `"l2"` (paper).
        classifier_pooling (`str`, *optional*, defaults to `"mean"`): `"mean"` (average-pooled last layer) or
            `"mean_last4"` (concatenated average-pooled outputs of the last 4 blocks, each layer-normed).
        classifier_layernorm (`bool`, *optional*, defaults to `False`): Parameter-free LayerNorm on the pooled
            features before the classifier (the fine-tuning recipe's head).
        classifier_dropout (`float`, *optional*, defaults to 0.0): Dropout before the classifier.
        standalone_encoder (`str`, *optional*, defaults to `"context"`): Which encoder `IJepaModel.from_pretrained`
            takes from a full pretraining checkpoint: `"context"` (trained encoder; transformers/timm convention)
            or `"target"` (the EMA encoder).
        out_features (`list[str]`, *optional*):
            Backbone use (`IJepaBackbone`, `AutoBackbone`): the stages whose feature maps are returned, among
            `stage_names` = `["stem", "stage1", ..., "stage<num_hidden_layers>"]` ("stem": the embedding output,
            "stage<i>": the output of block i). Aligned with `out_indices`; default: the last stage.
        out_indices (`list[int]`, *optional*):
            The same choice by index into `stage_names` (`out_indices=[i]` is `hidden_states[i]`).
        backbone_apply_layernorm (`bool`, *optional*, defaults to `True`):
            Backbone use: pass each returned map through the encoder's final norm (the LayerNorm of
            `last_hidden_state`).
        backbone_multiscale (`bool`, *optional*, defaults to `False`):
            Backbone use: map exactly four chosen stages to 4x, 2x, 1x and 1/2x the patch grid with the BEiT / CAE
            segmentation adapters (`hf_mim.layers.dense.MultiScaleAdapter`), the pyramid an UperNet head takes.
    """

    model_type = "hf_mim_ijepa"

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 14,
        num_channels: int = 3,
        hidden_size: int = 1280,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 16,
        intermediate_size: int = 5120,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        attention_probs_dropout_prob: float = 0.0,
        drop_path_rate: float = 0.0,
        initializer_range: float = 0.02,
        predictor_hidden_size: int = 384,
        predictor_num_hidden_layers: int = 12,
        predictor_num_attention_heads: int = 16,
        predictor_intermediate_size: int = 1536,
        num_target_blocks: int = 4,
        target_block_scale=(0.15, 0.2),
        target_aspect_ratio=(0.75, 1.5),
        num_context_blocks: int = 1,
        context_block_scale=(0.85, 1.0),
        min_keep: int = 10,
        allow_overlap: bool = False,
        mask_sampler: str = "uniform",
        loss_type: str = "smooth_l1",
        classifier_pooling: str = "mean",
        classifier_layernorm: bool = False,
        classifier_dropout: float = 0.0,
        standalone_encoder: str = "context",
        backbone_apply_layernorm: bool = True,
        backbone_multiscale: bool = False,
        **kwargs,
    ):
        # A transformers IJepa config.json says model_type "ijepa": keep ours, so our key renaming applies.
        kwargs.pop("model_type", None)
        out_features, out_indices = pop_backbone_kwargs(kwargs)
        super().__init__(**kwargs)
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.initializer_range = initializer_range
        self.predictor_hidden_size = predictor_hidden_size
        self.predictor_num_hidden_layers = predictor_num_hidden_layers
        self.predictor_num_attention_heads = predictor_num_attention_heads
        self.predictor_intermediate_size = predictor_intermediate_size
        self.num_target_blocks = num_target_blocks
        self.target_block_scale = tuple(target_block_scale)
        self.target_aspect_ratio = tuple(target_aspect_ratio)
        self.num_context_blocks = num_context_blocks
        self.context_block_scale = tuple(context_block_scale)
        self.min_keep = min_keep
        self.allow_overlap = allow_overlap
        self.mask_sampler = mask_sampler
        self.loss_type = loss_type
        self.classifier_pooling = classifier_pooling
        self.classifier_layernorm = classifier_layernorm
        self.classifier_dropout = classifier_dropout
        self.standalone_encoder = standalone_encoder
        self.backbone_apply_layernorm = backbone_apply_layernorm
        self.backbone_multiscale = backbone_multiscale
        self._store_backbone_outputs(out_features, out_indices)
        self._check_fields()

    def validate(self):
        """transformers' checks plus I-JEPA's own (`save_pretrained` runs this, so a config edited after
        construction is checked again before it is written)."""
        super().validate()
        self._check_fields()

    def _check_fields(self) -> None:
        """Raise a `ValueError` naming the field for a value the model cannot be built or run with (instead of a
        failure at model construction, in the first forward or in the mask sampler)."""

        def fail(message: str):
            raise ValueError(f"{type(self).__name__}: {message}")

        for name in (
            "image_size", "patch_size", "num_channels", "hidden_size", "num_attention_heads", "intermediate_size",
            "predictor_hidden_size", "predictor_num_attention_heads", "predictor_intermediate_size",
            "num_target_blocks", "num_context_blocks",
        ):  # fmt: skip
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                fail(f"{name} must be a positive integer, got {value!r}.")
        for name in ("num_hidden_layers", "predictor_num_hidden_layers", "min_keep"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                fail(f"{name} must be a non-negative integer, got {value!r}.")
        if self.image_size < self.patch_size:
            fail(f"image_size={self.image_size} must be at least patch_size={self.patch_size} (one patch).")
        for prefix in ("", "predictor_"):
            width, heads = getattr(self, f"{prefix}hidden_size"), getattr(self, f"{prefix}num_attention_heads")
            if width % heads:
                fail(f"{prefix}hidden_size={width} must be divisible by {prefix}num_attention_heads={heads}.")
            if width % 4:
                fail(f"{prefix}hidden_size={width} must be divisible by 4 (2-D sin-cos position embedding).")
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                fail(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")
        for name, upper in (
            ("target_block_scale", 1),
            ("context_block_scale", 1),
            ("target_aspect_ratio", None),
        ):
            value = getattr(self, name)
            if len(value) != 2 or not 0 < value[0] <= value[1] or (upper is not None and value[1] > upper):
                bounds = "0 < low <= high <= 1" if upper is not None else "0 < low <= high"
                fail(f"{name} must be a (low, high) pair with {bounds}, got {value!r}.")
        for name in ("attention_probs_dropout_prob", "drop_path_rate", "classifier_dropout"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                fail(f"{name} must lie in [0, 1), got {value!r}.")
        if not self.layer_norm_eps > 0:
            fail(f"layer_norm_eps must be positive, got {self.layer_norm_eps!r}.")
        self._check_backbone_fields(fail)

    @classmethod
    def vith14(cls, **kwargs) -> "IJepaConfig":
        """IN1K-vit.h.14-300e / IN22K-vit.h.14-900e."""
        return cls(**kwargs)

    @classmethod
    def vith16_448(cls, **kwargs) -> "IJepaConfig":
        """IN1K-vit.h.16-448px-300e."""
        return cls(**{"patch_size": 16, "image_size": 448, **kwargs})

    @classmethod
    def vitg16(cls, **kwargs) -> "IJepaConfig":
        """IN22K-vit.g.16-600e (predictor depth 16)."""
        defaults = dict(patch_size=16, hidden_size=1408, num_hidden_layers=40, intermediate_size=6144,
                        predictor_num_hidden_layers=16)  # fmt: skip
        return cls(**{**defaults, **kwargs})

    @classmethod
    def small(cls, **kwargs) -> "IJepaConfig":
        """ViT-S/16-sized encoder with a 6-block predictor."""
        defaults = dict(patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                        intermediate_size=1536, predictor_hidden_size=192, predictor_num_hidden_layers=6,
                        predictor_num_attention_heads=6, predictor_intermediate_size=768)  # fmt: skip
        return cls(**{**defaults, **kwargs})

    @classmethod
    def tiny(cls, **kwargs) -> "IJepaConfig":
        """A 64-wide I-JEPA for CPU demos and tests (56 px, 4x4 grid of 14 px patches)."""
        defaults = dict(image_size=56, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=256, predictor_hidden_size=32, predictor_num_hidden_layers=2,
                        predictor_num_attention_heads=4, predictor_intermediate_size=128, min_keep=1,
                        num_target_blocks=2, target_block_scale=(0.2, 0.3), context_block_scale=(0.7, 1.0))  # fmt: skip
        return cls(**{**defaults, **kwargs})


__all__ = ["IJepaConfig"]
