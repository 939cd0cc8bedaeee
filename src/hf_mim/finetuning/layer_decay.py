"""Layer-wise learning-rate decay (BEiT / MAE fine-tuning recipe) for any ViT-like image classifier.

Parameters are assigned a depth: 0 for everything in front of the encoder (patch embedding, position embeddings,
CLS / register / mask tokens), `i + 1` for encoder block `i`, and `L + 1` for everything behind it (final norm,
pooler, classifier, CAPI's predictor) where `L` is the number of encoder blocks. A parameter at depth `k` trains with
`base_lr * layer_decay ** (L + 1 - k)`: the head at `base_lr`, each block below it `layer_decay` times slower.

Recognised block names: hf_mim I-JEPA `*.layers.<i>.`, hf_mim CAPI `*.encoder.layer.<i>.`, and transformers'
ViT family (`encoder.layer.<i>.` before transformers 5.9, `layers.<i>.` after). Hierarchical backbones (Swin,
ConvNeXt) get their stage index, which is only a coarse stand-in for depth.
"""

import re
from collections.abc import Callable

from torch import nn

# A block index: "...layers.3." / "...encoder.layer.3." / "...blocks.3." (the first one in the name counts).
_BLOCK_PATTERN = re.compile(r"(?:^|\.)(?:layers|layer|blocks)\.(\d+)(?:\.|$)")
# Modules that sit behind the encoder even though their own blocks are called "layer.<i>" (CAPI's predictor).
_HEAD_PATTERN = re.compile(r"(?:^|\.)(?:predictor|decoder)(?:\.|$)")
# Everything the encoder consumes: patch/position embeddings and learned tokens.
_EMBEDDING_PATTERN = re.compile(
    r"(?:^|\.)(?:embeddings|patch_embed|patch_embeddings|pos_embed|position_embeddings|cls_token|dist_token|"
    r"register_tokens|registers|mask_token|reg_token)(?:\.|$)"
)
_NO_DECAY_NAMES = ("token", "position_embeddings", "pos_embed", "relative_position_bias_table", "registers")


def layer_id_for_parameter(name: str, num_layers: int) -> int:
    """Depth of parameter `name` in a backbone with `num_layers` encoder blocks: 0 (embeddings), `i + 1` (block `i`)
    or `num_layers + 1` (final norm, pooler, classifier, predictor and anything else behind the encoder)."""
    if _HEAD_PATTERN.search(name):
        return num_layers + 1
    match = _BLOCK_PATTERN.search(name)
    if match is not None:
        return min(int(match.group(1)) + 1, num_layers + 1)
    if _EMBEDDING_PATTERN.search(name):
        return 0
    return num_layers + 1


def num_backbone_layers(model: nn.Module) -> int:
    """Number of encoder blocks of `model`: the largest block index in its parameter names (predictor blocks
    excluded) plus one, else `config.num_hidden_layers`, else 0."""
    indices = [
        int(match.group(1))
        for name, _ in model.named_parameters()
        if not _HEAD_PATTERN.search(name) and (match := _BLOCK_PATTERN.search(name)) is not None
    ]
    if indices:
        return max(indices) + 1
    config = getattr(model, "config", None)
    return int(getattr(config, "num_hidden_layers", 0) or 0)


def default_no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """True for parameters trained without weight decay: biases, norm weights, every other 1-D parameter, learned
    tokens (CLS, registers, mask token) and position embeddings / relative position tables."""
    lowered = name.lower()
    return (
        param.ndim <= 1
        or lowered.endswith(".bias")
        or lowered == "bias"
        or "norm" in lowered
        or any(part in lowered for part in _NO_DECAY_NAMES)
    )


def layer_decay_parameter_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    layer_decay: float = 0.75,
    no_weight_decay_fn: Callable[[str, nn.Parameter], bool] | None = None,
    num_layers: int | None = None,
) -> list[dict]:
    """Optimizer parameter groups with layer-wise lr decay: one group per (depth, decay / no decay) pair.

    Each group holds `params`, `lr` (= `base_lr * layer_decay ** (L + 1 - depth)`), `weight_decay` (0 where
    `no_weight_decay_fn(name, param)` is true, default `default_no_weight_decay`), and for inspection `layer_id`,
    `lr_scale` and `param_names`. Frozen parameters (`requires_grad=False`) are left out. Learning-rate schedulers that
    scale each group's initial lr (all of transformers' and torch's) keep the ratios.
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must lie in (0, 1], got {layer_decay}")
    no_weight_decay_fn = no_weight_decay_fn or default_no_weight_decay
    num_layers = num_backbone_layers(model) if num_layers is None else num_layers
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer_id = layer_id_for_parameter(name, num_layers)
        decays = not no_weight_decay_fn(name, param)
        key = (layer_id, decays)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - layer_id)
            groups[key] = {
                "params": [],
                "param_names": [],
                "lr": base_lr * scale,
                "lr_scale": scale,
                "weight_decay": weight_decay if decays else 0.0,
                "layer_id": layer_id,
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]


__all__ = ["default_no_weight_decay", "layer_decay_parameter_groups", "layer_id_for_parameter", "num_backbone_layers"]
