"""What a CAE checkpoint is, for hf_mim.models.cae.convert_cae: the container its state dict sits in, which of the
three codebases' layouts its keys follow (Atten4Vis/CAE, lxtGH/CAE, MMPretrain / MMSelfSup), CAE v1 or v2, the release
a name refers to, and every original key's hf_mim name (the other layouts are mapped to Atten4Vis names first, then
renamed by one table). Keys the conversion drops on purpose are listed here with the reason the report gives. Apart
from the conversion so that another codebase's layout is one more table and mapping here, with the conversion
(shapes -> config, the checks, the folder) unchanged.
"""

import re

import torch

from ...hub.conversion import CheckpointMismatchError, raise_on_mismatch
from ...hub.releases import releases_for

# hf_mim.hub.releases: file names, data, reported numbers (A4V README table for v1, the CAE v2 abstract for v2 ViT-L) and
# the expected architecture of every release, keyed by this converter's release names (`cae_base_1600ep`, ...).
RELEASES = {release.key: release for release in releases_for("cae")}

CONTAINER_KEYS = ("model", "module", "state_dict")  # tried in this order, as the official loaders do
IGNORED_TOP_LEVEL = {
    "optimizer": "optimizer state",
    "epoch": "epoch counter",
    "scaler": "AMP grad-scaler state",
    "args": "training arguments (argparse.Namespace)",
    "model_ema": "EMA weights of the training run (not the pretrained model)",
    "meta": "mmengine metadata",
    "message_hub": "mmengine logging state",
    "param_schedulers": "learning-rate / momentum scheduler state",
}
_TWIN = "the encoder's stop-gradient twin, equal to it (momentum 0); hf_mim reruns the encoder for the target"
IGNORED_PREFIXES = {
    "a4v": {"alignment_encoder.": "v1 alignment branch: " + _TWIN, "teacher.": "alignment target: " + _TWIN},
    "lxt": {"teacher.": "alignment target: " + _TWIN},
    "mmpretrain": {
        "teacher.": "alignment target: " + _TWIN,
        "target_generator.": "DALL-E tokenizer (the frozen target network, not CAE's weights)",
        "data_preprocessor.": "normalisation constants of the data preprocessor",
    },
    "a4v_finetune": {"head.": "classification head of the fine-tuned model (the encoder is converted, as CaeModel)"},
}
# The relative position tables' index buffers (`rel_pos_bias.relative_position_index`,
# `blocks.<i>.attn.relative_position_index`): ignored by this suffix, after a check against the recomputed index.
RELATIVE_POSITION_INDEX = "relative_position_index"
RELATIVE_POSITION_INDEX_REASON = (
    "index buffers of the relative position tables: recomputed from the grid (hf_mim.layers.relative_position_index), "
    "checked equal"
)
V2_UNUSED = {"regresser.norm.": "CAE v2 regressor norm: built by the original class but not used by v2's forward"}
ENCODER_ONLY_UNUSED = {"mask_token": "regressor query token: the file holds no regressor, so the encoder is saved"}
LAYOUT_NAMES = {
    "a4v": "Atten4Vis/CAE",
    "lxt": "lxtGH/CAE (pretext_neck)",
    "mmpretrain": "MMPretrain / MMSelfSup (backbone / neck)",
    "a4v_finetune": "Atten4Vis/CAE fine-tuned model (modeling_finetune.py VisionTransformer)",
}

