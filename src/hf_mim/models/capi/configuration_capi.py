"""CAPI configuration."""

from transformers import PreTrainedConfig


class CapiConfig(PreTrainedConfig):
    r"""Configuration of a CAPI model (Darcet et al., "Cluster and Predict Latent Patches for Improved Masked Image
    Modeling", TMLR 2025). The defaults are the released ViT-L/14 (`CapiConfig.vitl14()` says so explicitly).

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
            Encoder heads.
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
            Register tokens prepended to the patch tokens.
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
            Predictor heads.
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        if register_coordinates not in ("edge", "zeros"):
            raise ValueError(f"register_coordinates must be 'edge' or 'zeros', got {register_coordinates!r}")
        if classifier_pooling not in ("attentive", "global", "avg_patch", "global_avg_patch"):
            raise ValueError(f"Unknown classifier_pooling {classifier_pooling!r}")
        if drop_path_mode not in ("efficient", "naive"):
            raise ValueError(f"drop_path_mode must be 'efficient' or 'naive', got {drop_path_mode!r}")
        for name, width, heads in (
            ("encoder", hidden_size, num_attention_heads),
            ("decoder", decoder_hidden_size, decoder_num_attention_heads),
        ):
            if width % heads or (width // heads) % 4:
                raise ValueError(f"{name}: width {width} / {heads} heads must give a head dim divisible by 4 (RoPE).")
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
