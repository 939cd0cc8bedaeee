from .backbone_cae import CaeBackbone
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
from .targets_cae import ClipTeacher, load_target_model
from .tokenizer_dalle import DalleTokenizer, DalleTokenizerConfig, register_dalle_tokenizer

register_dalle_tokenizer()  # AutoModel / AutoConfig load tokenizer folders on `import hf_mim`

__all__ = [
    "CaeBackbone",
    "CaeConfig",
    "CaeForImageClassification",
    "CaeForPreTraining",
    "CaeForPreTrainingOutput",
    "CaeImageProcessor",
    "CaeImageProcessorKwargs",
    "CaeModel",
    "CaeModelOutput",
    "CaePreTrainedModel",
    "ClipTeacher",
    "DalleTokenizer",
    "DalleTokenizerConfig",
    "cae_position_table",
    "load_target_model",
]
