"""Convert a CAE (v1) or CAE v2 checkpoint - a release, a full training save or a third-party pretraining save - into
a Hub-ready folder.

The library side of `scripts/convert/convert_cae_to_hf.py` (its flags: `main`); which layout a file has and what its
keys become is `convert_cae_layouts`. Accepted layouts:

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
shapes; head counts are not visible in fused weights: `num_heads` / `decoder_num_heads` (`--num_attention_heads` /
`--decoder_num_attention_heads`) default to the recipes' counts for their widths (192, 384, 768 and v2 tiny's 96-wide
regressor: 12; 1024: 16) and must be given for any other width. Half-precision files are up-cast to float32 (reported);
NaN / inf or integer weights are refused by name. Fused `attn.qkv.weight` is split into q / k / v rows, `q_bias` /
`v_bias` become the q / v projection biases (CAE has no key bias). Every key is converted or explicitly ignored
(optimizer / scaler / epoch / args, the `alignment_encoder` / `teacher` twins of the encoder, v2's unused regressor
norm, the DALL-E tokenizer of MMPretrain saves); anything else is an error listing the missing and unexpected keys. The
stored sin-cos tables are kept as they are and compared with `cae_position_table`.
"""

import argparse
import math
import re
from pathlib import Path

import torch

from ...hub.conversion import (
    CheckpointMismatchError,
    ConverterArgumentParser,
    account_for_keys,
    add_remote_code_flag,
    check_against_reference,
    check_output_dir,
    checked_weights,
    credited_release,
    describe_upcast,
    finish_conversion,
    image_processor_at,
    load_original_checkpoint,
    model_from_state,
    run_converter,
    upcast_check,
)
from ...hub.model_cards import conversion_card
from ...hub.releases import CAE_PAPER, CAEV2_PAPER, Release, architecture_mismatches, release_for_file
from ...layers import relative_position_index
from .configuration_cae import CaeConfig
from .convert_cae_layouts import (
    ENCODER_ONLY_UNUSED,
    IGNORED_PREFIXES,
    IGNORED_TOP_LEVEL,
    LAYOUT_NAMES,
    RELATIVE_POSITION_INDEX,
    RELATIVE_POSITION_INDEX_REASON,
    RELEASES,
    V2_UNUSED,
    detect_layout,
    has_pretraining_heads,
    infer_version,
    release_of,
    rename_key,
    split_fused_qkv,
    unwrap_checkpoint,
)
from .image_processing_cae import CaeImageProcessor
from .modeling_cae import CaeForPreTraining, CaeModel, cae_position_table

# ------------------------------------------------------------------------------------------ configuration
# Head counts of the widths CAE's recipes use: tiny 192, small 384 and base 768 have 12 heads (not DeiT's 3 / 6), large
# 1024 has 16, and v2 tiny's 96-wide regressor 12 (head_dim 8). Fused qkv weights do not show the count, and another
# width could have any: a 48-wide model divides into 12 heads as well as into 8, and the wrong choice converts without
# complaint into a different model. So any other width needs the flag.
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
    shared_table = tensors.get("cae.relative_position_bias.relative_position_bias_table")
    block_table = tensors.get("cae.layers.0.relative_position_bias.relative_position_bias_table")
    table_heads = next((t.shape[-1] for t in (block_table, shared_table) if t is not None and t.ndim == 2), None)
    if num_heads is None and table_heads is not None:  # a relative position table has one column per head
        heads, heads_source = choose_heads(hidden, table_heads, "Encoder", "the relative position table's columns")
    else:
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
        use_relative_position_bias=any(
            re.match(r"^cae\.layers\.\d+\.relative_position_bias\.", name) for name in tensors
        ),
        use_shared_relative_position_bias=shared_table is not None,
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


