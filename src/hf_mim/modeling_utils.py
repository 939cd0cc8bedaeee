"""Small pieces shared by the model classes of every method."""

import torch
from transformers.modeling_outputs import ImageClassifierOutput


def classification_output(model, features: torch.Tensor, labels, backbone_outputs, hidden_states, return_dict: bool):
    """Classifier head on pooled `features` -> ImageClassifierOutput (loss from transformers' `loss_function`, which
    picks cross-entropy / BCE / MSE from `config.problem_type`)."""
    logits = model.classifier(features)
    loss = model.loss_function(labels, logits, model.config) if labels is not None else None
    output = ImageClassifierOutput(
        loss=loss, logits=logits, hidden_states=hidden_states, attentions=backbone_outputs.attentions
    )
    return output if return_dict else output.to_tuple()
