from .backbone_capi import CapiBackbone
from .configuration_capi import CapiConfig
from .image_processing_capi import CapiImageProcessor, CapiImageProcessorKwargs
from .modeling_capi import (
    CapiForImageClassification,
    CapiForPreTraining,
    CapiForPreTrainingOutput,
    CapiModel,
    CapiModelOutput,
    CapiPreTrainedModel,
)

__all__ = [
    "CapiBackbone",
    "CapiConfig",
    "CapiForImageClassification",
    "CapiForPreTraining",
    "CapiForPreTrainingOutput",
    "CapiImageProcessor",
    "CapiImageProcessorKwargs",
    "CapiModel",
    "CapiModelOutput",
    "CapiPreTrainedModel",
]
