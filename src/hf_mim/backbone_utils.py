"""transformers' backbone API (`AutoBackbone`, `BackboneOutput`, `out_features` / `out_indices`) for every hf_mim
method: the config side (`HfMimBackboneConfigMixin`, `ViTBackboneConfigMixin`) and the forward shared by the three
ViT backbones (`ViTBackboneMixin`). The design follows transformers' `Dinov2Backbone` / `ResNetBackbone`: the config
holds `stage_names` (`"stem"` then one stage per block or per convolutional stage), `out_features` / `out_indices`
(aligned with each other, the last stage by default) and the backbone returns one (B, C, H, W) map per chosen stage.
"""

import torch
from transformers.backbone_utils import BackboneConfigMixin, BackboneMixin
from transformers.modeling_outputs import BackboneOutput

from .layers.dense import MultiScaleAdapter, tokens_to_feature_map
from .modeling_utils import output_flags


def pop_backbone_kwargs(kwargs: dict) -> tuple[list | None, list | None]:
    """Take the backbone-API keys out of a config's `**kwargs` (a saved config.json holds them): `stage_names` is
    derived from the architecture and dropped; returns `(out_features, out_indices)` (older files: `_out_*`)."""
    kwargs.pop("stage_names", None)
    out_features, legacy_features = kwargs.pop("out_features", None), kwargs.pop("_out_features", None)
    out_indices, legacy_indices = kwargs.pop("out_indices", None), kwargs.pop("_out_indices", None)
    return (
        out_features if out_features is not None else legacy_features,
        out_indices if out_indices is not None else legacy_indices,
    )


class HfMimBackboneConfigMixin(BackboneConfigMixin):
    """`stage_names`, `out_features` and `out_indices` as real config fields (saved, loaded, validated).

    A config class calls `pop_backbone_kwargs(kwargs)` before `PreTrainedConfig.__init__`, stores the result with
    `_store_backbone_outputs`, and calls `_check_backbone_fields(fail)` at the end of its field checks (construction,
    `validate`, `save_pretrained`): that re-derives `stage_names` from the architecture (so an architecture edited
    after construction is picked up) and aligns / verifies `out_features` and `out_indices` against it.
    """

    def backbone_stage_names(self) -> list[str]:
        raise NotImplementedError

    def _store_backbone_outputs(self, out_features, out_indices) -> None:
        self.stage_names = None
        self._out_features = list(out_features) if out_features is not None else None
        self._out_indices = list(out_indices) if out_indices is not None else None

    def _check_backbone_fields(self, fail) -> None:
        self.stage_names = self.backbone_stage_names()
        try:
            self.set_output_features_output_indices(out_features=self._out_features, out_indices=self._out_indices)
        except ValueError as error:
            fail(f"out_features / out_indices: {error}")


class ViTBackboneConfigMixin(HfMimBackboneConfigMixin):
    """Backbone fields of the ViT configs (CAPI, I-JEPA, CAE): stage `"stem"` is the embedding output (before the
    first block), `"stage{i}"` the output of block i (1-based), so `out_indices=[i]` is `hidden_states[i]`.
    Also `backbone_apply_layernorm` (the encoder's final norm on each map) and `backbone_multiscale` (the 4x / 2x /
    1x / 0.5x adapters on exactly four maps)."""

    def backbone_stage_names(self) -> list[str]:
        return ["stem"] + [f"stage{index}" for index in range(1, self.num_hidden_layers + 1)]

    def _check_backbone_fields(self, fail) -> None:
        super()._check_backbone_fields(fail)
        for name in ("backbone_apply_layernorm", "backbone_multiscale"):
            if not isinstance(getattr(self, name), bool):
                fail(f"{name} must be a bool, got {getattr(self, name)!r}.")
        if self.backbone_multiscale and len(self.out_features) != 4:
            fail(
                f"backbone_multiscale=True needs exactly 4 out_indices / out_features (mapped to 4x, 2x, 1x and 1/2x "
                f"the patch grid), got {self.out_features}."
            )


class ViTBackboneMixin(BackboneMixin):
    """The forward of `CapiBackbone` / `IJepaBackbone` / `CaeBackbone`: each holds its base model under
    `base_model_prefix`, whose `encode(pixel_values, output_hidden_states=..., output_attentions=...)` returns an
    `hf_mim.layers.Encoding` (hidden_states: embedding output then every block's output, prefix tokens included), and
    sets `num_prefix_tokens` (registers / cls token ahead of the patches).

    Feature map of stage i: `hidden_states[i]` without the prefix tokens, through the encoder's final norm when
    `config.backbone_apply_layernorm`, reshaped row-major to (B, hidden_size, H / patch, W / patch); with
    `config.backbone_multiscale` the four maps then pass through `MultiScaleAdapter` (module `multiscale`).
    """

    num_prefix_tokens: int = 0

    def _init_dense_features(self) -> None:
        """Call after building the base model, before `post_init`."""
        config = self.config
        self.num_features = [config.hidden_size] * len(self.stage_names)
        base = getattr(self, self.base_model_prefix)
        ignore = set(self._keys_to_ignore_on_load_unexpected or ())
        if not config.backbone_apply_layernorm and any(True for _ in base.layernorm.parameters()):
            # The final norm is unused: drop its parameters (none would get a gradient, which DDP rejects) and expect
            # its weights in any folder. An identity keeps the base model's own encode path working.
            base.layernorm = torch.nn.Identity()
            ignore.add(rf"^({self.base_model_prefix}\.)?layernorm\.")
        self._keys_to_ignore_on_load_unexpected = sorted(ignore)
        if config.backbone_multiscale and len(self.out_features) != 4:
            raise ValueError(
                f"backbone_multiscale=True needs exactly 4 out_features, got {self.out_features}: pass 4 out_indices."
            )
        self.multiscale = MultiScaleAdapter(config.hidden_size) if config.backbone_multiscale else None

    def _init_weights(self, module: torch.nn.Module) -> None:
        # ConvTranspose2d / BatchNorm2d only occur in the adapter (none of the ViT encoders has one)
        if not MultiScaleAdapter.init_module(module):
            super()._init_weights(module)

    def get_input_embeddings(self) -> torch.nn.Module:
        return getattr(self, self.base_model_prefix).get_input_embeddings()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> BackboneOutput | tuple:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        output_attentions, output_hidden_states, return_dict = output_flags(
            self.config, output_attentions, output_hidden_states, return_dict
        )
        base = getattr(self, self.base_model_prefix)
        encoding = base.encode(pixel_values, output_hidden_states=True, output_attentions=output_attentions)
        hidden_states, grid = encoding.hidden_states, encoding.grid
        norm = base.layernorm if self.config.backbone_apply_layernorm else None
        out_features = self.out_features
        feature_maps = []
        for stage, hidden in zip(self.stage_names, hidden_states, strict=True):
            if stage in out_features:
                patches = hidden[:, self.num_prefix_tokens :]
                feature_maps.append(tokens_to_feature_map(norm(patches) if norm is not None else patches, grid))
        if self.multiscale is not None:
            feature_maps = self.multiscale(feature_maps)
        output = BackboneOutput(
            feature_maps=tuple(feature_maps),
            hidden_states=hidden_states if output_hidden_states else None,
            attentions=encoding.attentions if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "HfMimBackboneConfigMixin",
    "ViTBackboneConfigMixin",
    "ViTBackboneMixin",
    "pop_backbone_kwargs",
]