def check_relative_position_index(state: dict[str, torch.Tensor], grid: int) -> None:
    """The stored index buffers (ignored: the model recomputes them) must be the index of this grid."""
    expected = relative_position_index((grid, grid))
    for key, stored in state.items():
        if key.endswith(RELATIVE_POSITION_INDEX) and not (
            stored.shape == expected.shape and torch.equal(stored.long(), expected)
        ):
            raise CheckpointMismatchError(
                f"{key} {tuple(stored.shape)} is not the BEiT-style index of the {grid}x{grid} patch grid that "
                "hf_mim recomputes."
            )


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

    reasons[RELATIVE_POSITION_INDEX] = RELATIVE_POSITION_INDEX_REASON

    def ignored_by(key: str) -> str | None:
        if key == RELATIVE_POSITION_INDEX or key.endswith("." + RELATIVE_POSITION_INDEX):
            return RELATIVE_POSITION_INDEX
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
    if layout == "a4v_finetune" and any(key.startswith("fc_norm.") for key in state):
        config.pooling = "mean"  # the fine-tuned model's feature: fc_norm of the mean of the patch tokens
    check_relative_position_index(state, grid)
    regressor_table = add_regressor_table(tensors, origin, layout, grid) if is_full else None
    deviation = sincos_deviation(tensors, grid)
    if not is_full:  # CaeModel names: the encoder's without `cae.`
        tensors = {name.removeprefix("cae."): tensor for name, tensor in tensors.items()}
        origin = {name.removeprefix("cae."): old for name, old in origin.items()}

    hint = f"Layout: {LAYOUT_NAMES[layout]}, CAE v{version} ({version_source})."
    model_class = CaeForPreTraining if is_full else CaeModel
    check_against_reference(checkpoint_path, tensors, model_class, config, origin, unexpected, hint)
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
    if config.use_relative_position_bias or config.use_shared_relative_position_bias:
        kinds = [
            ("per block", config.use_relative_position_bias),
            ("shared", config.use_shared_relative_position_bias),
        ]
        report["relative_position_bias"] = (
            " and ".join(k for k, on in kinds if on) + " (tables kept, index recomputed)"
        )
    if config.pooling == "mean":
        report["pooling"] = "mean (fc_norm of the mean patch token, the fine-tuned model's feature)"
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
    """Whether `config` has the expected architecture of the release (hf_mim.hub.releases)."""
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
    """The folder's `huggingface_hub.ModelCard` (layout: hf_mim.hub.model_cards). `release`: a release of the table (or
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
    """Convert one file into `output_dir`. `release` (a `hf_mim.hub.releases.Release`) overrides the identification
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
    if config.use_relative_position_bias or config.use_shared_relative_position_bias:
        # the tables' index buffers are computed, not stored: built normally, then given every stored tensor
        model = model_class(config)
        model.load_state_dict(state, strict=True)
        model.eval()
    else:
        model = model_from_state(model_class, config, state)
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
    release, report["release"] = credited_release(release, config, "key")
    report["saved_architecture"] = model_class.__name__
    report["model_name"] = model_name
    card = model_card(model_name, config, release, is_full, report["layout"].split(",")[0], report,
                      repo_id or push_to_hub, remote_code, checkpoint_path.name)  # fmt: skip
    processor = image_processor_at(CaeImageProcessor, config.image_size)
    return finish_conversion(report, output_dir, model, processor, card, remote_code, push_to_hub)


def convert_release(checkpoint_path, output_dir, release: Release, repo_id=None, remote_code=True) -> dict:
    """`convert` for a release of the table (scripts/convert/publish_releases.py): the head counts, which fused
    weights do not show, come from the release's architecture."""
    arch = release.architecture
    return convert(checkpoint_path, output_dir, model_name=release.name, num_heads=arch.get("num_attention_heads"),
                   decoder_num_heads=arch.get("decoder_num_attention_heads"), remote_code=remote_code,
                   repo_id=repo_id, release=release)  # fmt: skip


def main(argv=None) -> int:
    """The command line of `scripts/convert/convert_cae_to_hf.py`: the report on stdout and exit status 0, or one
    `error: ...` line on stderr and 2 (`run_converter`)."""
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
