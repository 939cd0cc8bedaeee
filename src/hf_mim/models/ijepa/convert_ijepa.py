"""Convert a released I-JEPA checkpoint (IN1K-vit.h.14-300e.pth.tar, IN1K-vit.h.16-448px-300e.pth.tar,
IN22K-vit.h.14-900e.pth.tar, IN22K-vit.g.16-600e.pth.tar) into a Hub-ready folder.

The library side of `scripts/convert/convert_ijepa_to_hf.py` (its flags: `main`). The folder holds the full pretraining
model - context encoder, EMA target encoder and predictor - so `AutoModelForPreTraining.from_pretrained(DIR)` can
resume pretraining, and `AutoModel.from_pretrained(DIR)` gives the encoder chosen with `encoder` (default `context`:
the trained encoder that transformers' and timm's I-JEPA weights are; `target` is the EMA encoder the fine-tuning
recipe uses). Shapes are read off the tensors; the head count is not visible in the weights: it defaults to that of the
original's ViT of the same width (192: 3, 384: 6, 768: 12, 1024 / 1280 / 1408: 16; the releases are 1280 and 1408 wide)
and must be given for any other width (the predictor has the encoder's count, as in the original). Half-precision files
are up-cast to float32 (reported); NaN / inf or integer weights are refused by name. Every key is converted or
explicitly ignored (optimizer / scaler state and bookkeeping); anything else is an error listing missing and unexpected
keys. The folder also gets the image processor, a model card (hf_mim.hub.model_cards, with the release facts of
hf_mim.hub.releases) and the remote-code bundle (`remote_code=False` leaves it out).
"""

import math
import re
from collections import Counter
from pathlib import Path

import torch

from ...hub.conversion import (
    CheckpointMismatchError,
    ConverterArgumentParser,
    add_remote_code_flag,
    check_against_reference,
    check_output_dir,
    checked_weights,
    credited_release,
    describe_upcast,
    finish_conversion,
    image_processor_at,
    load_original_checkpoint,
    raise_on_mismatch,
    run_converter,
    upcast_check,
)
from ...hub.model_cards import conversion_card
from ...hub.releases import Release, release_for_file, release_named, releases_for
from ...layers import sincos_2d_position_embedding
from .configuration_ijepa import IJepaConfig
from .image_processing_ijepa import IJepaImageProcessor
from .modeling_ijepa import IJepaForPreTraining

RELEASES = {release.name: release for release in releases_for("ijepa")}  # hf_mim.hub.releases
PARTS = ("encoder", "predictor", "target_encoder")
IGNORED_TOP_LEVEL = ("opt", "scaler", "epoch", "loss", "batch_size", "world_size", "lr")
_BLOCK = {
    "norm1.weight": "layernorm_before.weight", "norm1.bias": "layernorm_before.bias",
    "attn.proj.weight": "attention.o_proj.weight", "attn.proj.bias": "attention.o_proj.bias",
    "norm2.weight": "layernorm_after.weight", "norm2.bias": "layernorm_after.bias",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
}  # fmt: skip
_ENCODER = {
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_PREDICTOR = {
    "mask_token": "mask_token",
    "predictor_pos_embed": "position_embeddings",
    "predictor_embed.weight": "input_proj.weight",
    "predictor_embed.bias": "input_proj.bias",
    "predictor_norm.weight": "layernorm.weight",
    "predictor_norm.bias": "layernorm.bias",
    "predictor_proj.weight": "output_proj.weight",
    "predictor_proj.bias": "output_proj.bias",
}

# (part of the file, its top-level keys, its blocks' prefix, the hf_mim prefix): the two encoders share a layout
LAYOUT = (
    ("encoder", _ENCODER, "blocks", "ijepa."),
    ("target_encoder", _ENCODER, "blocks", "target_encoder."),
    ("predictor", _PREDICTOR, "predictor_blocks", "predictor."),
)


def convert_part(state: dict[str, torch.Tensor], part: str, top: dict[str, str], block_prefix: str,
                 out_prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:  # fmt: skip
    """One original state dict, the file's `part` -> (hf_mim tensors, hf_mim name -> `<part>.<key>`, unexpected
    `<part>.<key>`s); qkv is split into q/k/v (rows q | k | v)."""
    converted, origin, unexpected = {}, {}, []
    pattern = re.compile(rf"^{block_prefix}\.(\d+)\.(.+)$")
    for key, tensor in state.items():
        key = key.removeprefix("module.")
        if key in top:
            names = {out_prefix + top[key]: tensor}
        elif (match := pattern.match(key)) is None:
            names = {}
        else:
            index, rest = match.groups()
            layer = f"{out_prefix}layers.{index}."
            if rest in ("attn.qkv.weight", "attn.qkv.bias"):
                kind = rest.rsplit(".", 1)[-1]
                names = {f"{layer}attention.{name}.{kind}": chunk.contiguous()
                         for name, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0))}  # fmt: skip
            else:
                names = {layer + _BLOCK[rest]: tensor} if rest in _BLOCK else {}
        if not names:
            unexpected.append(f"{part}.{key}")
        converted.update(names)
        origin.update(dict.fromkeys(names, f"{part}.{key}"))
    return converted, origin, unexpected


