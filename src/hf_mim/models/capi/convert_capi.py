"""Convert a released CAPI checkpoint (capi_vitl14_{p205,lvd,i22k,in1k}.pth) into a Hub-ready folder.

The library side of `scripts/convert/convert_capi_to_hf.py` (its flags: `main`). Writes model.safetensors,
config.json, preprocessor_config.json, a model card (hf_mim.hub.model_cards; release facts and the authors' numbers from
hf_mim.hub.releases) and the remote-code bundle (`remote_code=False` leaves it out). Architecture hyper-parameters are
read off the tensor shapes, so the same code converts the real ViT-L/14 and tiny test checkpoints. The training
resolution is not in a checkpoint (RoPE works at any size): `image_size` gives it (default 224, the releases'), and
both `config.image_size` and the image processor (center crop `image_size`, shorter side resized to
`image_size * 256 / 224`) follow it. Every original key is either converted or explicitly ignored (the student
prediction head `head.*`, and the analytic RoPE tables after they are checked); anything else is an error that lists
the missing and unexpected keys.
"""

import re
from collections import Counter
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
    half_precision_counts,
    image_processor_at,
    load_original_checkpoint,
    raise_on_mismatch,
    run_converter,
    upcast_check,
)
from ...hub.model_cards import conversion_card
from ...hub.releases import Release, release_for_file, release_named, releases_for
from ...layers import CapiRope2D
from .configuration_capi import CapiConfig
from .image_processing_capi import CapiImageProcessor
from .modeling_capi import CapiForPreTraining, CapiModel

RELEASES = {release.name: release for release in releases_for("capi")}  # hf_mim.hub.releases: files, data, numbers
RELEASE_IMAGE_SIZE = 224  # the four releases were pretrained at 224 px

_BLOCK = {
    "residual1.norm.weight": "norm1.weight",
    "residual1.fn.q_proj.weight": "{attn}.q_proj.weight",
    "residual1.fn.k_proj.weight": "{attn}.k_proj.weight",
    "residual1.fn.v_proj.weight": "{attn}.v_proj.weight",
    "residual1.fn.proj.weight": "{attn}.o_proj.weight",
    "residual2.norm.weight": "norm2.weight",
    "residual2.fn.fc1.weight": "mlp.fc1.weight",
    "residual2.fn.fc2.weight": "mlp.fc2.weight",
}
_TOP = {
    "patch_embed.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.bias": "embeddings.patch_embeddings.projection.bias",
    "registers": "embeddings.register_tokens",
    "mask_token": "predictor.mask_token",
}
_BLOCK_KEY = re.compile(r"^(encoder|decoder)\.blocks\.(\d+)\.(.+)$")


def rename_key(key: str) -> str | None:
    """Original backbone key (without `backbone.`) -> hf_mim CapiModel key; None if it is not part of the model."""
    if key in _TOP:
        return _TOP[key]
    match = _BLOCK_KEY.match(key)
    if match is None or match.group(3) not in _BLOCK:
        return None
    part, index, rest = match.groups()
    prefix, attn = ("encoder", "attention") if part == "encoder" else ("predictor", "cross_attention")
    return f"{prefix}.layer.{index}." + _BLOCK[rest].format(attn=attn)


def is_rope_table(key: str) -> bool:
    return bool(_BLOCK_KEY.match(key)) and key.endswith("residual1.fn.rope.freqs")