# ------------------------------------------------------------------------------------------ key renaming
# Original A4V names -> hf_mim names (CaeForPreTraining, encoder under `cae.`). LXT and MMPretrain keys are first
# mapped to A4V names. `attention.qkv.weight` is a placeholder that `split_fused_qkv` splits into q / k / v.
_EMBEDDINGS = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
    # the fine-tuning / segmentation recipes' shared relative position table (`use_shared_rel_pos_bias`)
    "rel_pos_bias.relative_position_bias_table": "relative_position_bias.relative_position_bias_table",
}
_BLOCK = {  # encoder blocks and v1 decoder blocks (BEiT-style pre-norm block)
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "attn.qkv.weight": "attention.qkv.weight",
    "attn.q_bias": "attention.q_proj.bias", "attn.v_bias": "attention.v_proj.bias",
    "attn.proj.weight": "attention.o_proj.weight", "attn.proj.bias": "attention.o_proj.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
    "gamma_1": "layer_scale1.lambda1", "gamma_2": "layer_scale2.lambda1",
    # a block's own relative position table (`use_rel_pos_bias`); CaeModel keeps it on the block
    "attn.relative_position_bias_table": "relative_position_bias.relative_position_bias_table",
}  # fmt: skip
_CROSS = "attention.cross_attention."
_REGRESSOR_BLOCK = {
    **{f"norm1_{x}.{p}": f"attention.norm1_{x}.{p}" for x in "qkv" for p in ("weight", "bias")},
    "norm2_cross.weight": "norm2.weight", "norm2_cross.bias": "norm2.bias",
    "cross_attn.q.weight": _CROSS + "q_proj.weight", "cross_attn.k.weight": _CROSS + "k_proj.weight",
    "cross_attn.v.weight": _CROSS + "v_proj.weight",
    "cross_attn.q_bias": _CROSS + "q_proj.bias", "cross_attn.v_bias": _CROSS + "v_proj.bias",
    "cross_attn.proj.weight": _CROSS + "o_proj.weight", "cross_attn.proj.bias": _CROSS + "o_proj.bias",
    "mlp_cross.fc1.weight": "mlp.fc1.weight", "mlp_cross.fc1.bias": "mlp.fc1.bias",
    "mlp_cross.fc2.weight": "mlp.fc2.weight", "mlp_cross.fc2.bias": "mlp.fc2.bias",
    "gamma_1_cross": "layer_scale1.lambda1", "gamma_2_cross": "layer_scale2.lambda1",
}  # fmt: skip
_TOP = {
    "mask_token": "mask_token",
    "rd_pos_embed": "regressor_position_embeddings",
    "encoder_to_regresser.weight": "encoder_to_regressor.weight",
    "encoder_to_regresser.bias": "encoder_to_regressor.bias",
    "encoder_to_regresser_norm.weight": "encoder_to_regressor_norm.weight",
    "encoder_to_regresser_norm.bias": "encoder_to_regressor_norm.bias",
    "regresser.norm.weight": "regressor_layernorm.weight",
    "regresser.norm.bias": "regressor_layernorm.bias",
    "decoder.norm.weight": "decoder.layernorm.weight",
    "decoder.norm.bias": "decoder.layernorm.bias",
    "decoder.head.weight": "decoder.head.weight",
    "decoder.head.bias": "decoder.head.bias",
}
_A4V_BLOCKS = (
    (re.compile(r"^encoder\.blocks\.(\d+)\.(.+)$"), "cae.layers", _BLOCK),
    (re.compile(r"^regresser\.regressor_blocks\.(\d+)\.(.+)$"), "regressor", _REGRESSOR_BLOCK),
    (re.compile(r"^decoder\.decoder_blocks\.(\d+)\.(.+)$"), "decoder.layers", _BLOCK),
)
# Keys of the pretraining heads (A4V names): their presence makes a checkpoint a full one.
_HEAD_PREFIXES = ("regresser.", "decoder.", "rd_pos_embed", "encoder_to_regresser")


def rename_a4v_key(key: str) -> str | None:
    """A4V key -> CaeForPreTraining key (fused qkv -> `...attention.qkv.weight`); None if unknown."""
    if key.startswith("encoder.") and key[len("encoder.") :] in _EMBEDDINGS:
        return "cae." + _EMBEDDINGS[key[len("encoder.") :]]
    for pattern, prefix, table in _A4V_BLOCKS:
        if (match := pattern.match(key)) and match.group(2) in table:
            return f"{prefix}.{match.group(1)}.{table[match.group(2)]}"
    return _TOP.get(key)


