"""Small pieces shared by the model classes of every method."""

import torch
from transformers.modeling_outputs import ImageClassifierOutput


def classification_output(model, features: torch.Tensor, labels, backbone_outputs, hidden_states, return_dict: bool):
    """Classifier head on pooled `features` -> ImageClassifierOutput (loss from transformers' `loss_function`, which
    picks cross-entropy / BCE / MSE from `config.problem_type`)."""
    logits = model.classifier(features)
    loss = model.loss_function(labels, logits, model.config) if labels is not None else None
    output = ImageClassifierOutput(
        loss=loss, logits=logits, hidden_states=hidden_states, attentions=getattr(backbone_outputs, "attentions", None)
    )
    return output if return_dict else output.to_tuple()


def output_flags(config, output_attentions, output_hidden_states, return_dict) -> tuple[bool, bool, bool]:
    """Resolve the three output switches the way transformers models do: an explicit argument wins, otherwise the
    config's `output_attentions` / `output_hidden_states` / `return_dict` apply."""
    return (
        config.output_attentions if output_attentions is None else output_attentions,
        config.output_hidden_states if output_hidden_states is None else output_hidden_states,
        config.return_dict if return_dict is None else return_dict,
    )


class RemoteCodeExportMixin:
    """`save_pretrained(..., remote_code=...)` for hf_mim's `PreTrainedModel`s (list it before `PreTrainedModel`).

    * `remote_code=True`: also write the remote-code bundle and `auto_map` (`hf_mim.hub.remote_code.export_remote_code`),
      so the folder loads in plain transformers with `trust_remote_code=True`. Save the image processor first (or
      call `export_remote_code(dir)` after it) to give `preprocessor_config.json` its `auto_map` too.
    * `remote_code=False`: a plain folder; an `auto_map` inherited from a loaded remote-code folder is dropped, so the
      config never points at files the folder lacks.
    * `None` (default): keep what the model was loaded from: re-export if its config carries an `auto_map`.
    """

    def save_pretrained(self, save_directory, *args, remote_code: bool | None = None, **kwargs):
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return result
        if remote_code is None:
            remote_code = bool(getattr(self.config, "auto_map", None))
        try:  # inside a try block, so that this module can itself be shipped as remote code
            from hf_mim.hub.remote_code import export_remote_code, remove_auto_map
        except ImportError:
            if remote_code and getattr(self, "_auto_class", None) is None:
                raise ImportError("save_pretrained(remote_code=True) needs the hf_mim package installed.") from None
            return result  # loaded as remote code: transformers copies the code files itself
        if remote_code:
            export_remote_code(save_directory)
        else:
            remove_auto_map(save_directory)
        return result
