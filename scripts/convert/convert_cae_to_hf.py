#!/usr/bin/env python
"""Convert a CAE (v1) or CAE v2 checkpoint - a release, a full training save or a third-party pretraining save - into
a Hub-ready folder.

    python scripts/convert/convert_cae_to_hf.py --checkpoint_path cae_base_1600ep.pth --output_dir cae-base-1600ep \
        [--num_attention_heads H] [--decoder_num_attention_heads H] [--model_name NAME] [--push_to_hub REPO_ID]

Accepted layouts (reference/cae.md §1.4):

* (a) `Atten4Vis/CAE` training saves `{'model', 'optimizer', 'epoch', 'scaler', 'args'}`: v1 (`encoder.*`, the
  `alignment_encoder.*` twin, `rd_pos_embed`, `mask_token`, `regresser.*`, `decoder.decoder_blocks.*`, `decoder.*`)
  and v2 (no alignment encoder, no decoder blocks, `encoder_to_regresser*` when the widths differ, head width = the
  target dimension, an unused `regresser.norm`);
* (b) `lxtGH/CAE` saves (`pretext_neck.*` regressor / decoder / norms / head, optional `encoder_to_decoder*`,
  `teacher.*`; the regressor's table is recomputed each forward, so it is rebuilt here as the original builds it);
* (c) released v1 files `{'model': {'encoder.*', 'mask_token'}}` and v2 encoder-only files `{'model': {'encoder.*'}}`;
* (e) MMPretrain / MMSelfSup saves (`backbone.*`, `neck.*`, `teacher.*`, `target_generator.*`; the regressor uses the
  backbone's table).

The state dict is the first of `checkpoint['model']`, `['module']`, `['state_dict']` present, else the file itself (as
the official loaders try them); a leading `module.` is stripped. A file with the pretraining heads gives a
`CaeForPreTraining` folder (`AutoModelForPreTraining` resumes pretraining, `AutoModel` loads the encoder); an
encoder-only file gives a `CaeModel` folder. v1 or v2 and every size (widths, depths, MLP widths, regressor / decoder
depths, vocabulary or target width, patch size, and the image size from the position table) are read off the keys and
shapes; head counts are not visible in fused weights: `--num_attention_heads` / `--decoder_num_attention_heads` default
to the recipes' counts for their widths (192, 384, 768 and v2 tiny's 96-wide regressor: 12; 1024: 16) and must be given
for any other width. Half-precision files are up-cast to float32 (reported); NaN / inf or integer weights are refused
by name. Fused `attn.qkv.weight` is split into q / k / v rows, `q_bias` / `v_bias` become the q / v projection biases
(CAE has no key bias). Every key is converted or explicitly ignored (optimizer / scaler / epoch / args, the
`alignment_encoder` / `teacher` twins of the encoder, v2's unused regressor norm, the DALL-E tokenizer of MMPretrain
saves); anything else is an error listing the missing and unexpected keys. The stored sin-cos tables are kept as they
are and compared with `cae_position_table`.
"""

import argparse
import math
import re
import sys
from pathlib import Path

import torch

from hf_mim import CaeConfig, CaeForPreTraining, CaeImageProcessor, CaeModel
from hf_mim.conversion import (
    CheckpointMismatchError,
    ConverterArgumentParser,
    account_for_keys,
    add_remote_code_flag,
    check_output_dir,
    checked_weights,
    describe_upcast,
    image_processor_at,
    load_original_checkpoint,
    raise_on_mismatch,
    run_converter,
    upcast_check,
    write_converted_folder,
)
from hf_mim.model_cards import conversion_card
from hf_mim.models.cae import cae_position_table
from hf_mim.releases import CAE_PAPER, CAEV2_PAPER, Release, architecture_mismatches, release_for_file, releases_for

