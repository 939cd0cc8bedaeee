"""`VicreglBackbone`: VICRegL's ResNet / ConvNeXt as a transformers backbone (`AutoBackbone`, UperNet, ...)."""

import torch
from transformers.backbone_utils import BackboneMixin
from transformers.modeling_outputs import BackboneOutput

from ...modeling_utils import output_flags
from .configuration_vicregl import VicreglConfig
from .modeling_vicregl import VicreglModel, VicreglPreTrainedModel


class VicreglBackbone(BackboneMixin, VicreglPreTrainedModel):
    """VICRegL's backbone with transformers' backbone API, as `ResNetBackbone` / `ConvNextBackbone`: stages
    `["stem", "stage1", ..., "stage4"]` at strides 4, 4, 8, 16, 32, channels `[stem width] + hidden_sizes` (ResNet:
    `embedding_size`; ConvNeXt: `hidden_sizes[0]`); the maps are `VicreglModel(..., output_hidden_states=True)
    .hidden_states[i]` for the chosen stages (default the last).

    The maps are the raw stage outputs, as VICRegL's segmentation backbone returns them (its linear and FPN segmentation evaluations): no norm
    is added (transformers' `ConvNextBackbone` adds a fresh LayerNorm per output stage; VICRegL does not), and
    ConvNeXt's final LayerNorm (which VICRegL's pretraining applies to the last map only) is not used, so it is not
    built here and its weights are expected in a folder.

    The network is `self.vicregl`, a `VicreglModel`: it loads from a `VicreglModel` folder, a classifier folder or a
    pretraining folder (the projectors' weights are expected, not reported).
    """

    has_attentions = False

    def __init__(self, config: VicreglConfig):
        super().__init__(config)
        self.vicregl = VicreglModel(config)
        if config.backbone_type == "convnext":
            self.vicregl.layernorm = None
            stem = config.hidden_sizes[0]
        else:
            stem = config.embedding_size
        self._keys_to_ignore_on_load_unexpected = [r"^(vicregl\.)?layernorm\.", r"^classifier\."]
        self.num_features = [stem, *config.hidden_sizes]
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.vicregl.get_input_embeddings()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BackboneOutput | tuple:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        _, output_hidden_states, return_dict = output_flags(self.config, False, output_hidden_states, return_dict)
        model = self.vicregl
        model._check_input(pixel_values)
        stem = model.embedder if self.config.backbone_type == "resnet" else model.embeddings
        _, hidden_states = model.encoder(stem(pixel_values), output_hidden_states=True)
        out_features = self.out_features
        feature_maps = tuple(
            hidden for stage, hidden in zip(self.stage_names, hidden_states, strict=True) if stage in out_features
        )
        output = BackboneOutput(
            feature_maps=feature_maps, hidden_states=hidden_states if output_hidden_states else None
        )
        return output if return_dict else output.to_tuple()


__all__ = ["VicreglBackbone"]
