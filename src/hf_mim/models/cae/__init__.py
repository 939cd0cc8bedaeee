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
from .tokenizer_dalle import DalleTokenizer, DalleTokenizerConfig


def register_dalle_tokenizer() -> None:
    """Register `DalleTokenizerConfig` / `DalleTokenizer` with `AutoConfig` / `AutoModel` (and the remote-code export
    and the model cards).

    Kept out of tokenizer_dalle.py so that the tokenizer's remote-code bundle does not pull in the registration."""
    from ...auto_registration import register_model
    from .card_dalle_tokenizer import DALLE_TOKENIZER_CARD

    register_model(DalleTokenizerConfig, model=DalleTokenizer, card=DALLE_TOKENIZER_CARD)


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
    "register_dalle_tokenizer",
]
