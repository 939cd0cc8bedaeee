"""`CapiBackbone`: CAPI's encoder as a transformers backbone (`AutoBackbone`, UperNet, ...)."""

from ...backbone_utils import ViTBackboneMixin
from .configuration_capi import CapiConfig
from .modeling_capi import CapiModel, CapiPreTrainedModel


class CapiBackbone(ViTBackboneMixin, CapiPreTrainedModel):
    """CAPI's encoder with transformers' backbone API: one (B, hidden_size, H / patch, W / patch) map per stage of
    `config.out_features` / `config.out_indices` (stage i = output of block i; default the last block), registers
    removed, patches row-major; through the parameter-free final RMSNorm when `config.backbone_apply_layernorm` (the
    default: the last map then equals `CapiModel(...).feature_map`, the features of CAPI's k-NN / linear
    segmentation), and through `MultiScaleAdapter` when `config.backbone_multiscale`.

    The encoder is `self.capi`, a `CapiModel` without its predictor (not used for dense features): it loads from a
    `CapiModel` folder, a classifier folder or a pretraining folder (the student), the other modules' weights being
    expected and not reported.
    """

    def __init__(self, config: CapiConfig):
        super().__init__(config)
        self.capi = CapiModel(config)
        self.capi.predictor = None
        self._keys_to_ignore_on_load_unexpected = [r"^(capi\.)?predictor\.", r"^pooler\.", r"^classifier\."]
        self.num_prefix_tokens = config.num_register_tokens
        self._init_dense_features()
        self.post_init()


__all__ = ["CapiBackbone"]
