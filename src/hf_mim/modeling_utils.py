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