# Head counts of the original's ViTs by width (`vit_tiny` ... `vit_giant` in src/models/vision_transformer.py; the
# predictor takes the encoder's count). The fused qkv weight does not show the count, and another width could have
# any: 32 divides into 16 heads as well as into 4, and the wrong choice converts without complaint into a different
# model. So any other width needs `--num_attention_heads`.
VIT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}


def choose_heads(width: int, given: int | None) -> tuple[int, str]:
    """The encoder's head count: `given`, else the original's for this width; (count, where it came from)."""
    if given is not None:
        return given, "--num_attention_heads"
    if width not in VIT_HEADS:
        known = ", ".join(f"{w}: {h}" for w, h in VIT_HEADS.items())
        raise ValueError(
            f"Encoder width {width} is none of the original ViTs' widths, so its head count is unknown (the fused "
            f"qkv weight does not store it; known widths and heads: {known}): pass --num_attention_heads."
        )
    return VIT_HEADS[width], f"the original ViT's count for width {width}"


def infer_config(encoder: dict[str, torch.Tensor], predictor: dict[str, torch.Tensor],
                 num_heads: int | None) -> tuple[IJepaConfig, str]:  # fmt: skip
    """IJepaConfig from the tensor shapes, and where its head count came from (`choose_heads`)."""

    def get(state, key):
        for candidate in (key, "module." + key):
            if candidate in state:
                return state[candidate]
        raise CheckpointMismatchError(f"Missing key {key!r}: is this an I-JEPA checkpoint?")

    def depth(state, prefix):
        found = {int(m.group(1)) for k in state if (m := re.match(rf"^(?:module\.)?{prefix}\.(\d+)\.", k))}
        if not found:
            raise CheckpointMismatchError(f"No {prefix}.N.* keys found")
        return max(found) + 1

    patch = get(encoder, "patch_embed.proj.weight")
    num_patches = get(encoder, "pos_embed").shape[1]
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise CheckpointMismatchError(f"pos_embed has {num_patches} positions, not a square grid")
    hidden, predictor_hidden = patch.shape[0], get(predictor, "predictor_embed.weight").shape[0]
    num_heads, heads_source = choose_heads(hidden, num_heads)
    for what, width in (("hidden size", hidden), ("predictor width", predictor_hidden)):
        if num_heads < 1 or width % num_heads:
            raise CheckpointMismatchError(f"{what} {width} is not divisible by {num_heads} attention heads")
    config = IJepaConfig(
        image_size=side * patch.shape[-1],
        patch_size=patch.shape[-1],
        num_channels=patch.shape[1],
        hidden_size=hidden,
        num_hidden_layers=depth(encoder, "blocks"),
        num_attention_heads=num_heads,
        intermediate_size=get(encoder, "blocks.0.mlp.fc1.weight").shape[0],
        predictor_hidden_size=predictor_hidden,
        predictor_num_hidden_layers=depth(predictor, "predictor_blocks"),
        predictor_num_attention_heads=num_heads,
        predictor_intermediate_size=get(predictor, "predictor_blocks.0.mlp.fc1.weight").shape[0],
    )
    return config, heads_source


