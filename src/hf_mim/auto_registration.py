"""Register every hf_mim model with transformers' Auto classes (runs on `import hf_mim`).

`exist_ok=True` keeps re-imports (notebook reloads, spawned workers) from raising.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)


def register_model(config_class, model=None, classification=None, pretraining=None, image_processor=None) -> None:
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    for auto_class, target in (
        (AutoModel, model),
        (AutoModelForImageClassification, classification),
        (AutoModelForPreTraining, pretraining),
    ):
        if target is not None:
            auto_class.register(config_class, target, exist_ok=True)
    if image_processor is not None:
        AutoImageProcessor.register(
            config_class, image_processor_classes={"torchvision": image_processor}, exist_ok=True
        )
