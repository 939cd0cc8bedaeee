"""`CaeBackbone`: CAE's encoder as a transformers backbone (`AutoBackbone`, UperNet, ...)."""

from ...backbone_utils import ViTBackboneMixin
from .configuration_cae import CaeConfig
from .modeling_cae import CaeModel, CaePreTrainedModel


class CaeBackbone(ViTBackboneMixin, CaePreTrainedModel):
    """CAE's encoder with transformers' backbone API: one (B, hidden_size, H / patch, W / patch) map per stage of
    `config.out_features` / `config.out_indices` (stage i = output of block i; default the last block), cls token
    removed, patches row-major; through the final LayerNorm when `config.backbone_apply_layernorm` (the default: the
    last map then equals `CaeModel(...).feature_map`), and through `MultiScaleAdapter` when
    `config.backbone_multiscale`.

    CAE's UperNet protocol (the paper's ADE20K setup): `backbone_apply_layernorm=False, backbone_multiscale=True,
    out_indices=[4, 6, 8, 12]` (ViT-B; the original's 0-based blocks 3, 5, 7, 11), with its per-block relative
    position bias (zeros at the start, trainable): `use_relative_position_bias=True` and `image_size` the crop (512).

    The encoder is `self.cae`, a `CaeModel`: it loads from a `CaeModel` folder, a classifier folder or a pretraining
    folder, the heads' weights being expected and not reported.
    """

    def __init__(self, config: CaeConfig):
        super().__init__(config)
        self.cae = CaeModel(config)
        self.num_prefix_tokens = 1
        self._init_dense_features()
        self.post_init()


__all__ = ["CaeBackbone"]