def checked_parts(checkpoint, checkpoint_path) -> tuple[dict[str, dict[str, torch.Tensor]], Counter]:
    """The three state dicts (DDP's `module.` dropped), checked together so that an error names every bad key as
    `<part>.<key>`, and up-cast to float32; also the up-cast count per dtype."""
    flat = {f"{part}.{key.removeprefix('module.')}": t for part in PARTS for key, t in checkpoint[part].items()}
    flat, upcast = checked_weights(flat, checkpoint_path)
    parts = {
        part: {k.removeprefix(f"{part}."): t for k, t in flat.items() if k.startswith(f"{part}.")} for part in PARTS
    }
    return parts, upcast


def convert_checkpoint(checkpoint, checkpoint_path="<checkpoint>", num_heads: int | None = None,
                       encoder: str = "context"):  # fmt: skip
    """Original .pth.tar dict -> (IJepaConfig, IJepaForPreTraining state dict, report). `num_heads`: None takes the
    original ViT's count for the encoder's width (`choose_heads`)."""
    if not isinstance(checkpoint, dict):
        raise CheckpointMismatchError(f"Expected a dict checkpoint, got {type(checkpoint).__name__}")
    missing_parts = [p for p in PARTS if not isinstance(checkpoint.get(p), dict)]
    unknown_top = [k for k in checkpoint if k not in PARTS + IGNORED_TOP_LEVEL]
    raise_on_mismatch(checkpoint_path, missing_parts, unknown_top, hint="Top-level keys of an I-JEPA .pth.tar.")
    parts, upcast = checked_parts(checkpoint, checkpoint_path)
    config, heads_source = infer_config(parts["encoder"], parts["predictor"], num_heads)
    config.standalone_encoder = encoder
    state, origin, unexpected = {}, {}, []
    for part, top, block_prefix, out_prefix in LAYOUT:
        converted, names, extra = convert_part(parts[part], part, top, block_prefix, out_prefix)
        state.update(converted)
        origin.update(names)
        unexpected += extra
    check_against_reference(checkpoint_path, state, IJepaForPreTraining, config, origin, unexpected)
    grid = config.image_size // config.patch_size
    deviation = max(
        (state["ijepa.embeddings.position_embeddings"][0] - sincos_2d_position_embedding(config.hidden_size, grid, grid)).abs().max().item(),
        (state["predictor.position_embeddings"][0] - sincos_2d_position_embedding(config.predictor_hidden_size, grid, grid)).abs().max().item(),
    )  # fmt: skip
    report = {
        "converted": len(state),
        "ignored": [k for k in checkpoint if k in IGNORED_TOP_LEVEL],
        "sincos_table_max_deviation": deviation,
        "standalone_encoder": encoder,
        "num_attention_heads": f"{config.num_attention_heads} ({heads_source})",
    }
    if upcast:
        report["upcast"] = describe_upcast(upcast)
    return config, {k: v.contiguous().clone() for k, v in state.items()}, report


def conversion_checks(report: dict) -> list[str]:
    """What converting this file measured, in the card's words."""
    return [
        f"Every key of the context encoder, the EMA target encoder and the predictor converted ({report['converted']} "
        f"tensors; ignored: {', '.join(report['ignored']) or 'nothing'} - optimizer and bookkeeping state).",
        "Stored sin-cos position tables compared with hf_mim's `sincos_2d_position_embedding`: max abs deviation "
        f"{report['sincos_table_max_deviation']:.3g} (the stored values are kept).",
        *upcast_check(report),
    ]