_LXT_PREFIXES = (  # lxtGH/CAE -> A4V; `encoder.*` and `mask_token` are named alike
    ("pretext_neck.regressor_blocks.", "regresser.regressor_blocks."),
    ("pretext_neck.decoder_blocks.", "decoder.decoder_blocks."),
    ("pretext_neck.norm.", "regresser.norm."),  # after the regressor
    ("pretext_neck.norm2.", "decoder.norm."),  # after the decoder blocks
    ("pretext_neck.head.", "decoder.head."),
    ("encoder_to_decoder_norm.", "encoder_to_regresser_norm."),
    ("encoder_to_decoder.", "encoder_to_regresser."),
)


def lxt_to_a4v(key: str) -> str:
    for old, new in _LXT_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


_MMP_TOP = {
    "backbone.cls_token": "encoder.cls_token",
    "backbone.pos_embed": "encoder.pos_embed",
    "backbone.patch_embed.projection.weight": "encoder.patch_embed.proj.weight",
    "backbone.patch_embed.projection.bias": "encoder.patch_embed.proj.bias",
    "backbone.ln1.weight": "encoder.norm.weight",  # the backbone's final norm
    "backbone.ln1.bias": "encoder.norm.bias",
    "neck.mask_token": "mask_token",
    "neck.norm_regressor.weight": "regresser.norm.weight",
    "neck.norm_regressor.bias": "regresser.norm.bias",
    "neck.norm_decoder.weight": "decoder.norm.weight",
    "neck.norm_decoder.bias": "decoder.norm.bias",
    "neck.head.weight": "decoder.head.weight",
    "neck.head.bias": "decoder.head.bias",
}
_MMP_BLOCK = {"ln1.": "norm1.", "ln2.": "norm2.", "attn.": "attn.", "ffn.layers.0.0.": "mlp.fc1.",
              "ffn.layers.1.": "mlp.fc2.", "gamma_1": "gamma_1", "gamma_2": "gamma_2"}  # fmt: skip
_MMP_REGRESSOR = {"norm1_q_cross.": "norm1_q.", "norm1_k_cross.": "norm1_k.", "norm1_v_cross.": "norm1_v.",
                  "norm2_cross.": "norm2_cross.", "cross_attn.": "cross_attn.", "ffn.layers.0.0.": "mlp_cross.fc1.",
                  "ffn.layers.1.": "mlp_cross.fc2.", "gamma_1_cross": "gamma_1_cross",
                  "gamma_2_cross": "gamma_2_cross"}  # fmt: skip
_MMP_LAYERS = {
    "backbone.layers": ("encoder.blocks", _MMP_BLOCK),
    "neck.regressors": ("regresser.regressor_blocks", _MMP_REGRESSOR),
    "neck.decoders": ("decoder.decoder_blocks", _MMP_BLOCK),
}
_MMP_LAYER = re.compile(r"^(backbone\.layers|neck\.regressors|neck\.decoders)\.(\d+)\.(.+)$")


def mmpretrain_to_a4v(key: str) -> str | None:
    """MMPretrain / MMSelfSup CAE key -> A4V key (the mapping of MMPretrain's CAE model and neck); None if unknown."""
    if key in _MMP_TOP:
        return _MMP_TOP[key]
    if match := _MMP_LAYER.match(key):
        prefix, table = _MMP_LAYERS[match.group(1)]
        rest = match.group(3)
        for old, new in table.items():
            if rest.startswith(old):
                return f"{prefix}.{match.group(2)}.{new}{rest[len(old) :]}"
    return None


# A4V fine-tuned models (`VisionTransformer` of models/modeling_finetune.py) hold the encoder at the top level; with
# mean pooling (the fine-tuning recipe) `norm` is an Identity and `fc_norm`, the norm of the pooled tokens, is the
# encoder's final norm (CaeModel's `layernorm`, which `pooling="mean"` applies to the mean of the patch tokens).
_FINETUNE_ENCODER = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.", "rel_pos_bias.")