def _flat_state(checkpoint) -> dict[str, torch.Tensor]:
    """The file's tensors, unwrapped (`student_ema` / `model` / `state_dict`) and without DDP's `module.`."""
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise CheckpointMismatchError(f"Expected a state dict, got {type(checkpoint).__name__}.")
    for wrapper in ("student_ema", "model", "state_dict"):  # tolerate a wrapped dict, the release is flat
        if wrapper in checkpoint and isinstance(checkpoint[wrapper], dict):
            checkpoint = checkpoint[wrapper]
    return {k.removeprefix("module."): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def extract_backbone(checkpoint, checkpoint_path="<checkpoint>") -> tuple[dict[str, torch.Tensor], list[str], Counter]:
    """Flat state dict -> (backbone tensors without prefix, checked and in float32; ignored non-backbone keys;
    count of tensors up-cast from half precision, per dtype)."""
    state = _flat_state(checkpoint)
    prefix = "backbone." if any(k.startswith("backbone.") for k in state) else ""
    kept = {k: v for k, v in state.items() if k.startswith(prefix)}
    ignored = [k for k in state if k not in kept]
    unexpected_ignored = [k for k in ignored if not k.startswith("head.")]
    if unexpected_ignored:
        raise CheckpointMismatchError(
            f"Unexpected non-backbone keys ({len(unexpected_ignored)}): {', '.join(sorted(unexpected_ignored)[:40])}"
        )
    kept, upcast = checked_weights(kept, checkpoint_path)  # before the prefix goes: errors name the file's keys
    return {k.removeprefix(prefix): v for k, v in kept.items()}, ignored, upcast


def infer_config(backbone: dict[str, torch.Tensor], checkpoint_path) -> CapiConfig:
    """Architecture from tensor shapes."""
    required = ["patch_embed.weight", "registers", "mask_token", "encoder.blocks.0.residual1.fn.rope.freqs",
                "encoder.blocks.0.residual2.fn.fc1.weight", "decoder.blocks.0.residual1.fn.rope.freqs",
                "decoder.blocks.0.residual2.fn.fc1.weight"]  # fmt: skip
    missing = [k for k in required if k not in backbone]
    raise_on_mismatch(checkpoint_path, missing, [], hint="Is this a CAPI checkpoint?")

    def depth(part: str) -> int:
        indices = {int(m.group(2)) for k in backbone if (m := _BLOCK_KEY.match(k)) and m.group(1) == part}
        return max(indices) + 1

    patch = backbone["patch_embed.weight"]
    hidden = patch.shape[0]
    decoder_hidden = backbone["mask_token"].shape[-1]
    for part, width in (("encoder", hidden), ("decoder", decoder_hidden)):  # heads = width / the tables' head_dim
        key = f"{part}.blocks.0.residual1.fn.rope.freqs"
        if width % backbone[key].shape[-1]:
            raise CheckpointMismatchError(
                f"{key} {tuple(backbone[key].shape)}: a head width of {backbone[key].shape[-1]} does not divide the "
                f"{part} width {width}, so the head count cannot be read off the weights."
            )
    return CapiConfig(
        patch_size=patch.shape[-1],
        num_channels=patch.shape[1],
        hidden_size=hidden,
        num_hidden_layers=depth("encoder"),
        num_attention_heads=hidden // backbone["encoder.blocks.0.residual1.fn.rope.freqs"].shape[-1],
        intermediate_size=backbone["encoder.blocks.0.residual2.fn.fc1.weight"].shape[0],
        num_register_tokens=backbone["registers"].shape[1],
        decoder_hidden_size=decoder_hidden,
        decoder_num_hidden_layers=depth("decoder"),
        decoder_num_attention_heads=decoder_hidden // backbone["decoder.blocks.0.residual1.fn.rope.freqs"].shape[-1],
        decoder_intermediate_size=backbone["decoder.blocks.0.residual2.fn.fc1.weight"].shape[0],
    )


# The original never trains the RoPE tables (lr multiplier 0), but its EMA teacher re-rounds them every step
# (m * t + (1 - m) * s in float32 with t == s), so a trained checkpoint's tables drift from the analytic values by
# float rounding (measured: 4.6e-5 absolute, 1e-6 of the largest frequency, after 500 steps). Deviations up to this
# fraction of the largest frequency are that drift (reported; the model rebuilds the analytic tables), more is not.
# A file stored in half precision rounds every value to its precision as well: the machine epsilon of that dtype
# bounds the relative rounding (half of it, in fact), so the tolerance grows to it (float16 1e-3, bfloat16 8e-3).
ROPE_DRIFT_TOLERANCE = 1e-4


def rope_tolerance(upcast: Counter) -> float:
    """Allowed deviation of a stored RoPE table, as a fraction of its largest frequency, for a file whose tensors were
    up-cast from the dtypes counted in `upcast` (empty: a float32 file)."""
    return max([ROPE_DRIFT_TOLERANCE] + [torch.finfo(getattr(torch, dtype)).eps for dtype in upcast])


def check_rope_tables(backbone: dict[str, torch.Tensor], config: CapiConfig, tolerance=ROPE_DRIFT_TOLERANCE) -> float:
    """Every stored RoPE table must be the analytic one the model rebuilds - same head width as the config's heads,
    same values up to the EMA's float rounding drift (`tolerance`, see `rope_tolerance`); returns the max abs
    deviation."""
    head_dims = {"encoder": config.hidden_size // config.num_attention_heads,
                 "decoder": config.decoder_hidden_size // config.decoder_num_attention_heads}  # fmt: skip
    worst = 0.0
    for key, table in backbone.items():
        if not is_rope_table(key):
            continue
        head_dim = head_dims[_BLOCK_KEY.match(key).group(1)]
        expected = CapiRope2D.analytic_freqs(head_dim, config.rope_max_freq, config.rope_min_freq)
        if table.shape != expected.shape:
            raise CheckpointMismatchError(
                f"{key} has shape {tuple(table.shape)}, expected {tuple(expected.shape)} (every block of a part has "
                "the head width of its first block)."
            )
        deviation = (table.float() - expected).abs().max().item()
        worst = max(worst, deviation)
        if deviation > tolerance * expected.abs().max().item():
            raise CheckpointMismatchError(
                f"{key} differs from the analytic RoPE frequencies by {deviation:.3g}; this converter rebuilds them "
                "analytically and would not reproduce the checkpoint."
            )
    return worst


def convert_state_dict(checkpoint, checkpoint_path="<checkpoint>"):
    """Original checkpoint -> (CapiConfig, hf_mim state dict, report dict)."""
    backbone, ignored, upcast = extract_backbone(checkpoint, checkpoint_path)
    config = infer_config(backbone, checkpoint_path)
    mapping, rope_keys, unexpected = account_for_keys(backbone, rename_key, is_rope_table)
    origin = {new: old for old, new in mapping.items()}
    check_against_reference(checkpoint_path, {new: backbone[old] for new, old in origin.items()}, CapiModel, config,
                            origin, unexpected)  # fmt: skip
    rope_deviation = check_rope_tables(backbone, config, rope_tolerance(upcast))
    state = {new: backbone[old].contiguous().clone() for old, new in mapping.items()}
    report = {
        "converted": len(mapping),
        "rope_tables_checked_and_dropped": len(rope_keys),
        "rope_max_deviation": rope_deviation,
        "ignored": sorted(ignored),
    }
    if upcast:
        report["upcast"] = describe_upcast(upcast)
    return config, state, report


_HEAD = {
    "head.last_layer.weight_g": "prediction_head.magnitude",
    "head.last_layer.weight_v": "prediction_head.direction",
}


def prediction_head_state(checkpoint, checkpoint_path="<checkpoint>") -> dict[str, torch.Tensor]:
    """The released student prediction head (`head.last_layer.weight_g/_v`, weight-normed) in hf_mim's names,
    checked and in float32 like the backbone."""
    state = _flat_state(checkpoint)
    missing = [k for k in _HEAD if k not in state]
    if missing:
        raise CheckpointMismatchError(f"--with_pretraining_heads needs the student head; missing keys: {missing}")
    head, _ = checked_weights({old: state[old] for old in _HEAD}, checkpoint_path)
    return {new: head[old].contiguous().clone() for old, new in _HEAD.items()}


def head_upcast(checkpoint) -> Counter:
    """The head tensors `prediction_head_state` up-casts, per dtype (for the report's count)."""
    state = _flat_state(checkpoint)
    return half_precision_counts(state[k] for k in _HEAD if k in state)


def build_pretraining_model(config: CapiConfig, backbone_state: dict, checkpoint,
                            checkpoint_path="<checkpoint>") -> CapiForPreTraining:  # fmt: skip
    """CapiForPreTraining to continue pretraining from a release: student and teacher both start from the released
    backbone, the prediction head is the released one, the clustering head (not released) is freshly initialised."""
    head = prediction_head_state(checkpoint, checkpoint_path)
    config.num_prototypes = head["prediction_head.direction"].shape[0]
    model = CapiForPreTraining(config)
    state = {f"capi.{k}": v for k, v in backbone_state.items()}
    state.update({f"teacher.{k}": v for k, v in backbone_state.items()})
    state.update(head)
    state.update({k: v for k, v in model.state_dict().items() if k.startswith("clustering_head.")})
    model.load_state_dict(state, strict=True)
    return model


def conversion_checks(report: dict) -> list[str]:
    """What converting this file measured, in the card's words."""
    ignored = report["ignored"]
    return [
        f"Every original key accounted for: {report['converted']} tensors converted"
        + (f", {len(ignored)} ignored (the student prediction head `head.*`, not part of the backbone)" if ignored
           else "")
        + ".",
        f"RoPE tables: the {report['rope_tables_checked_and_dropped']} stored tables were checked against the analytic "
        f"frequencies the model rebuilds (max abs deviation {report['rope_max_deviation']:.3g}) and dropped.",
        *upcast_check(report),
    ]  # fmt: skip


def model_card(model_name: str, config: CapiConfig, release: Release | None, report: dict, repo_id=None,
               remote_code: bool = True, source_file: str | None = None):  # fmt: skip
    """The folder's `huggingface_hub.ModelCard` (layout: hf_mim.hub.model_cards)."""
    data = f"on **{release.pretraining_data}**" if release is not None else "(data not identified)"
    summary = (
        f"CAPI ViT (width {config.hidden_size}, {config.num_hidden_layers} blocks, patch {config.patch_size}, "
        f"{config.num_register_tokens} registers, 2-D RoPE, RMSNorm) pretrained {data} with CAPI's latent clustering "
        "objective; converted from the original checkpoint with hf_mim."
    )
    contents = (
        "The folder holds a `CapiForPreTraining` (backbone as student and teacher, the released student head; the "
        "clustering head was not released and starts fresh): `AutoModelForPreTraining` continues pretraining, "
        "`AutoModel` loads the backbone."
        if report.get("saved_architecture", "").startswith("CapiForPreTraining")
        else "The folder holds the backbone (`CapiModel`: encoder and predictor)."
    )
    notes = [
        "`pooler_output` is the mean of the first predictor block's outputs (mask-token queries at every position), "
        f"exactly as the original `EncoderDecoder.forward` defines it. Any input whose sides are multiples of "
        f"{config.patch_size} works; nothing is interpolated."
    ]
    return conversion_card(
        "capi",
        config=config,
        model_name=model_name,
        repo_id=repo_id,
        release=release,
        source_file=source_file,
        summary=summary,
        contents=contents,
        checks=conversion_checks(report),
        notes=notes,
        remote_code=remote_code,
        pretraining=report.get("saved_architecture", "").startswith("CapiForPreTraining"),
        identification=report.get("release"),
    )


def identify_release(checkpoint_path: Path, model_name: str | None) -> Release | None:
    """The release this file is: by its download name (capi_vitl14_{p205,lvd,i22k,in22k,in1k}.pth), else by
    `model_name`."""
    return release_for_file(checkpoint_path) or (
        release if (release := release_named(model_name)) is not None and release.method == "capi" else None
    )


def convert(
    checkpoint_path,
    output_dir,
    model_name=None,
    push_to_hub=None,
    with_pretraining_heads=False,
    image_size=RELEASE_IMAGE_SIZE,
    remote_code=True,
    repo_id=None,
    release: Release | None = None,
) -> dict:
    """Convert one file into `output_dir`. `release` (a `hf_mim.hub.releases.Release`) overrides the identification
    from the file name / model name; a named release whose architecture the weights do not have gets no release
    facts in its card. `remote_code` also writes the code bundle (the folder then loads without hf_mim);
    `repo_id` is the Hub id the card's snippets use (default: `push_to_hub`, else the release's suggested id)."""
    checkpoint_path = Path(checkpoint_path)
    check_output_dir(output_dir)  # before the work: a path that cannot become a folder fails now
    release = release or identify_release(checkpoint_path, model_name)
    model_name = model_name or (release.name if release is not None else checkpoint_path.stem.replace("_", "-"))
    checkpoint = load_original_checkpoint(checkpoint_path)
    config, state, report = convert_state_dict(checkpoint, checkpoint_path)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < config.patch_size:
        raise ValueError(
            f"--image_size must be an integer of at least patch_size={config.patch_size}, got {image_size!r}."
        )
    if image_size % config.patch_size:
        raise ValueError(f"--image_size={image_size} must be a multiple of patch_size={config.patch_size}.")
    config.image_size = image_size  # the training resolution: the checkpoint does not record it
    model = CapiModel(config).eval()
    load_result = model.load_state_dict(state, strict=True)
    assert not load_result.missing_keys and not load_result.unexpected_keys
    with torch.no_grad():  # a finite forward is the minimum a converted model must give
        side = config.patch_size * 2
        out = model(torch.zeros(1, config.num_channels, side, side))
    if not torch.isfinite(out.pooler_output).all():
        raise RuntimeError("The converted model produces non-finite outputs.")
    if with_pretraining_heads:
        model = build_pretraining_model(config, state, checkpoint, checkpoint_path)
        report["saved_architecture"] = "CapiForPreTraining (clustering head freshly initialised: not released)"
        if head := describe_upcast(head_upcast(checkpoint)):
            report["upcast"] = f"{report['upcast']}; the head's {head}" if "upcast" in report else head
    release, report["release"] = credited_release(release, config)
    report["model_name"] = model_name
    report["image_size"] = config.image_size
    card = model_card(model_name, config, release, report, repo_id or push_to_hub, remote_code, checkpoint_path.name)
    processor = image_processor_at(CapiImageProcessor, config.image_size)
    return finish_conversion(report, output_dir, model, processor, card, remote_code, push_to_hub)


def convert_release(checkpoint_path, output_dir, release: Release, repo_id=None, remote_code=True) -> dict:
    """`convert` for a release of the table (scripts/convert/publish_releases.py)."""
    return convert(checkpoint_path, output_dir, model_name=release.name, image_size=release.architecture.get(
        "image_size", RELEASE_IMAGE_SIZE), remote_code=remote_code, repo_id=repo_id, release=release)  # fmt: skip


def main(argv=None) -> int:
    """The command line of `scripts/convert/convert_capi_to_hf.py`: the report on stdout and exit status 0, or one
    `error: ...` line on stderr and 2 (`run_converter`)."""
    parser = ConverterArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_path", required=True, help="Original CAPI .pth file")
    parser.add_argument("--output_dir", required=True, help="Folder to write the Hub-ready model into")
    parser.add_argument("--model_name", default=None, help="e.g. capi-vitl14-lvd (default: from the file name)")
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="Upload the folder to this Hub repo")
    parser.add_argument(
        "--with_pretraining_heads",
        action="store_true",
        help="Save a CapiForPreTraining (backbone + released student head) to continue pretraining; AutoModel still "
        "loads the backbone from it.",
    )
    parser.add_argument(
        "--image_size",
        type=int,
        default=RELEASE_IMAGE_SIZE,
        help="Resolution the checkpoint was trained at (not stored in it); config.image_size and the image "
        f"processor's crop follow it (default: {RELEASE_IMAGE_SIZE}, the releases').",
    )
    add_remote_code_flag(parser)
    args = parser.parse_args(argv)
    return run_converter(
        convert,
        args.checkpoint_path,
        args.output_dir,
        args.model_name,
        args.push_to_hub,
        args.with_pretraining_heads,
        args.image_size,
        not args.no_remote_code,
    )