def model_card(model_name: str, config: IJepaConfig, encoder: str, release: Release | None, report: dict,
               repo_id=None, remote_code: bool = True, source_file: str | None = None):  # fmt: skip
    """The folder's `huggingface_hub.ModelCard` (layout: hf_mim.hub.model_cards)."""
    data = f"on **{release.pretraining_data}**" if release is not None else ""
    summary = (
        f"I-JEPA ViT ({config.hidden_size} wide, {config.num_hidden_layers} blocks, patch {config.patch_size}, "
        f"{config.image_size} px) pretrained {data or '(data not identified)'}; converted from the original checkpoint "
        "with hf_mim."
    )
    contents = (
        "The folder holds the context encoder, the EMA target encoder and the predictor. `AutoModel` loads the "
        f"**{encoder}** encoder; `AutoModelForPreTraining` loads everything (to continue pretraining). The encoder's "
        "weights use transformers' `IJepaModel` names and load into `transformers.IJepaModel` as well."
    )
    return conversion_card(
        "ijepa",
        config=config,
        model_name=model_name,
        repo_id=repo_id,
        release=release,
        source_file=source_file,
        summary=summary,
        contents=contents,
        checks=conversion_checks(report),
        remote_code=remote_code,
        pretraining=True,
        identification=report.get("release"),
    )


def identify_release(checkpoint_path: Path, model_name: str | None) -> Release | None:
    return release_for_file(checkpoint_path) or (
        release if (release := release_named(model_name)) is not None and release.method == "ijepa" else None
    )


def convert(checkpoint_path, output_dir, encoder="context", model_name=None, push_to_hub=None, num_heads=None,
            remote_code=True, repo_id=None, release: Release | None = None) -> dict:  # fmt: skip
    """Convert one file into `output_dir`. `release` (a `hf_mim.hub.releases.Release`) overrides the identification
    from the file name / model name; a release whose architecture the weights do not have gets no release facts
    in the card. `remote_code` also writes the code bundle; `repo_id` is the Hub id the card's snippets use."""
    checkpoint_path = Path(checkpoint_path)
    check_output_dir(output_dir)  # before the work: a path that cannot become a folder fails now
    stem = checkpoint_path.name.removesuffix(".tar").removesuffix(".pth")
    release = release or identify_release(checkpoint_path, model_name)
    model_name = model_name or (release.name if release is not None else stem.lower().replace(".", "-"))
    checkpoint = load_original_checkpoint(checkpoint_path)
    config, state, report = convert_checkpoint(checkpoint, checkpoint_path, num_heads, encoder)
    model = IJepaForPreTraining(config).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model.ijepa(torch.zeros(1, config.num_channels, config.image_size, config.image_size))
    if not torch.isfinite(out.last_hidden_state).all():
        raise RuntimeError("The converted encoder produces non-finite outputs.")
    release, report["release"] = credited_release(release, config)
    report["model_name"] = model_name
    card = model_card(model_name, config, encoder, release, report, repo_id or push_to_hub, remote_code,
                      checkpoint_path.name)  # fmt: skip
    # The training resolution follows from the position table: grid side x patch size (infer_config).
    processor = image_processor_at(IJepaImageProcessor, config.image_size)
    return finish_conversion(report, output_dir, model, processor, card, remote_code, push_to_hub)


def convert_release(checkpoint_path, output_dir, release: Release, repo_id=None, remote_code=True) -> dict:
    """`convert` for a release of the table (scripts/convert/publish_releases.py): the head count, which the weights
    do not show, comes from the release's architecture."""
    return convert(checkpoint_path, output_dir, model_name=release.name, num_heads=release.architecture.get(
        "num_attention_heads"), remote_code=remote_code, repo_id=repo_id, release=release)  # fmt: skip


def main(argv=None) -> int:
    """The command line of `scripts/convert/convert_ijepa_to_hf.py`: the report on stdout and exit status 0, or one
    `error: ...` line on stderr and 2 (`run_converter`)."""
    parser = ConverterArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_path", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--encoder", choices=["context", "target"], default="context",
                        help="Encoder AutoModel loads (default: context, as transformers/timm)")  # fmt: skip
    parser.add_argument("--model_name", default=None)
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID")
    parser.add_argument(
        "--num_attention_heads",
        type=int,
        default=None,
        help="Not visible in the weights; required unless the width is one of the original's ViTs (192: 3, 384: 6, "
        "768: 12, 1024 / 1280 / 1408: 16)",
    )
    add_remote_code_flag(parser)
    args = parser.parse_args(argv)
    return run_converter(convert, args.checkpoint_path, args.output_dir, args.encoder, args.model_name,
                         args.push_to_hub, args.num_attention_heads, not args.no_remote_code)  # fmt: skip
