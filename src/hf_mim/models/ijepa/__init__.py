from .backbone_ijepa import IJepaBackbone
from .configuration_ijepa import IJepaConfig
from .image_processing_ijepa import IJepaImageProcessor, IJepaImageProcessorKwargs
from .modeling_ijepa import (
    IJepaForImageClassification,
    IJepaForPreTraining,
    IJepaForPreTrainingOutput,
    IJepaModel,
    IJepaModelOutput,
    IJepaPredictor,
    IJepaPreTrainedModel,
)


def _register_transformers_key_renaming() -> None:
    """Checkpoints written by transformers' IJepaModel may use its pre-5.9 names; map them like transformers does."""
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )

    mapping = get_checkpoint_conversion_mapping("ViTModel")
    if mapping is not None and get_checkpoint_conversion_mapping(IJepaConfig.model_type) is None:
        register_checkpoint_conversion_mapping(IJepaConfig.model_type, mapping)


_register_transformers_key_renaming()

__all__ = [
    "IJepaBackbone",
    "IJepaConfig",
    "IJepaForImageClassification",
    "IJepaForPreTraining",
    "IJepaForPreTrainingOutput",
    "IJepaImageProcessor",
    "IJepaImageProcessorKwargs",
    "IJepaModel",
    "IJepaModelOutput",
    "IJepaPreTrainedModel",
    "IJepaPredictor",
]
