from .backbone_vicregl import VicreglBackbone
from .configuration_vicregl import VicreglConfig
from .image_processing_vicregl import VicreglImageProcessor, VicreglImageProcessorKwargs
from .loss_vicregl import VicregCoefficients, vicreg_global_loss, vicregl_local_loss
from .modeling_vicregl import (
    VicreglForImageClassification,
    VicreglForPreTraining,
    VicreglForPreTrainingOutput,
    VicreglModel,
    VicreglModelOutput,
    VicreglPreTrainedModel,
    VicreglProjector,
)

__all__ = [
    "VicreglBackbone",
    "VicregCoefficients",
    "VicreglConfig",
    "VicreglForImageClassification",
    "VicreglForPreTraining",
    "VicreglForPreTrainingOutput",
    "VicreglImageProcessor",
    "VicreglImageProcessorKwargs",
    "VicreglModel",
    "VicreglModelOutput",
    "VicreglPreTrainedModel",
    "VicreglProjector",
    "vicreg_global_loss",
    "vicregl_local_loss",
]
