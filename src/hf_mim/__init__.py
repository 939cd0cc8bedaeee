"""hf_mim: self-supervised vision pretraining (CAPI, CAE, I-JEPA, VICRegL) native to transformers and accelerate.

Importing the package registers every model with transformers' Auto classes.
"""

from ._version import __version__  # noqa: F401  (hf_mim.__version__)
from .auto_registration import register_model
from .image_processing_utils import HfMimImageProcessor
from .models.cae import (
    CaeBackbone,
    CaeConfig,
    CaeForImageClassification,
    CaeForPreTraining,
    CaeForPreTrainingOutput,
    CaeImageProcessor,
    CaeModel,
    CaePreTrainedModel,
)
from .models.cae.card_cae import CAE_CARD
from .models.capi import (
    CapiBackbone,
    CapiConfig,
    CapiForImageClassification,
    CapiForPreTraining,
    CapiForPreTrainingOutput,
    CapiImageProcessor,
    CapiModel,
    CapiModelOutput,
    CapiPreTrainedModel,
)
from .models.capi.card_capi import CAPI_CARD
from .models.ijepa import (
    IJepaBackbone,
    IJepaConfig,
    IJepaForImageClassification,
    IJepaForPreTraining,
    IJepaForPreTrainingOutput,
    IJepaImageProcessor,
    IJepaModel,
    IJepaPreTrainedModel,
)
from .models.ijepa.card_ijepa import IJEPA_CARD
from .models.vicregl import (
    VicreglBackbone,
    VicreglConfig,
    VicreglForImageClassification,
    VicreglForPreTraining,
    VicreglForPreTrainingOutput,
    VicreglImageProcessor,
    VicreglModel,
    VicreglPreTrainedModel,
)
from .models.vicregl.card_vicregl import VICREGL_CARD

register_model(
    CapiConfig,
    model=CapiModel,
    classification=CapiForImageClassification,
    pretraining=CapiForPreTraining,
    image_processor=CapiImageProcessor,
    backbone=CapiBackbone,
    card=CAPI_CARD,
)

register_model(
    IJepaConfig,
    model=IJepaModel,
    classification=IJepaForImageClassification,
    pretraining=IJepaForPreTraining,
    image_processor=IJepaImageProcessor,
    backbone=IJepaBackbone,
    card=IJEPA_CARD,
)

register_model(
    CaeConfig,
    model=CaeModel,
    classification=CaeForImageClassification,
    pretraining=CaeForPreTraining,
    image_processor=CaeImageProcessor,
    backbone=CaeBackbone,
    card=CAE_CARD,
)

register_model(
    VicreglConfig,
    model=VicreglModel,
    classification=VicreglForImageClassification,
    pretraining=VicreglForPreTraining,
    image_processor=VicreglImageProcessor,
    backbone=VicreglBackbone,
    card=VICREGL_CARD,
)


__all__ = [
    "CaeBackbone",
    "CaeConfig",
    "CaeForImageClassification",
    "CaeForPreTraining",
    "CaeForPreTrainingOutput",
    "CaeImageProcessor",
    "CaeModel",
    "CaePreTrainedModel",
    "CapiBackbone",
    "CapiConfig",
    "CapiForImageClassification",
    "CapiForPreTraining",
    "CapiForPreTrainingOutput",
    "CapiImageProcessor",
    "CapiModel",
    "CapiModelOutput",
    "CapiPreTrainedModel",
    "HfMimImageProcessor",
    "IJepaBackbone",
    "IJepaConfig",
    "IJepaForImageClassification",
    "IJepaForPreTraining",
    "IJepaForPreTrainingOutput",
    "IJepaImageProcessor",
    "IJepaModel",
    "IJepaPreTrainedModel",
    "VicreglBackbone",
    "VicreglConfig",
    "VicreglForImageClassification",
    "VicreglForPreTraining",
    "VicreglForPreTrainingOutput",
    "VicreglImageProcessor",
    "VicreglModel",
    "VicreglPreTrainedModel",
]
