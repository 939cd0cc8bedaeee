"""CAPI configuration."""

import numbers

from transformers import PreTrainedConfig

from ...backbone_utils import ViTBackboneConfigMixin, pop_backbone_kwargs

_CHOICES = {
    "register_coordinates": ("edge", "zeros"),
    "drop_path_mode": ("efficient", "naive"),
    "classifier_pooling": ("attentive", "global", "avg_patch", "global_avg_patch"),
}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class CapiConfig(ViTBackboneConfigMixin, PreTrainedConfig):
    r"""Configuration of a CAPI model (Darcet et al., "Cluster and Predict Latent Patches for Improved Masked Image
    Modeling", TMLR 2025). The defaults are the released ViT-L/14 (`CapiConfig.vitl14()` says so explicitly).

    Values the model cannot use (a width not divisible by the heads, a head dim not divisible by 4, an unknown
    option string, a register count `"edge"` coordinates cannot place, ratios out of range) raise a `ValueError`
    naming the field when the config is built (or loaded), and again in `save_pretrained`.

    Args:
        image_size (`int`, *optional*, defaults to 224):
            Default training/eval resolution. Nothing in the model depends on it: positions are relative (RoPE on
            normalised coordinates), so any multiple of `patch_size` works, non-square included.
        patch_size (`int`, *optional*, defaults to 14):
            Side of the square patches.
        num_channels (`int`, *optional*, defaults to 3):
            Input channels.
        hidden_size (`int`, *optional*, defaults to 1024):
            Width of the encoder.
        num_hidden_layers (`int`, *optional*, defaults to 24):
            Encoder depth.
        num_attention_heads (`int`, *optional*, defaults to 16):
            Encoder heads; `hidden_size / num_attention_heads` must be divisible by 4 (2-D RoPE).
        intermediate_size (`int`, *optional*, defaults to 4096):
            Encoder MLP width.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            MLP activation (exact erf GELU).
        rms_norm_eps (`float`, *optional*, defaults to 1e-5):
            Epsilon of every RMSNorm.
        attention_bias (`bool`, *optional*, defaults to `False`):
            Bias in q/k/v/o projections (none in CAPI).
        mlp_bias (`bool`, *optional*, defaults to `False`):
            Bias in the MLP (none in CAPI).
        num_register_tokens (`int`, *optional*, defaults to 16):
            Register tokens prepended to the patch tokens; a multiple of 4 with `register_coordinates="edge"`.
        register_coordinates (`str`, *optional*, defaults to `"edge"`):
            Where registers sit for RoPE: `"edge"` (on the border of the unit square) or `"zeros"`.
        scale_registers_to_visible (`bool`, *optional*, defaults to `True`):
            Rescale register coordinates to the bounding box of the visible patches.
        rope_max_freq (`float`, *optional*, defaults to 7.0):
            Highest RoPE frequency.
        rope_min_freq (`float`, *optional*, defaults to 7e-4):
            Lowest RoPE frequency.
        decoder_hidden_size (`int`, *optional*, defaults to 1024):
            Width of the predictor (the original's "decoder").
        decoder_num_hidden_layers (`int`, *optional*, defaults to 12):
            Predictor depth. Only block 0 runs at inference (it defines the global representation); all run in
            pretraining.
        decoder_num_attention_heads (`int`, *optional*, defaults to 16):
            Predictor heads; `decoder_hidden_size / decoder_num_attention_heads` must be divisible by 4 (2-D RoPE).
        decoder_intermediate_size (`int`, *optional*, defaults to 4096):
            Predictor MLP width.
        drop_path_rate (`float`, *optional*, defaults to 0.2):
            Stochastic depth, the same rate in every block of encoder and predictor.
        drop_path_mode (`str`, *optional*, defaults to `"efficient"`):
            `"efficient"`: the branch runs on a random subset of the batch (CAPI); `"naive"`: per-sample mask.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Std of register tokens, mask token and classifier weights at init.
        classifier_pooling (`str`, *optional*, defaults to `"attentive"`):
            Features fed to `CapiForImageClassification`'s head: `"attentive"` (an attentive pooler over all patch
            tokens, CAPI's "attentive IN1k" probe), `"global"` (the global representation), `"avg_patch"` (mean of
            patch tokens) or `"global_avg_patch"` (both concatenated).
        num_prototypes (`int`, *optional*, defaults to 16384):
            Clustering prototypes (pretraining).
        mask_ratio (`float`, *optional*, defaults to 0.65):
            Fraction of patches hidden from the student (pretraining).
        prediction_subsampling (`float`, *optional*, defaults to 0.05):
            Fraction of the masked patches the student predicts (pretraining).
        mask_min_aspect (`float`, *optional*, defaults to 0.5):
            Minimum aspect ratio of the visible block (pretraining).
        mask_roll (`bool`, *optional*, defaults to `True`):
            Circularly roll the mask so the visible block can wrap around borders (pretraining).
        student_temp (`float`, *optional*, defaults to 0.12):
            Temperature of the student's prediction softmax.
        target_temp (`float`, *optional*, defaults to 0.06):
            Temperature of the Sinkhorn-Knopp targets.
        clustering_pred_temp (`float`, *optional*, defaults to 0.12):
            Temperature of the clustering head's own loss.
        sinkhorn_iterations (`int`, *optional*, defaults to 3):
            Sinkhorn-Knopp iterations.
        positionwise_sinkhorn (`bool`, *optional*, defaults to `True`):
            Run Sinkhorn-Knopp independently at every token position.
        clustering_bias (`bool`, *optional*, defaults to `True`):
            Bias in the clustering head's linear layer.
        out_features (`list[str]`, *optional*):
            Backbone use (`CapiBackbone`, `AutoBackbone`): the stages whose feature maps are returned, among
            `stage_names` = `["stem", "stage1", ..., "stage<num_hidden_layers>"]` ("stem": the embedding output,
            "stage<i>": the output of block i). Aligned with `out_indices`; default: the last stage.
        out_indices (`list[int]`, *optional*):
            The same choice by index into `stage_names` (`out_indices=[i]` is `hidden_states[i]`).
        backbone_apply_layernorm (`bool`, *optional*, defaults to `True`):
            Backbone use: pass each returned map through the encoder's final norm (the parameter-free RMSNorm;
            CAPI's k-NN / linear segmentation use the normed last-layer patch tokens: the default).
        backbone_multiscale (`bool`, *optional*, defaults to `False`):
            Backbone use: map exactly four chosen stages to 4x, 2x, 1x and 1/2x the patch grid with the BEiT / CAE
            segmentation adapters (`hf_mim.layers.dense.MultiScaleAdapter`), the pyramid an UperNet head takes.
    """

    model_type = "capi"

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 14,
        num_channels: int = 3,
        hidden_size: int = 1024,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 16,
        intermediate_size: int = 4096,
        hidden_act: str = "gelu",
        rms_norm_eps: float = 1e-5,
        attention_bias: bool = False,
        mlp_bias: bool = False,
        num_register_tokens: int = 16,
        register_coordinates: str = "edge",
        scale_registers_to_visible: bool = True,
        rope_max_freq: float = 7.0,
        rope_min_freq: float = 7e-4,
        decoder_hidden_size: int = 1024,
        decoder_num_hidden_layers: int = 12,
        decoder_num_attention_heads: int = 16,
        decoder_intermediate_size: int = 4096,
        drop_path_rate: float = 0.2,
        drop_path_mode: str = "efficient",
        initializer_range: float = 0.02,
        classifier_pooling: str = "attentive",
        num_prototypes: int = 16384,
        mask_ratio: float = 0.65,
        prediction_subsampling: float = 0.05,
        mask_min_aspect: float = 0.5,
        mask_roll: bool = True,
        student_temp: float = 0.12,
        target_temp: float = 0.06,
        clustering_pred_temp: float = 0.12,
        sinkhorn_iterations: int = 3,
        positionwise_sinkhorn: bool = True,
        clustering_bias: bool = True,
        backbone_apply_layernorm: bool = True,
        backbone_multiscale: bool = False,
        **kwargs,
    ):
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
        self.rms_norm_eps = rms_norm_eps
        self.attention_bias = attention_bias
        self.mlp_bias = mlp_bias
        self.num_register_tokens = num_register_tokens
        self.register_coordinates = register_coordinates
        self.scale_registers_to_visible = scale_registers_to_visible
        self.rope_max_freq = rope_max_freq
        self.rope_min_freq = rope_min_freq
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_hidden_layers = decoder_num_hidden_layers
        self.decoder_num_attention_heads = decoder_num_attention_heads
        self.decoder_intermediate_size = decoder_intermediate_size
        self.drop_path_rate = drop_path_rate
        self.drop_path_mode = drop_path_mode
        self.initializer_range = initializer_range
        self.classifier_pooling = classifier_pooling
        self.num_prototypes = num_prototypes
        self.mask_ratio = mask_ratio
        self.prediction_subsampling = prediction_subsampling
        self.mask_min_aspect = mask_min_aspect
        self.mask_roll = mask_roll
        self.student_temp = student_temp
        self.target_temp = target_temp
        self.clustering_pred_temp = clustering_pred_temp
        self.sinkhorn_iterations = sinkhorn_iterations
        self.positionwise_sinkhorn = positionwise_sinkhorn
        self.clustering_bias = clustering_bias
        self.backbone_apply_layernorm = backbone_apply_layernorm
        self.backbone_multiscale = backbone_multiscale
        self._store_backbone_outputs(out_features, out_indices)
        self._check_fields()

    def validate(self):
        """transformers' checks plus CAPI's own (`save_pretrained` runs this, so a config edited after construction
        is checked again before it is written)."""
        super().validate()
        self._check_fields()

    def _check_fields(self) -> None:
        """Raise a `ValueError` naming the field for a value the model cannot be built or run with (instead of a
        failure at model construction or in the first forward)."""

        def fail(message: str):
            raise ValueError(f"{type(self).__name__}: {message}")

        for name in (
            "patch_size", "num_channels", "hidden_size", "num_attention_heads", "intermediate_size",
            "decoder_hidden_size", "decoder_num_attention_heads", "decoder_intermediate_size", "num_prototypes",
        ):  # fmt: skip
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                fail(f"{name} must be a positive integer, got {value!r}.")
        for name in ("num_hidden_layers", "decoder_num_hidden_layers", "num_register_tokens", "sinkhorn_iterations"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                fail(f"{name} must be a non-negative integer, got {value!r}.")
        for prefix in ("", "decoder_"):
            width, heads = getattr(self, f"{prefix}hidden_size"), getattr(self, f"{prefix}num_attention_heads")
            if width % heads:
                fail(f"{prefix}hidden_size={width} must be divisible by {prefix}num_attention_heads={heads}.")
            if (width // heads) % 4:
                fail(
                    f"{prefix}hidden_size={width} / {prefix}num_attention_heads={heads} gives a head dim of "
                    f"{width // heads}; CAPI's 2-D RoPE needs a head dim divisible by 4."
                )
        for name, choices in _CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                fail(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")
        if self.register_coordinates == "edge" and self.num_register_tokens % 4:
            fail(
                f"num_register_tokens={self.num_register_tokens} cannot be placed by register_coordinates='edge', "
                "which spreads the registers evenly over the 4 sides of the unit square: use a multiple of 4, or "
                "register_coordinates='zeros'."
            )
        if not 0 < self.mask_ratio < 1:
            fail(f"mask_ratio must lie in (0, 1) (some patches visible, some masked), got {self.mask_ratio!r}.")
        if not 0 < self.prediction_subsampling <= 1:
            fail(f"prediction_subsampling must lie in (0, 1], got {self.prediction_subsampling!r}.")
        if not 0 <= self.drop_path_rate < 1:
            fail(f"drop_path_rate must lie in [0, 1), got {self.drop_path_rate!r}.")
        for name in ("mask_min_aspect", "student_temp", "target_temp", "clustering_pred_temp", "rms_norm_eps"):
            value = getattr(self, name)
            if not value > 0:
                fail(f"{name} must be positive, got {value!r}.")
        self._check_backbone_fields(fail)

    @classmethod
    def vitl14(cls, **kwargs) -> "CapiConfig":
        """The released CAPI ViT-L/14 (all four checkpoints share it)."""
        return cls(**kwargs)

    @classmethod
    def small(cls, **kwargs) -> "CapiConfig":
        """A ViT-S/14-sized CAPI (384 wide, 12 + 4 blocks, 4 registers) for single-GPU experiments."""
        defaults = dict(
            hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
            decoder_hidden_size=384, decoder_num_hidden_layers=4, decoder_num_attention_heads=6,
            decoder_intermediate_size=1536, num_register_tokens=4, num_prototypes=4096,
        )  # fmt: skip
        return cls(**{**defaults, **kwargs})

    @classmethod
    def tiny(cls, **kwargs) -> "CapiConfig":
        """A 64-wide CAPI for CPU demos and tests."""
        defaults = dict(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
            decoder_hidden_size=64, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
            decoder_intermediate_size=256, num_register_tokens=4, num_prototypes=64, image_size=56,
        )  # fmt: skip
        return cls(**{**defaults, **kwargs})


__all__ = ["CapiConfig"]