# hf_mim.releases: file names, data, reported numbers (A4V README table for v1, the CAE v2 abstract for v2 ViT-L) and
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
}
V2_UNUSED = {"regresser.norm.": "CAE v2 regressor norm: built by the original class but not used by v2's forward"}
ENCODER_ONLY_UNUSED = {"mask_token": "regressor query token: the file holds no regressor, so the encoder is saved"}
LAYOUT_NAMES = {
    "a4v": "Atten4Vis/CAE",
    "lxt": "lxtGH/CAE (pretext_neck)",
    "mmpretrain": "MMPretrain / MMSelfSup (backbone / neck)",
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
    """MMPretrain / MMSelfSup CAE key -> A4V key (mapping of reference/cae.md §1.4(e)); None if unknown."""
    if key in _MMP_TOP:
        return _MMP_TOP[key]
    if match := _MMP_LAYER.match(key):
        prefix, table = _MMP_LAYERS[match.group(1)]
        rest = match.group(3)
        for old, new in table.items():
            if rest.startswith(old):
                return f"{prefix}.{match.group(2)}.{new}{rest[len(old) :]}"
    return None


def to_a4v(key: str, layout: str) -> str | None:
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
    raise CheckpointMismatchError(
        "Not a CAE checkpoint: no `encoder.*` (Atten4Vis / lxtGH CAE) and no `backbone.*` (MMPretrain) keys; "
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


# ------------------------------------------------------------------------------------------ configuration
# Head counts of the widths CAE's recipes use (reference/cae.md §1.3): tiny 192, small 384 and base 768 have 12 heads
# (not DeiT's 3 / 6), large 1024 has 16, and v2 tiny's 96-wide regressor 12 (head_dim 8). Fused qkv weights do not
# show the count, and another width could have any: a 48-wide model divides into 12 heads as well as into 8, and
# the wrong choice converts without complaint into a different model. So any other width needs the flag.
RECIPE_HEADS = {96: 12, 192: 12, 384: 12, 768: 12, 1024: 16}


def default_heads(width: int) -> int | None:
    """Head count of a CAE recipe's width; None for a width no recipe uses."""
    return RECIPE_HEADS.get(width)


def choose_heads(width: int, given: int | None, what: str, flag: str) -> tuple[int, str]:
    if given is not None:
        if given < 1 or width % given:
            raise ValueError(f"{what} width {width} is not divisible by {flag} {given}.")
        return given, flag
    heads = default_heads(width)
    if heads is None:
        known = ", ".join(f"{w}: {h}" for w, h in RECIPE_HEADS.items())
        raise ValueError(
            f"{what} width {width} is no CAE recipe's width, so its head count is unknown (fused weights do not store "
            f"it; known widths and heads: {known}): pass {flag}."
        )
    return heads, f"the recipes' count for width {width}"


def _count_blocks(tensors: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of `<prefix>.<i>.` blocks; indices must be 0..n-1."""
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    found = sorted({int(m.group(1)) for k in tensors if (m := pattern.match(k))})
    if found != list(range(len(found))):
        raise CheckpointMismatchError(f"{prefix} block indices {found} are not 0..n-1.")
    return len(found)


def _get(tensors: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in tensors:
        raise CheckpointMismatchError(f"Missing the tensor that becomes {name!r}, needed to read the architecture.")
    return tensors[name]


def _recipe_layer_scale(width: int) -> float:
    return 1e-5 if width >= 1024 else 0.1  # the recipes: 0.1 (tiny / small / base), 1e-5 (large)


def _positive_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def infer_config(tensors, version: int, is_full: bool, num_heads, decoder_num_heads, args, mask_token=None):
    """CaeConfig from the converted tensors' shapes (and, for an encoder-only file, the width of an ignored
    `mask_token`); returns (config, head counts with their source, notes on fields the file cannot tell)."""
    notes = []
    patch = _get(tensors, "cae.embeddings.patch_embeddings.projection.weight")
    if patch.ndim != 4 or patch.shape[-1] != patch.shape[-2]:
        raise CheckpointMismatchError(f"Patch embedding {tuple(patch.shape)} is not a square convolution.")
    hidden, channels, patch_size = patch.shape[0], patch.shape[1], patch.shape[-1]
    table = _get(tensors, "cae.embeddings.position_embeddings")
    positions = table.shape[1] - 1 if table.ndim == 3 else -1
    side = math.isqrt(max(positions, 0))
    if positions < 1 or side * side != positions:
        raise CheckpointMismatchError(
            f"Position table {tuple(table.shape)} is not (1, 1 + n^2, D) (a cls row and a square grid)."
        )
    heads, heads_source = choose_heads(hidden, num_heads, "Encoder", "--num_attention_heads")
    has_gamma = "cae.layers.0.layer_scale1.lambda1" in tensors
    layer_scale = _recipe_layer_scale(hidden) if has_gamma else 0.0
    if has_gamma and _positive_number(getattr(args, "layer_scale_init_value", None)):
        layer_scale = float(args.layer_scale_init_value)
    fields = dict(
        cae_version=version,
        image_size=side * patch_size,
        patch_size=patch_size,
        num_channels=channels,
        hidden_size=hidden,
        num_hidden_layers=_count_blocks(tensors, "cae.layers"),
        num_attention_heads=heads,
        intermediate_size=_get(tensors, "cae.layers.0.mlp.fc1.weight").shape[0],
        layer_scale_init_value=layer_scale,
    )
    if is_full:
        decoder = _get(tensors, "mask_token").shape[-1]
        regressor_layers = _count_blocks(tensors, "regressor")
        decoder_layers = _count_blocks(tensors, "decoder.layers")
        fc1 = next((tensors[k] for k in ("regressor.0.mlp.fc1.weight", "decoder.layers.0.mlp.fc1.weight")
                    if k in tensors), None)  # fmt: skip
        out = _get(tensors, "decoder.head.weight").shape[0]
        decoder_gamma = decoder_layers == 0 or "decoder.layers.0.layer_scale1.lambda1" in tensors
        decoder_heads, decoder_heads_source = choose_heads(
            decoder, decoder_num_heads, "Regressor / decoder", "--decoder_num_attention_heads"
        )
        fields.update(
            decoder_intermediate_size=None if fc1 is None else fc1.shape[0],
            regressor_num_layers=regressor_layers,
            decoder_num_layers=decoder_layers,
            **({"vocab_size": out} if version == 1 else {"target_hidden_size": out}),
        )
    else:  # the pretraining heads are not in the file: the recipe's, so AutoModelForPreTraining can start from it
        if mask_token is not None:
            decoder = mask_token.shape[-1]
        else:  # v2 tiny: 96, every other size: the encoder's width
            decoder = 96 if version == 2 and hidden == 192 else hidden
        decoder_gamma = True
        if decoder_num_heads is None and default_heads(decoder) is None and decoder % heads == 0:
            # nothing in the file depends on it: the count only shapes the heads AutoModelForPreTraining would add
            decoder_heads, decoder_heads_source = heads, "the encoder's; no regressor in the file"
        else:
            decoder_heads, decoder_heads_source = choose_heads(
                decoder, decoder_num_heads, "Regressor / decoder", "--decoder_num_attention_heads"
            )
        fields.update(
            regressor_num_layers=1 if version == 2 and hidden in (192, 384) else 4,
            decoder_num_layers=4 if version == 1 else 0,
            target_hidden_size=768 if hidden >= 1024 else 512,
        )
        notes.append("regressor / decoder fields: the recipe's for this size (no pretraining heads in the file)")
    decoder_scale = _recipe_layer_scale(decoder) if decoder_gamma else 0.0
    if decoder_gamma and _positive_number(getattr(args, "decoder_layer_scale_init_value", None)):
        decoder_scale = float(args.decoder_layer_scale_init_value)
    fields.update(
        decoder_hidden_size=decoder,
        decoder_num_attention_heads=decoder_heads,
        decoder_layer_scale_init_value=decoder_scale,
        **masking_fields(version, hidden, positions, args),
    )
    config = CaeConfig(**fields)
    return config, {"heads": f"{heads} ({heads_source})", "decoder_heads": f"{decoder_heads} ({decoder_heads_source})",
                    "notes": notes}  # fmt: skip


def masking_fields(version: int, hidden: int, num_patches: int, args) -> dict:
    """num_masking_patches / min_masking_patches_per_block: the training args when stored, else the recipe's masked
    fraction of the 14 x 14 grid (v1 98 / 196; v2 30 / 49 / 98 for tiny / small / base+) scaled to this grid."""
    stored = getattr(args, "num_mask_patches", None)
    if isinstance(stored, int) and not isinstance(stored, bool) and 1 <= stored < num_patches:
        count = stored
    else:
        recipe = {192: 30, 384: 49}.get(hidden, 98) if version == 2 else 98
        count = min(max(round(recipe * num_patches / 196), 1), num_patches - 1)
    minimum = getattr(args, "min_mask_patches_per_block", None)
    if not (isinstance(minimum, int) and not isinstance(minimum, bool) and minimum >= 1):
        minimum = 16 if num_patches >= 196 else max(1, round(16 * num_patches / 196))
    return {"num_masking_patches": count, "min_masking_patches_per_block": minimum}


# ------------------------------------------------------------------------------------------ position tables
def original_sincos_table(width: int, grid: int) -> torch.Tensor:
    """(1, 1 + grid^2, width) float32 table as the original `build_2d_sincos_position_embedding` computes it (float32
    throughout; [sin(row), cos(row), sin(col), cos(col)], zero cls row) - for the lxtGH layout, whose regressor
    rebuilds its table every forward instead of storing it."""
    if width % 4:
        raise CheckpointMismatchError(f"A 2-D sin-cos table needs a width divisible by 4, got {width}.")
    coords = torch.arange(grid, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    omega = 1.0 / (10000.0 ** (torch.arange(width // 4, dtype=torch.float32) / (width // 4)))
    out_rows = torch.einsum("m,d->md", rows.flatten(), omega)
    out_cols = torch.einsum("m,d->md", cols.flatten(), omega)
    table = torch.cat([out_rows.sin(), out_rows.cos(), out_cols.sin(), out_cols.cos()], dim=1)
    return torch.cat([torch.zeros(1, width), table])[None]


def add_regressor_table(tensors, origin, layout: str, grid: int) -> str:
    """The regressor's table: stored (A4V), rebuilt as the original does (lxtGH), or the encoder's (MMPretrain)."""
    if layout == "lxt":
        width = _get(tensors, "mask_token").shape[-1]
        tensors["regressor_position_embeddings"] = original_sincos_table(width, grid)
        origin["regressor_position_embeddings"] = "<rebuilt>"
        return "rebuilt as lxtGH/CAE does each forward (not stored)"
    if layout == "mmpretrain":
        tensors["regressor_position_embeddings"] = tensors["cae.embeddings.position_embeddings"].clone()
        origin["regressor_position_embeddings"] = "backbone.pos_embed"
        return "the backbone's table, which MMPretrain's neck uses (not stored separately)"
    return "stored (rd_pos_embed)"


def sincos_deviation(tensors: dict[str, torch.Tensor], grid: int) -> dict[str, float]:
    """max |stored - cae_position_table| of each table (the stored values are kept)."""
    out = {}
    for name, label in (
        ("cae.embeddings.position_embeddings", "encoder"),
        ("regressor_position_embeddings", "regressor"),
    ):
        if name in tensors:
            table = tensors[name].float()
            out[label] = (table - cae_position_table(table.shape[-1], grid)).abs().max().item()
    return out


def twin_report(state: dict[str, torch.Tensor], layout: str) -> str | None:
    """How far the ignored twin (`alignment_encoder.*` / `teacher.*`) is from the encoder it copies."""
    encoder_prefix = "backbone." if layout == "mmpretrain" else "encoder."
    lines = []
    for twin in ("alignment_encoder.", "teacher."):
        keys = [k for k in state if k.startswith(twin)]
        if not keys:
            continue
        pairs = [(state[k], state.get(encoder_prefix + k[len(twin) :])) for k in keys]
        if any(e is None or e.shape != t.shape for t, e in pairs):
            lines.append(f"{twin}* does not mirror {encoder_prefix}* key for key")
            continue
        diff = max((t.float() - e.float()).abs().max().item() for t, e in pairs)
        state_text = "equal to" if diff == 0 else f"max |diff| {diff:.3g} from"
        lines.append(f"{twin}* ({len(keys)} tensors) {state_text} {encoder_prefix}*")
    return "; ".join(lines) or None


# ------------------------------------------------------------------------------------------ conversion
def convert_checkpoint(checkpoint, checkpoint_path="<checkpoint>", num_heads=None, decoder_num_heads=None, names=()):
    """Original checkpoint -> (CaeConfig, state dict of CaeForPreTraining (pretraining heads present) or CaeModel
    (encoder only), whether the heads are present, report)."""
    state, ignored_top, container = unwrap_checkpoint(checkpoint, checkpoint_path)
    args = checkpoint.get("args") if isinstance(checkpoint.get("args"), argparse.Namespace) else None
    layout = detect_layout(state)
    is_full = has_pretraining_heads(state, layout)
    version, version_source = infer_version(state, layout, is_full, args, names)

    reasons = dict(IGNORED_PREFIXES[layout])
    if version == 2 and layout == "a4v":
        reasons.update(V2_UNUSED)
    if not is_full:
        reasons.update(ENCODER_ONLY_UNUSED)

    def ignored_by(key: str) -> str | None:
        return next((e for e in reasons if key == e or (e.endswith(".") and key.startswith(e))), None)

    mapping, ignored, unexpected = account_for_keys(
        state, lambda key: rename_key(key, layout), lambda key: ignored_by(key) is not None
    )
    origin = {new: old for old, new in mapping.items()}
    if len(origin) < len(mapping):
        clashes = sorted(old for old, new in mapping.items() if origin[new] != old)
        raise CheckpointMismatchError(f"Keys that name the same tensor as another key: {', '.join(clashes[:20])}.")
    kept, upcast = checked_weights({old: state[old] for old in mapping}, checkpoint_path)  # the ignored twins aside
    tensors = split_fused_qkv({new: kept[old] for old, new in mapping.items()}, origin)
    config, heads = infer_config(
        tensors, version, is_full, num_heads, decoder_num_heads, args, state.get("mask_token")
    )
    grid = config.grid_size
    regressor_table = add_regressor_table(tensors, origin, layout, grid) if is_full else None
    deviation = sincos_deviation(tensors, grid)
    if not is_full:  # CaeModel names: the encoder's without `cae.`
        tensors = {name.removeprefix("cae."): tensor for name, tensor in tensors.items()}
        origin = {name.removeprefix("cae."): old for name, old in origin.items()}

    model_class = CaeForPreTraining if is_full else CaeModel
    with torch.device("meta"):  # key set and shapes only
        reference = model_class(config).state_dict()
    unexpected += sorted({origin[name] for name in tensors if name not in reference})
    missing = sorted(set(reference) - set(tensors))
    hint = f"Layout: {LAYOUT_NAMES[layout]}, CAE v{version} ({version_source})."
    raise_on_mismatch(checkpoint_path, missing, sorted(set(unexpected)), hint=hint)
    wrong = [f"{origin[name]} -> {name} {tuple(t.shape)} != {tuple(reference[name].shape)}"
             for name, t in tensors.items() if t.shape != reference[name].shape]  # fmt: skip
    if wrong:
        raise CheckpointMismatchError("Tensors with unexpected shapes: " + "; ".join(wrong[:20]))
    converted = {name: tensor.contiguous().clone() for name, tensor in tensors.items()}

    groups: dict[str, list[str]] = {}
    for key in ignored:
        groups.setdefault(ignored_by(key), []).append(key)
    ignored_text = [
        f"{e}{'*' if e.endswith('.') else ''} ({len(keys)} key{'s' * (len(keys) > 1)}: {reasons[e]})"
        for e, keys in groups.items()
    ]
    ignored_text += [f"top-level '{k}' ({IGNORED_TOP_LEVEL.get(k, 'unused container entry')})" for k in ignored_top]
    report = {
        "layout": f"{LAYOUT_NAMES[layout]}, {container}",
        "cae_version": version,
        "cae_version_source": version_source,
        "architecture": describe(config, is_full),
        "num_attention_heads": heads["heads"],
        "decoder_num_attention_heads": heads["decoder_heads"],
        "kept_keys": len(mapping),
        "ignored_keys": len(ignored) + len(ignored_top),
        "ignored": "; ".join(ignored_text) or "none",
        "sincos_table_max_deviation": max(deviation.values()),
        "sincos_tables": ", ".join(f"{k} {v:.3g}" for k, v in deviation.items())
        + " (max |stored - cae_position_table|; the stored values are kept)",
    }
    if regressor_table is not None:
        report["regressor_position_table"] = regressor_table
    if twin := twin_report(state, layout):
        report["twin_check"] = twin
    if heads["notes"]:
        report["notes"] = "; ".join(heads["notes"])
    if upcast:
        report["upcast"] = describe_upcast(upcast)
    return config, converted, is_full, report


def describe(config: CaeConfig, is_full: bool) -> str:
    text = (
        f"CAE v{config.cae_version} ViT: width {config.hidden_size}, depth {config.num_hidden_layers}, MLP "
        f"{config.intermediate_size}, patch {config.patch_size}, {config.image_size} px"
        + (f", layer scale {config.layer_scale_init_value:g}" if config.layer_scale_init_value else ", no layer scale")
    )
    if is_full:
        text += (
            f"; regressor {config.regressor_num_layers} x {config.decoder_hidden_size} (MLP "
            f"{config.decoder_intermediate_size})"
            + (f", decoder {config.decoder_num_layers} blocks" if config.cae_version == 1 else "")
            + (
                f", vocabulary {config.vocab_size}"
                if config.cae_version == 1
                else f", target {config.target_hidden_size}"
            )
        )
    return text


def matches_release(config: CaeConfig, release: str | Release) -> bool:
    """Whether `config` has the expected architecture of the release (hf_mim.releases)."""
    return not architecture_mismatches(RELEASES[release] if isinstance(release, str) else release, config)


# ------------------------------------------------------------------------------------------ model card
def conversion_checks(report: dict) -> list[str]:
    """What converting this file measured, in the card's words."""
    checks = [
        f"Layout: {report['layout']}; CAE v{report['cae_version']} ({report['cae_version_source']}).",
        f"Every original key accounted for: {report['kept_keys']} kept, {report['ignored_keys']} ignored "
        f"({report['ignored']}).",
        f"Sin-cos position tables: {report['sincos_tables']}.",
    ]
    if "twin_check" in report:
        checks.append(f"Stop-gradient twin: {report['twin_check']}.")
    if "notes" in report:
        checks.append(f"Head counts (not stored in fused weights): {report['notes']}.")
    return checks + upcast_check(report)


def model_card(
    model_name: str,
    config: CaeConfig,
    release: str | Release | None,
    is_full: bool,
    source: str = LAYOUT_NAMES["a4v"],
    report: dict | None = None,
    repo_id: str | None = None,
    remote_code: bool = True,
    source_file: str | None = None,
):
    """The folder's `huggingface_hub.ModelCard` (layout: hf_mim.model_cards). `release`: a release of the table (or
    its key, e.g. `cae_base_1600ep`) whose facts and reported numbers the card carries, or None."""
    if isinstance(release, str):
        release = RELEASES[release]
    version = config.cae_version
    name = "CAE" if version == 1 else "CAE v2"
    data_text = (
        f"pretrained on **{release.pretraining_data}**"
        if release is not None
        else "pretraining data not identified (every official CAE / CAE v2 release was pretrained on ImageNet-1k)"
    )
    summary = (
        f"{name} ViT encoder (width {config.hidden_size}, {config.num_hidden_layers} blocks, "
        f"{config.num_attention_heads} heads, patch {config.patch_size}, {config.image_size} px), {data_text}. "
        f"Converted from a checkpoint in the {source} layout with hf_mim."
    )
    contents = (
        "The folder holds the encoder and the pretraining heads (latent regressor"
        + (", decoder and DALL-E-token head" if version == 1 else " and CLIP-latent head")
        + "): `AutoModelForPreTraining` loads everything (to continue pretraining; the alignment branch of the "
        "original is the encoder itself, rerun without gradient), `AutoModel` the encoder."
        if is_full
        else "The folder holds the encoder (`AutoModel`); the pretraining heads are not part of this file."
    )
    notes = [
        "`AutoModelForImageClassification.from_pretrained(..., num_labels=N, classifier_type=...)` adds the head of "
        'one of CAE\'s protocols: `"finetune"` (mean pooling + Linear), `"linear"` (cls + BatchNorm + Linear) or '
        f'`"attentive"`. The processor resizes the shorter side to {round(config.image_size * 256 / 224)} (bicubic), '
        f"center-crops {config.image_size} and normalises with the ImageNet mean / std, as every CAE evaluation does. "
        "The position table is CAE's fixed 2-D sin-cos table (row first), interpolated for other input sizes."
    ]
    return conversion_card(
        "cae",
        config=config,
        model_name=model_name,
        repo_id=repo_id,
        release=release,
        source_file=source_file,
        summary=summary,
        contents=contents,
        checks=conversion_checks(report) if report is not None else (),
        notes=notes,
        remote_code=remote_code,
        pretraining=is_full,
        paper=CAE_PAPER if version == 1 else CAEV2_PAPER,
        extra_tags=() if version == 1 else ("cae-v2",),
        identification=report.get("release") if report is not None else None,
    )


# ------------------------------------------------------------------------------------------ entry point
def default_model_name(checkpoint_path: Path) -> str:
    name = checkpoint_path.name
    for suffix in (".tar", ".pth", ".pt", ".bin"):
        name = name.removesuffix(suffix)
    return name


def convert(checkpoint_path, output_dir, model_name=None, push_to_hub=None, num_heads=None, decoder_num_heads=None,
            remote_code=True, repo_id=None, release: Release | None = None):  # fmt: skip
    """Convert one file into `output_dir`. `release` (a `hf_mim.releases.Release`) overrides the identification
    from the file / model name; a release whose architecture the weights do not have gets no release facts in the
    card. `remote_code` also writes the code bundle; `repo_id` is the Hub id the card's snippets use."""
    checkpoint_path = Path(checkpoint_path)
    check_output_dir(output_dir)  # before the work: a path that cannot become a folder fails now
    file_name = default_model_name(checkpoint_path)
    model_name = model_name or file_name
    checkpoint = load_original_checkpoint(checkpoint_path)
    names = (model_name, file_name) if release is None else (release.key, model_name, file_name)
    config, state, is_full, report = convert_checkpoint(checkpoint, checkpoint_path, num_heads, decoder_num_heads,
                                                        names=names)  # fmt: skip
    model_class = CaeForPreTraining if is_full else CaeModel
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        model = model_class(config)
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"Tensors not loaded from the checkpoint: {left[:10]}")
    model.eval()
    encoder = model.cae if is_full else model
    with torch.no_grad():
        pixels = torch.zeros(1, config.num_channels, config.image_size, config.image_size, dtype=encoder.dtype)
        if not torch.isfinite(encoder(pixels).last_hidden_state).all():
            raise RuntimeError("The converted encoder produces non-finite outputs.")
    if release is None:
        key = release_of(model_name, file_name)
        if key is None and (found := release_for_file(checkpoint_path)) is not None and found.method == "cae":
            key = found.key
        release = RELEASES.get(key)
    if release is not None and not matches_release(config, release):
        report["release"] = f"{release.key} named, but the weights are not its architecture: no release results"
        release = None
    else:
        report["release"] = release.key if release is not None else "none identified"
    report["saved_architecture"] = model_class.__name__
    report.update(model_name=model_name, output_dir=str(output_dir))
    card = model_card(model_name, config, release, is_full, report["layout"].split(",")[0], report,
                      repo_id or push_to_hub, remote_code, checkpoint_path.name)  # fmt: skip
    processor = image_processor_at(CaeImageProcessor, config.image_size)
    report.update(write_converted_folder(output_dir, model, processor, card, remote_code, push_to_hub,
                                         f"Upload {model_name} converted with hf_mim"))  # fmt: skip
    return report


def convert_release(checkpoint_path, output_dir, release: Release, repo_id=None, remote_code=True) -> dict:
    """`convert` for a release of the table (scripts/convert/publish_releases.py): the head counts, which fused
    weights do not show, come from the release's architecture."""
    arch = release.architecture
    return convert(checkpoint_path, output_dir, model_name=release.name, num_heads=arch.get("num_attention_heads"),
                   decoder_num_heads=arch.get("decoder_num_attention_heads"), remote_code=remote_code,
                   repo_id=repo_id, release=release)  # fmt: skip


def main(argv=None) -> int:
    parser = ConverterArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_path", required=True, help="Original CAE / CAE v2 .pth file")
    parser.add_argument("--output_dir", required=True, help="Folder to write the Hub-ready model into")
    parser.add_argument(
        "--num_attention_heads",
        type=int,
        default=None,
        help="Encoder heads (not visible in the weights); required unless the width is a recipe's (192, 384, 768: "
        "12; 1024: 16)",
    )
    parser.add_argument(
        "--decoder_num_attention_heads",
        type=int,
        default=None,
        help="Regressor / decoder heads; required unless the width is a recipe's (96, 192, 384, 768: 12; 1024: 16)",
    )
    parser.add_argument(
        "--model_name", default=None, help="e.g. cae_base_1600ep (default: the file name); identifies the release"
    )
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="Upload the folder to this Hub repo")
    add_remote_code_flag(parser)
    args = parser.parse_args(argv)
    return run_converter(convert, args.checkpoint_path, args.output_dir, args.model_name, args.push_to_hub,
                         args.num_attention_heads, args.decoder_num_attention_heads, not args.no_remote_code)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