def finetune_to_a4v(key: str) -> str | None:
    """A4V fine-tuned model key -> A4V pretraining key; None if unknown (`head.*` is ignored by the caller)."""
    if key.startswith("fc_norm."):
        return "encoder.norm." + key[len("fc_norm.") :]
    if key.startswith(_FINETUNE_ENCODER):
        return "encoder." + key
    return None


def to_a4v(key: str, layout: str) -> str | None:
    if layout == "a4v_finetune":
        return finetune_to_a4v(key)
    if layout == "lxt":
        return lxt_to_a4v(key)
    if layout == "mmpretrain":
        return mmpretrain_to_a4v(key)
    return key


def rename_key(key: str, layout: str) -> str | None:
    """Original key of any supported layout -> CaeForPreTraining key; None if unknown."""
    a4v = to_a4v(key, layout)
    return None if a4v is None else rename_a4v_key(a4v)


def split_fused_qkv(tensors: dict[str, torch.Tensor], origin: dict[str, str]) -> dict[str, torch.Tensor]:
    """`...attention.qkv.weight` (3D, D) -> q_proj / k_proj / v_proj weights (rows q | k | v, heads contiguous)."""
    out = {}
    for name, tensor in tensors.items():
        if not name.endswith("attention.qkv.weight"):
            out[name] = tensor
            continue
        if tensor.ndim != 2 or tensor.shape[0] % 3:
            raise CheckpointMismatchError(
                f"{origin[name]} {tuple(tensor.shape)}: a fused qkv weight needs 3 x D rows (q | k | v)."
            )
        base = name.removesuffix("qkv.weight")
        for part, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
            out[f"{base}{part}.weight"] = chunk
            origin[f"{base}{part}.weight"] = origin[name]
    return out


# ------------------------------------------------------------------------------------------ layouts
def unwrap_checkpoint(checkpoint, checkpoint_path="<checkpoint>") -> tuple[dict[str, torch.Tensor], list[str], str]:
    """File contents -> (state dict without a leading `module.`, ignored top-level entries, container description).

    The state dict is the first of `model`, `module`, `state_dict` present, else the whole file when it is a flat
    dict of tensors; the other top-level entries must be known training state (optimizer, scaler, ...)."""
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise CheckpointMismatchError(
            f"Expected a CAE checkpoint dict, got {type(checkpoint).__name__}"
            + (" (empty)" if isinstance(checkpoint, dict) else "")
            + "."
        )
    container = next((key for key in CONTAINER_KEYS if key in checkpoint), None)
    if container is None:
        if not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            described = ", ".join(f"{k}: {type(v).__name__}" for k, v in list(checkpoint.items())[:10])
            raise CheckpointMismatchError(
                "No 'model', 'module' or 'state_dict' entry and not a flat state dict; top-level entries: "
                f"{described}."
            )
        state, ignored_top, description = checkpoint, [], "raw state dict"
    else:
        state = checkpoint[container]
        others = [k for k in checkpoint if k != container]
        unknown = [str(k) for k in others if k not in IGNORED_TOP_LEVEL and k not in CONTAINER_KEYS]
        raise_on_mismatch(
            checkpoint_path, [], unknown, hint=f"Top-level keys besides '{container}': {', '.join(IGNORED_TOP_LEVEL)}."
        )
        if not isinstance(state, dict) or not state:
            raise CheckpointMismatchError(f"checkpoint[{container!r}] is not a state dict ({type(state).__name__}).")
        ignored_top = [str(k) for k in others]
        epoch = checkpoint.get("epoch")
        description = f"checkpoint[{container!r}]" + (f", epoch {epoch}" if isinstance(epoch, int) else "")
    non_tensors = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise CheckpointMismatchError(f"Entries that are not tensors: {', '.join(non_tensors[:20])}.")
    if any(str(k).startswith("module.") for k in state):
        description += ", `module.` prefix stripped"
    return {str(k).removeprefix("module."): v for k, v in state.items()}, ignored_top, description


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    if any(k.startswith("backbone.") for k in state):
        return "mmpretrain"
    if any(k.startswith("pretext_neck.") for k in state):
        return "lxt"
    if any(k.startswith("encoder.") for k in state):
        return "a4v"
    if any(k.startswith("blocks.") for k in state) and any(k.startswith("patch_embed.") for k in state):
        return "a4v_finetune"
    raise CheckpointMismatchError(
        "Not a CAE checkpoint: no `encoder.*` (Atten4Vis / lxtGH CAE), no `backbone.*` (MMPretrain) and no "
        "`blocks.*` + `patch_embed.*` (Atten4Vis fine-tuned model) keys; "
        "first keys: " + ", ".join(list(state)[:8]) + "."
    )


