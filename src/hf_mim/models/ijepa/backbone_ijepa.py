"""`IJepaBackbone`: I-JEPA's encoder as a transformers backbone (`AutoBackbone`, UperNet, ...)."""

from ...backbone_utils import ViTBackboneMixin
from .configuration_ijepa import IJepaConfig
from .modeling_ijepa import IJepaModel, IJepaPreTrainedModel


class IJepaBackbone(ViTBackboneMixin, IJepaPreTrainedModel):
    """I-JEPA's encoder with transformers' backbone API: one (B, hidden_size, H / patch, W / patch) map per stage of
    `config.out_features` / `config.out_indices` (stage i = output of block i; default the last block), patches
    row-major (I-JEPA has no cls token); through the final LayerNorm when `config.backbone_apply_layernorm` (the
    default: the last map then equals `IJepaModel(...).feature_map`), and through `MultiScaleAdapter` when
    `config.backbone_multiscale`.

    The encoder is `self.ijepa`, an `IJepaModel`: it loads from an `IJepaModel` folder, a classifier folder or a
    pretraining folder, where `config.standalone_encoder` picks the context encoder (default) or the EMA target
    encoder (`"target"`), as for `IJepaModel.from_pretrained`.
    """

    def __init__(self, config: IJepaConfig):
        super().__init__(config)
        self.ijepa = IJepaModel(config)
        self._keys_to_ignore_on_load_unexpected = [r"^predictor\.", r"^target_encoder\.", r"^classifier\."]
        self.num_prefix_tokens = 0
        self._init_dense_features()
        self.post_init()


__all__ = ["IJepaBackbone"]
