"""VICRegL configuration: a ResNet or ConvNeXt backbone (field names of transformers' `ResNetConfig` /
`ConvNextConfig`, so a folder written by either loads here and ours loads there) plus VICRegL's projectors and loss."""

import numbers

from transformers import PreTrainedConfig

from ...backbone_utils import HfMimBackboneConfigMixin, pop_backbone_kwargs

_BACKBONES = ("resnet", "convnext")
_DEFAULT_ACT = {"resnet": "relu", "convnext": "gelu"}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def parse_mlp_spec(spec: str) -> list[int]:
    """`"8192-8192-8192"` -> [8192, 8192, 8192] (widths after the input), as VICRegL's `--mlp` / `--maps-mlp`."""
    try:
        widths = [int(part) for part in str(spec).split("-")]
    except ValueError:
        widths = []
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"an MLP spec is positive widths joined by '-', e.g. '8192-8192-8192'; got {spec!r}.")
    return widths


class VicreglConfig(HfMimBackboneConfigMixin, PreTrainedConfig):
    r"""Configuration of hf_mim's VICRegL (Bardes, Ponce, LeCun, NeurIPS 2022). Defaults: the released ConvNeXt-S.

    The backbone fields are named as in transformers' `ResNetConfig` (`backbone_type="resnet"`) and `ConvNextConfig`
    (`backbone_type="convnext"`); weights of `VicreglModel` are those of `ResNetModel` / `ConvNextModel`, key for key.
    A transformers `config.json` (model_type `"resnet"` / `"convnext"`) is read as the matching backbone type.

    Values the model cannot use raise a `ValueError` naming the field when the config is built, loaded or saved.

    Args:
        backbone_type (`str`, *optional*, defaults to `"convnext"`): `"resnet"` (ResNet-50 family, bottleneck blocks)
            or `"convnext"`.
        num_channels (`int`, *optional*, defaults to 3): Input channels.
        depths (`list[int]`, *optional*, defaults to `[3, 3, 27, 3]`): Blocks per stage.
        hidden_sizes (`list[int]`, *optional*, defaults to `[96, 192, 384, 768]`): Output width of each stage; the
            last is the representation width.
        embedding_size (`int`, *optional*, defaults to 64): ResNet stem width.
        layer_type (`str`, *optional*, defaults to `"bottleneck"`): ResNet block type (only bottleneck: ResNet-50).
        downsample_in_first_stage (`bool`, *optional*, defaults to `False`): ResNet: stride 2 in the first stage.
        downsample_in_bottleneck (`bool`, *optional*, defaults to `False`): ResNet: stride in the first 1x1 conv
            instead of the 3x3 (torchvision/VICRegL: False).
        zero_init_residual (`bool`, *optional*, defaults to `True`): ResNet: the last BN of each block starts at 0
            (VICRegL's training setting).
        patch_size (`int`, *optional*, defaults to 4): ConvNeXt stem stride.
        layer_norm_eps (`float`, *optional*, defaults to 1e-6): ConvNeXt LayerNorm epsilon (transformers' default
            1e-12 differs).
        layer_scale_init_value (`float`, *optional*, defaults to 0.0): ConvNeXt layer scale; VICRegL trains without.
        drop_path_rate (`float`, *optional*, defaults to 0.1): ConvNeXt stochastic depth (linear over all blocks).
        hidden_act (`str`, *optional*): `"relu"` (ResNet) / `"gelu"` (ConvNeXt, exact) by default.
        initializer_range (`float`, *optional*, defaults to 0.02): ConvNeXt truncated-normal std.
        image_size (`int`, *optional*, defaults to 224): Training crop size of the global views.
        projector (`str`, *optional*, defaults to `"8192-8192-8192"`): Global expander widths (`--mlp`).
        maps_projector (`str`, *optional*, defaults to `"512-512-512"`): Local expander widths (`--maps-mlp`).
        alpha (`float`, *optional*, defaults to 0.75): `loss = alpha * global + (1 - alpha) * local`; 1 drops the
            local projector, 0 the global one.
        invariance_coeff (`float`, *optional*, defaults to 25.0): lambda.
        variance_coeff (`float`, *optional*, defaults to 25.0): mu.
        covariance_coeff (`float`, *optional*, defaults to 1.0): nu.
        num_matches (`tuple[int, int]`, *optional*, defaults to `(20, 4)`): Location matches kept from view i to j
            and from j to i.
        l2_all_matches (`bool`, *optional*, defaults to `True`): Feature-space matching keeps every position (False:
            the `num_matches` nearest, like the location matching).
        num_global_views (`int`, *optional*, defaults to 2): Views that are compared with every other view.
        fast_vc_reg (`bool`, *optional*, defaults to `False`): The original's `--fast-vc-reg 1`: the local loss's
            variance and covariance are computed once per view on its whole expanded map (per position over the
            batch, averaged over positions and views) instead of on every matched set of every view pair; the
            invariance is unchanged. False: the paper's loss (the original's default).
        out_features (`list[str]`, *optional*): Backbone use (`VicreglBackbone`, `AutoBackbone`): the stages whose
            maps are returned, among `stage_names` = `["stem", "stage1", ..., "stage<num_stages>"]` (strides 4, 4, 8,
            16, 32 for both backbones), as transformers' ResNet / ConvNeXt backbones. Default: the last stage.
        out_indices (`list[int]`, *optional*): The same choice by index into `stage_names`.
    """

    model_type = "vicregl"

    def __init__(
        self,
        backbone_type: str | None = None,
        num_channels: int = 3,
        depths=(3, 3, 27, 3),
        hidden_sizes=(96, 192, 384, 768),
        embedding_size: int = 64,
        layer_type: str = "bottleneck",
        downsample_in_first_stage: bool = False,
        downsample_in_bottleneck: bool = False,
        zero_init_residual: bool = True,
        patch_size: int = 4,
        layer_norm_eps: float = 1e-6,
        layer_scale_init_value: float = 0.0,
        drop_path_rate: float = 0.1,
        hidden_act: str | None = None,
        initializer_range: float = 0.02,
        image_size: int = 224,
        projector: str = "8192-8192-8192",
        maps_projector: str = "512-512-512",
        alpha: float = 0.75,
        invariance_coeff: float = 25.0,
        variance_coeff: float = 25.0,
        covariance_coeff: float = 1.0,
        num_matches=(20, 4),
        l2_all_matches: bool = True,
        num_global_views: int = 2,
        fast_vc_reg: bool = False,
        **kwargs,
    ):
        # A transformers ResNet / ConvNeXt config.json names its architecture in model_type: take the backbone type
        # from it and keep our own model_type.
        foreign = kwargs.pop("model_type", None)
        kwargs.pop("num_stages", None)  # derived from `depths` (a property here)
        out_features, out_indices = pop_backbone_kwargs(kwargs)
        super().__init__(**kwargs)
        if backbone_type is None:
            backbone_type = foreign if foreign in _BACKBONES else "convnext"
        self.backbone_type = backbone_type
        self.num_channels = num_channels
        self.depths = list(depths)
        self.hidden_sizes = list(hidden_sizes)
        self.embedding_size = embedding_size
        self.layer_type = layer_type
        self.downsample_in_first_stage = downsample_in_first_stage
        self.downsample_in_bottleneck = downsample_in_bottleneck
        self.zero_init_residual = zero_init_residual
        self.patch_size = patch_size
        self.layer_norm_eps = layer_norm_eps
        self.layer_scale_init_value = layer_scale_init_value
        self.drop_path_rate = drop_path_rate
        self.hidden_act = hidden_act or _DEFAULT_ACT.get(backbone_type, "gelu")
        self.initializer_range = initializer_range
        self.image_size = image_size
        self.projector = projector
        self.maps_projector = maps_projector
        self.alpha = alpha
        self.invariance_coeff = invariance_coeff
        self.variance_coeff = variance_coeff
        self.covariance_coeff = covariance_coeff
        self.num_matches = tuple(num_matches)
        self.l2_all_matches = l2_all_matches
        self.num_global_views = num_global_views
        self.fast_vc_reg = fast_vc_reg
        self._store_backbone_outputs(out_features, out_indices)
        self._check_fields()

    # transformers' ResNet / ConvNeXt configs expose these derived values
    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def backbone_stage_names(self) -> list[str]:
        """`"stem"` (stride 4) then one name per stage, as transformers' `ResNetConfig` / `ConvNextConfig`."""
        return ["stem"] + [f"stage{index}" for index in range(1, len(self.depths) + 1)]

    @property
    def representation_size(self) -> int:
        """Width of the representation (`pooler_output`) and of the dense maps."""
        return self.hidden_sizes[-1]

    @property
    def total_stride(self) -> int:
        """Input pixels per cell of the last feature map (32 for both backbones): the location grids' cell size."""
        return (
            2 ** (len(self.depths) + 1)
            if self.backbone_type == "resnet"
            else self.patch_size * 2 ** (len(self.depths) - 1)
        )

    @property
    def uses_global_loss(self) -> bool:
        return self.alpha > 0

    @property
    def uses_local_loss(self) -> bool:
        return self.alpha < 1

    def validate(self):
        super().validate()
        self._check_fields()

    def _check_fields(self) -> None:
        def fail(message: str):
            raise ValueError(f"{type(self).__name__}: {message}")

        if self.backbone_type not in _BACKBONES:
            fail(f"backbone_type must be 'resnet' or 'convnext', got {self.backbone_type!r}.")
        if self.backbone_type == "resnet" and self.layer_type != "bottleneck":
            fail(f"layer_type must be 'bottleneck' (VICRegL's ResNet-50 family), got {self.layer_type!r}.")
        for name in ("num_channels", "embedding_size", "patch_size", "image_size", "num_global_views"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                fail(f"{name} must be a positive integer, got {value!r}.")
        if not self.depths or len(self.depths) != len(self.hidden_sizes):
            fail(f"depths {self.depths} and hidden_sizes {self.hidden_sizes} must be non-empty and of equal length.")
        for name in ("depths", "hidden_sizes"):
            if any(not _is_int(v) or v < 1 for v in getattr(self, name)):
                fail(f"{name} must hold positive integers, got {getattr(self, name)!r}.")
        if self.backbone_type == "resnet" and any(width % 4 for width in self.hidden_sizes):
            fail(f"hidden_sizes must be divisible by 4 (bottleneck reduction), got {self.hidden_sizes}.")
        for name in ("projector", "maps_projector"):
            try:
                parse_mlp_spec(getattr(self, name))
            except ValueError as error:
                fail(f"{name}: {error}")
        if not 0 <= self.alpha <= 1:
            fail(f"alpha must lie in [0, 1], got {self.alpha!r}.")
        for name in ("invariance_coeff", "variance_coeff", "covariance_coeff"):
            if not getattr(self, name) >= 0:
                fail(f"{name} must be non-negative, got {getattr(self, name)!r}.")
        if len(self.num_matches) != 2 or any(not _is_int(v) or v < 1 for v in self.num_matches):
            fail(f"num_matches must be two positive integers, got {self.num_matches!r}.")
        if not isinstance(self.fast_vc_reg, bool):
            fail(f"fast_vc_reg must be True or False, got {self.fast_vc_reg!r}.")
        if not 0 <= self.drop_path_rate < 1:
            fail(f"drop_path_rate must lie in [0, 1), got {self.drop_path_rate!r}.")
        if not self.layer_norm_eps > 0:
            fail(f"layer_norm_eps must be positive, got {self.layer_norm_eps!r}.")
        if self.hidden_act not in ("relu", "gelu"):
            fail(f"hidden_act must be 'relu' or 'gelu', got {self.hidden_act!r}.")
        self._check_backbone_fields(fail)

    # ------------------------------------------------------------------ presets (the released architectures)
    @classmethod
    def resnet50(cls, **kwargs) -> "VicreglConfig":
        """resnet50_alpha0.9 / resnet50_alpha0.75 (pass `alpha`): 2048-wide representation, BN projectors."""
        defaults = dict(backbone_type="resnet", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                        embedding_size=64, drop_path_rate=0.0, alpha=0.9)  # fmt: skip
        return cls(**{**defaults, **kwargs})

    @classmethod
    def convnext_small(cls, **kwargs) -> "VicreglConfig":
        return cls(**{"backbone_type": "convnext", "depths": [3, 3, 27, 3], "hidden_sizes": [96, 192, 384, 768],
                      **kwargs})  # fmt: skip

    @classmethod
    def convnext_base(cls, **kwargs) -> "VicreglConfig":
        return cls(**{"backbone_type": "convnext", "depths": [3, 3, 27, 3], "hidden_sizes": [128, 256, 512, 1024],
                      **kwargs})  # fmt: skip

    @classmethod
    def convnext_xlarge(cls, **kwargs) -> "VicreglConfig":
        return cls(**{"backbone_type": "convnext", "depths": [3, 3, 27, 3], "hidden_sizes": [256, 512, 1024, 2048],
                      **kwargs})  # fmt: skip

    @classmethod
    def tiny(cls, **kwargs) -> "VicreglConfig":
        """A ConvNeXt with one block per stage, widths 16..128, small projectors: CPU demos and tests (64 px crops,
        2x2 final maps)."""
        defaults = dict(backbone_type="convnext", depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128],
                        drop_path_rate=0.0, image_size=64, projector="128-128-128", maps_projector="64-64-64",
                        num_matches=(2, 1))  # fmt: skip
        return cls(**{**defaults, **kwargs})

    @classmethod
    def tiny_resnet(cls, **kwargs) -> "VicreglConfig":
        """A bottleneck ResNet with one block per stage, widths 16..128 (inner width = out / 4, as ResNet-50)."""
        defaults = dict(backbone_type="resnet", depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128],
                        embedding_size=8, drop_path_rate=0.0, image_size=64, projector="128-128-128",
                        maps_projector="64-64-64", num_matches=(2, 1))  # fmt: skip
        return cls(**{**defaults, **kwargs})


__all__ = ["VicreglConfig", "parse_mlp_spec"]