def has_pretraining_heads(state: dict[str, torch.Tensor], layout: str) -> bool:
    return any((a4v := to_a4v(k, layout)) is not None and a4v.startswith(_HEAD_PREFIXES) for k in state)


_V2_NAME = re.compile(r"cae_?v2")
_V1_RELEASE = re.compile(r"cae_(?:dvae_)?(base|large)_(\d+)ep")


def _normalized(name) -> str:
    return str(name).lower().replace("-", "_")


def release_of(*names) -> str | None:
    """The release a model / file name refers to (`cae_base_1600ep`, `cae-large-1600ep`, `cae_dvae_base_1600ep`,
    `caev2_large`, `CAEv2-Large`, ...)."""
    for name in names:
        if not name:
            continue
        normalized = _normalized(name)
        if _V2_NAME.search(normalized):
            if re.search(r"cae_?v2_?large", normalized):
                return "caev2_large"
            continue
        if match := _V1_RELEASE.search(normalized):
            release = f"cae_{match.group(1)}_{match.group(2)}ep"
            if release in RELEASES:
                return release
    return None


def version_from_name(*names) -> tuple[int | None, str | None]:
    for name in names:
        if not name:
            continue
        normalized = _normalized(name)
        if _V2_NAME.search(normalized):
            return 2, str(name)
        if _V1_RELEASE.search(normalized):
            return 1, str(name)
    return None, None


def infer_version(state, layout: str, is_full: bool, args, names) -> tuple[int, str]:
    """v1 or v2, and where that came from: the keys of a full checkpoint (v1 has the alignment encoder and decoder
    blocks; the lxtGH and MMPretrain codebases are v1 only), else the name, `args.model_type`, and for encoder-only
    files the released layouts (v1 files keep `mask_token`, v2 files hold the encoder only)."""
    structural = source = None
    if layout == "a4v_finetune":  # the encoder alone, alike in v1 and v2: the name / args decide, else v1
        named, name = version_from_name(*names)
        if named is not None:
            return named, f"name {name!r}"
        from_args = {"cae": 1, "caev2": 2}.get(getattr(args, "model_type", None))
        if from_args is not None:
            return from_args, f"args.model_type={args.model_type!r}"
        return 1, "fine-tuned encoder (v1 and v2 encoders are alike; v1 assumed)"
    if layout != "a4v":
        structural, source = 1, f"{LAYOUT_NAMES[layout]} layout (CAE v1 only)"
    elif is_full:
        v1_keys = [k for k in state if k.startswith(("alignment_encoder.", "decoder.decoder_blocks."))]
        structural = 1 if v1_keys else 2
        source = "alignment encoder / decoder blocks present" if v1_keys else "no alignment encoder, no decoder blocks"
    named, name = version_from_name(*names)
    model_type = getattr(args, "model_type", None)
    from_args = {"cae": 1, "caev2": 2}.get(model_type)
    if structural is not None:
        for other, where in ((from_args, f"args.model_type={model_type!r}"), (named, f"the name {name!r}")):
            if other is not None and other != structural:
                raise ValueError(f"{where} says CAE v{other}, but the checkpoint is CAE v{structural} ({source}).")
        return structural, f"keys: {source}"
    if named is not None:
        return named, f"name {name!r}"
    if from_args is not None:
        return from_args, f"args.model_type={model_type!r}"
    if "mask_token" in state:
        return 1, "encoder + mask_token: the released CAE v1 layout"
    return 2, "encoder only: the released CAE v2 layout (encoder weights only)"
