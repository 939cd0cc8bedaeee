from .configuration_ijepa import IJepaConfig
from .image_processing_ijepa import IJepaImageProcessor
from .modeling_ijepa import (
    IJepaForImageClassification,
    IJepaForPreTraining,
    IJepaForPreTrainingOutput,
    IJepaModel,
    IJepaModelOutput,
    IJepaPredictor,
    IJepaPreTrainedModel,
)

__all__ = [
    "IJepaConfig",
    "IJepaForImageClassification",
    "IJepaForPreTraining",
    "IJepaForPreTrainingOutput",
    "IJepaImageProcessor",
    "IJepaModel",
    "IJepaModelOutput",
    "IJepaPreTrainedModel",
    "IJepaPredictor",
]
