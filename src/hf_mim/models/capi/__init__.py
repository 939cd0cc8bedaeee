from .configuration_capi import CapiConfig
from .image_processing_capi import CapiImageProcessor
from .modeling_capi import CapiForImageClassification, CapiModel, CapiModelOutput, CapiPreTrainedModel

__all__ = [
    "CapiConfig",
    "CapiForImageClassification",
    "CapiImageProcessor",
    "CapiModel",
    "CapiModelOutput",
    "CapiPreTrainedModel",
]
