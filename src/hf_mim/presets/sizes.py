"""The size of a preset: its exact parameter counts, from the config alone (the models are built on the meta device:
no memory, a second even for ViT-g), and what `benchmarks/benchmark_presets.py` measured of its training step."""

from typing import NamedTuple

import torch

from ..models.cae import CaeConfig, CaeForPreTraining, CaeModel
from ..models.capi import CapiConfig, CapiForPreTraining, CapiModel
from ..models.ijepa import IJepaConfig, IJepaForPreTraining, IJepaModel
from ..models.vicregl import VicreglConfig, VicreglForPreTraining, VicreglModel
from . import CONFIG_PRESETS

# config class -> (backbone, pretraining model) class
MODEL_CLASSES = {
    CapiConfig: (CapiModel, CapiForPreTraining),
    IJepaConfig: (IJepaModel, IJepaForPreTraining),
    CaeConfig: (CaeModel, CaeForPreTraining),
    VicreglConfig: (VicreglModel, VicreglForPreTraining),
}


class PresetSize(NamedTuple):
    backbone_parameters: int  # <Method>Model: what a pretraining run exports as backbone/
    pretraining_parameters: int  # <Method>ForPreTraining: student, EMA teacher, heads (not CAE's external target)
    image_size: int  # config.image_size, the default crop
    batch_size: int  # of the measured step
    seconds_per_step: float | None  # CPU seconds, one thread, fp32; None: not measured (see note)
    note: str = ""


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def preset_models_on_meta(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(backbone, pretraining model) of the preset `name`, built on the meta device (shapes only, no memory)."""
    config = CONFIG_PRESETS[name]()
    backbone_class, pretraining_class = MODEL_CLASSES[type(config)]
    with torch.device("meta"):
        return backbone_class(config), pretraining_class(config)


def preset_parameters(name: str) -> tuple[int, int]:
    """(backbone, pretraining model) parameter counts of the preset `name`."""
    backbone, pretraining = preset_models_on_meta(name)
    return count_parameters(backbone), count_parameters(pretraining)
