"""The encoder pass every ViT here shares: blocks over the embedded tokens, hidden states and attention probabilities
collected on the way, the final norm at the end, one result type (`Encoding`).

`CapiModel.encode`, `IJepaModel.encode` and `CaeModel.encode` embed their input their own way (registers and rotary
coordinates, added sin-cos tables, masked patches left out) and hand the tokens to `encode_blocks`; their heads,
predictors and losses, and the backbones, read the `Encoding`.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput


@dataclass
class Encoding(ModelOutput):
    """
    last_hidden_state (`(batch, tokens, hidden_size)`): the last block's output, before the encoder's final norm
        (CAE's fine-tuning feature pools these patch tokens first and norms their mean).
    tokens (`(batch, tokens, hidden_size)`): the same after the final norm, what heads, predictors and losses read.
    grid (`tuple[int, int]`): rows and columns of patches of the input.
    coords (`(batch, tokens, 2)`, *optional*): the tokens' coordinates, for blocks with rotary attention (CAPI).
    patch_coords (`(batch, num_patches, 2)`, *optional*): the coordinates of every patch position, masked ones
        included (where CAPI's predictor places its queries).
    hidden_states (`tuple`, *optional*): the input embeddings and every block's output (before the final norm).
    attentions (`tuple`, *optional*): every block's attention probabilities, (batch, heads, tokens, tokens).
    """

    last_hidden_state: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    grid: tuple[int, int] | None = None
    coords: torch.Tensor | None = None
    patch_coords: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def encode_blocks(
    blocks: nn.ModuleList,
    final_norm: nn.Module,
    hidden_states: torch.Tensor,
    grid: tuple[int, int],
    coords: torch.Tensor | None = None,
    patch_coords: torch.Tensor | None = None,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
    attention_masks: list[torch.Tensor | None] | None = None,
) -> Encoding:
    """Run `blocks` (pre-norm self-attention blocks, `hf_mim.layers.blocks`) over the embedded tokens, at rotary
    `coords` when the blocks use them, then `final_norm`. Records the input and every block's output when
    `output_hidden_states`, every block's attention probabilities when `output_attentions` (the eager kernel).
    `attention_masks`: one additive attention bias (or None) per block (CAE's relative position bias)."""
    all_hidden = (hidden_states,) if output_hidden_states else None
    all_attentions = () if output_attentions else None
    for i, block in enumerate(blocks):
        if attention_masks is None or attention_masks[i] is None:
            hidden_states, weights = block(hidden_states, coords, output_attentions=output_attentions)
        else:
            hidden_states, weights = block(
                hidden_states, coords, output_attentions=output_attentions, attention_mask=attention_masks[i]
            )
        if output_hidden_states:
            all_hidden += (hidden_states,)
        if output_attentions:
            all_attentions += (weights,)
    return Encoding(
        last_hidden_state=hidden_states,
        tokens=final_norm(hidden_states),
        grid=grid,
        coords=coords,
        patch_coords=patch_coords,
        hidden_states=all_hidden,
        attentions=all_attentions,
    )
