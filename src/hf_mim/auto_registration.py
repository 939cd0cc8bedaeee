"""Register every hf_mim model with transformers' Auto classes (runs on `import hf_mim`).

The same classes are recorded for the remote-code export (`hf_mim.hub.remote_code`), and the method's card text
(`models/<m>/card_<m>.py`) for the model cards (`hf_mim.hub.model_cards`). `exist_ok=True` keeps re-imports (notebook
reloads, spawned workers) from raising.

Every model type is also registered with `AutoVideoProcessor` as having no video processor (an empty backend map).
Without it, each `pipeline(...)` on an exported folder stopped at transformers' "Do you wish to run the custom code?
[y/N]" question (15 s in a terminal): vision pipelines try a video processor as an optional component, and
`AutoVideoProcessor` guesses one from the folder's `auto_map` (`image_processing_capi.CapiImageProcessor` ->
`...CapiVideoProcessor`, a class that does not exist). With no local class registered for the config, it counted as
remote code only and asked. Registered, transformers treats the model type as locally covered: `trust_remote_code`
resolves to False without a question, no remote module is imported, and the lookup fails with a ValueError that the
pipeline already treats as "no video processor". This goes through transformers' public `register` API; nothing in
transformers is patched. Without hf_mim, transformers' own `trust_remote_code` rule applies unchanged.
"""

import os

from transformers import (
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    AutoVideoProcessor,
)

from .hub.model_cards import CardText, register_card_text
from .hub.remote_code import register_remote_code_classes


def register_model(
    config_class,
    model=None,
    classification=None,
    pretraining=None,
    image_processor=None,
    backbone=None,
    card: CardText | None = None,
) -> None:
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    if card is not None:
        register_card_text(config_class.model_type, card)
    exported = {
        "AutoConfig": config_class,
        "AutoModel": model,
        "AutoModelForImageClassification": classification,
        "AutoModelForPreTraining": pretraining,
        "AutoBackbone": backbone,
        "AutoImageProcessor": image_processor,
    }
    register_remote_code_classes(config_class.model_type, {k: v for k, v in exported.items() if v is not None})
    for auto_class, target in (
        (AutoModel, model),
        (AutoModelForImageClassification, classification),
        (AutoModelForPreTraining, pretraining),
        (AutoBackbone, backbone),
    ):
        if target is not None:
            auto_class.register(config_class, target, exist_ok=True)
    if image_processor is not None:
        AutoImageProcessor.register(
            config_class, image_processor_classes={"torchvision": image_processor}, exist_ok=True
        )
    if backbone is not None:
        enable_auto_backbone_local_folders()
    # hf_mim models take no video processor: see the module docstring (no trust_remote_code prompt in pipelines).
    AutoVideoProcessor.register(config_class, video_processor_classes={}, exist_ok=True)


def enable_auto_backbone_local_folders() -> None:
    """Let `AutoBackbone.from_pretrained` read a local folder (idempotent).

    transformers 5.x's `AutoBackbone.from_pretrained` treats every name that `HfApi.repo_exists` does not find on the
    Hub as a timm model: a local folder fails (an `HFValidationError` for an absolute path, a network lookup, then
    timm, for a relative one), for transformers' own backbones as for ours. An existing local directory is sent to the
    regular Auto-class loading (config.json -> registered backbone class), as transformers 4.x did; every other name
    takes transformers' own path unchanged.
    """
    current = AutoBackbone.__dict__.get("from_pretrained")
    if getattr(current, "__func__", None) is not None and getattr(current.__func__, "_hf_mim_local_folders", False):
        return
    from transformers.models.auto.auto_factory import _BaseAutoBackboneClass

    original = _BaseAutoBackboneClass.from_pretrained.__func__
    regular = super(_BaseAutoBackboneClass, AutoBackbone).from_pretrained.__func__  # _BaseAutoModelClass's

    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        if isinstance(pretrained_model_name_or_path, str | os.PathLike) and os.path.isdir(
            pretrained_model_name_or_path
        ):
            kwargs.pop("use_timm_backbone", None)
            return regular(cls, pretrained_model_name_or_path, *model_args, **kwargs)
        return original(cls, pretrained_model_name_or_path, *model_args, **kwargs)

    from_pretrained._hf_mim_local_folders = True
    from_pretrained.__doc__ = original.__doc__
    AutoBackbone.from_pretrained = classmethod(from_pretrained)
