from .configuration_cae import CaeConfig
from .image_processing_cae import CaeImageProcessor, CaeImageProcessorKwargs
from .modeling_cae import (
    CaeForImageClassification,
    CaeForPreTraining,
    CaeForPreTrainingOutput,
    CaeModel,
    CaeModelOutput,
    CaePreTrainedModel,
    cae_position_table,
)

__all__ = [
    "CaeConfig",
    "CaeForImageClassification",
    "CaeForPreTraining",
    "CaeForPreTrainingOutput",
    "CaeImageProcessor",
    "CaeImageProcessorKwargs",
    "CaeModel",
    "CaeModelOutput",
    "CaePreTrainedModel",
    "cae_position_table",
]
