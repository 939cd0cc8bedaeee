"""Convert a released VICRegL checkpoint (backbone `<name>.pth` or full `<name>_fullckpt.pth`, ResNet-50 or ConvNeXt)
into a Hub-ready folder.

The library side of `scripts/convert/convert_vicregl_to_hf.py` (its flags: `main`). A backbone file (flat state
dict, as `hubconf.py` loads it) gives a `VicreglModel` folder; a full checkpoint (`{"epoch", "model": DDP state dict,
"optimizer"}`) gives a `VicreglForPreTraining` folder (backbone + global and local projectors), so
`AutoModelForPreTraining.from_pretrained(DIR)` resumes pretraining and `AutoModel.from_pretrained(DIR)` loads the
backbone. The architecture is read off the key names and tensor shapes (backbone type, depths, widths, projector
widths, layer scale); alpha follows from which projectors a full checkpoint holds, and from the model name or the
file name (`..._alpha0.9...`) when the file cannot tell. Every key is converted or explicitly ignored (the online
linear probe `classifier.*`, the optimizer state, the epoch); anything else is an error listing the missing and
unexpected keys. The converted backbone is checked against a functional re-implementation of the original forward
run on the original-layout tensors. Half-precision files are up-cast to float32 (reported) before both run; NaN /
inf weights, and integer tensors other than BatchNorm's `num_batches_tracked` counters, are refused by name.
"""

import re
from pathlib import Path

import torch
import torch.nn.functional as F

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
    raise_on_mismatch,
    run_converter,
    upcast_check,
)
from ...hub.model_cards import conversion_card
from ...hub.releases import Release, architecture_mismatches, releases_for
from .configuration_vicregl import VicreglConfig
from .image_processing_vicregl import VicreglImageProcessor
from .modeling_vicregl import VicreglForPreTraining, VicreglModel

# hf_mim.hub.releases: the seven releases (files, data, reported numbers, expected architecture), keyed by the original
# names (`convnext_small_alpha0.9`, ...).
RELEASES = {release.key: release for release in releases_for("vicregl")}
RELEASE_IMAGE_SIZE = 224  # every release was pretrained with 224 px global crops
FULL_CHECKPOINT_TOP_LEVEL = ("model",)
IGNORED_TOP_LEVEL = ("epoch", "optimizer")
IGNORED_PREFIXES = {"classifier.": "online linear probe (trained on the detached representation, uses labels)"}
PROJECTORS = ("projector", "maps_projector")
LAYER_SCALE_PLACEHOLDER = 1e-6  # any positive value makes the parameters exist; the checkpoint's gamma replaces it


def _lars_filter_stand_in(parameter) -> bool:
    """Stand-in for the original `optimizers.exclude_bias_and_norm`: LARS (the ResNet-50 runs) keeps this function in
    its param_groups, so the `optimizer` entry of those full checkpoints names it. That entry is ignored; the name
    only has to resolve for `torch.load(weights_only=True)`, without importing any original code."""
    return parameter.ndim == 1


OPTIMIZER_GLOBALS = [(_lars_filter_stand_in, "optimizers.exclude_bias_and_norm")]
_ALPHA = re.compile(r"alpha[_-]?(\d+(?:[.p]\d+)?)")

# ------------------------------------------------------------------------------------------ key renaming
_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_RESNET_STEM = {"conv1.weight": "embedder.embedder.convolution.weight"}
_RESNET_STEM_BN = re.compile(rf"^bn1\.{_BN}$")
_RESNET_CONV = re.compile(r"^layer(\d+)\.(\d+)\.conv([123])\.weight$")
_RESNET_BN = re.compile(rf"^layer(\d+)\.(\d+)\.bn([123])\.{_BN}$")
_RESNET_DOWNSAMPLE = re.compile(rf"^layer(\d+)\.(\d+)\.downsample\.(?:0\.weight|1\.{_BN})$")
_RESNET_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.")

_CONVNEXT_TOP = {
    "downsample_layers.0.0.weight": "embeddings.patch_embeddings.weight",
    "downsample_layers.0.0.bias": "embeddings.patch_embeddings.bias",
    "downsample_layers.0.1.weight": "embeddings.layernorm.weight",
    "downsample_layers.0.1.bias": "embeddings.layernorm.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_CONVNEXT_DOWNSAMPLE = re.compile(r"^downsample_layers\.([1-9]\d*)\.([01])\.(weight|bias)$")
_CONVNEXT_BLOCK = re.compile(r"^stages\.(\d+)\.(\d+)\.(dwconv|norm|pwconv1|pwconv2)\.(weight|bias)$")
_CONVNEXT_GAMMA = re.compile(r"^stages\.(\d+)\.(\d+)\.gamma$")
_CONVNEXT_STAGE = re.compile(r"^stages\.(\d+)\.(\d+)\.")
_PROJECTOR = re.compile(
    r"^(projector|maps_projector)\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)


def rename_resnet_key(key: str) -> str | None:
    """VICRegL / torchvision ResNet key -> hf_mim VicreglModel (= transformers ResNetModel) key; None if unknown."""
    if key in _RESNET_STEM:
        return _RESNET_STEM[key]
    if match := _RESNET_STEM_BN.match(key):
        return f"embedder.embedder.normalization.{match.group(1)}"
    if match := _RESNET_CONV.match(key):
        stage, block, conv = match.groups()
        return f"encoder.stages.{int(stage) - 1}.layers.{block}.layer.{int(conv) - 1}.convolution.weight"
    if match := _RESNET_BN.match(key):
        stage, block, bn, param = match.groups()
        return f"encoder.stages.{int(stage) - 1}.layers.{block}.layer.{int(bn) - 1}.normalization.{param}"
    if match := _RESNET_DOWNSAMPLE.match(key):
        stage, block, param = match.groups()
        part = "normalization." + param if param else "convolution.weight"
        return f"encoder.stages.{int(stage) - 1}.layers.{block}.shortcut.{part}"
    return None


def rename_convnext_key(key: str) -> str | None:
    """VICRegL ConvNeXt key -> hf_mim VicreglModel (= transformers ConvNextModel) key; None if unknown."""
    if key in _CONVNEXT_TOP:
        return _CONVNEXT_TOP[key]
    if match := _CONVNEXT_DOWNSAMPLE.match(key):
        stage, index, param = match.groups()
        return f"encoder.stages.{stage}.downsampling_layer.{index}.{param}"
    if match := _CONVNEXT_BLOCK.match(key):
        stage, block, module, param = match.groups()
        module = "layernorm" if module == "norm" else module
        return f"encoder.stages.{stage}.layers.{block}.{module}.{param}"
    if match := _CONVNEXT_GAMMA.match(key):
        stage, block = match.groups()
        return f"encoder.stages.{stage}.layers.{block}.layer_scale_parameter"
    return None


def rename_projector_key(key: str) -> str | None:
    """`projector.*` / `maps_projector.*`: the module indices are the original's, the names unchanged."""
    return key if _PROJECTOR.match(key) else None


def is_ignored(key: str) -> bool:
    return key.startswith(tuple(IGNORED_PREFIXES))


def is_batch_norm_counter(key: str) -> bool:
    """BatchNorm's step counter (ResNet backbones, BatchNorm1d projectors): the one tensor of the originals that is
    integer by nature (int64), kept as it is."""
    return key.endswith(".num_batches_tracked")


# ------------------------------------------------------------------------------------------ layouts
def split_checkpoint(
    checkpoint, checkpoint_path="<checkpoint>"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str], str]:
    """Backbone file or full checkpoint -> (backbone tensors without prefix, head tensors (`projector.*`,
    `maps_projector.*`, `classifier.*`, ...), ignored top-level entries, layout description)."""
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise CheckpointMismatchError(
            f"Expected a VICRegL backbone state dict or a full checkpoint dict, got {type(checkpoint).__name__}"
            + (" (empty)" if isinstance(checkpoint, dict) else "")
            + "."
        )
    ignored_top: list[str] = []
    if "model" in checkpoint:  # <name>_fullckpt.pth: {"epoch", "model": DDP state dict, "optimizer"}
        unknown = [k for k in checkpoint if k not in FULL_CHECKPOINT_TOP_LEVEL + IGNORED_TOP_LEVEL]
        raise_on_mismatch(checkpoint_path, [], unknown, hint="Top-level keys of a VICRegL _fullckpt.pth.")
        model_state = checkpoint["model"]
        if not isinstance(model_state, dict) or not model_state:
            raise CheckpointMismatchError(f"checkpoint['model'] is not a state dict ({type(model_state).__name__}).")
        ignored_top = [k for k in checkpoint if k in IGNORED_TOP_LEVEL]
        epoch = checkpoint.get("epoch")
        layout = "full checkpoint" + (f" (epoch {epoch})" if isinstance(epoch, int) else "")
    elif all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        model_state, layout = checkpoint, "backbone state dict"
    else:
        described = ", ".join(f"{k}: {type(v).__name__}" for k, v in list(checkpoint.items())[:10])
        raise CheckpointMismatchError(
            "Neither a VICRegL backbone file (a flat state dict of tensors) nor a full checkpoint "
            f"({{'epoch', 'model', 'optimizer'}}); top-level entries: {described}."
        )
    non_tensors = [k for k, v in model_state.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        raise CheckpointMismatchError(f"Entries that are not tensors: {', '.join(map(str, non_tensors[:20]))}.")
    state = {k.removeprefix("module."): v for k, v in model_state.items()}
    if any(k.startswith("backbone.") for k in state):  # the VICRegL module: backbone + projectors + probe
        backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        heads = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        if layout == "backbone state dict":
            layout = "VICRegL module state dict"
    elif layout != "backbone state dict":
        raise CheckpointMismatchError("checkpoint['model'] has no `backbone.*` keys: is this a VICRegL checkpoint?")
    else:
        backbone, heads = state, {}
    return backbone, heads, ignored_top, layout


def backbone_type_of(backbone: dict[str, torch.Tensor]) -> str:
    if "conv1.weight" in backbone and any(_RESNET_BLOCK.match(k) for k in backbone):
        if not any(k.endswith(".conv3.weight") for k in backbone):
            raise CheckpointMismatchError(
                "A ResNet without `conv3` (basic blocks, ResNet-18/34) is not a VICRegL architecture: only bottleneck "
                "ResNets are supported."
            )
        return "resnet"
    if "downsample_layers.0.0.weight" in backbone and any(_CONVNEXT_STAGE.match(k) for k in backbone):
        return "convnext"
    raise CheckpointMismatchError(
        "Neither a VICRegL ResNet backbone (`conv1.weight`, `layer{1-4}.*`) nor a ConvNeXt backbone "
        f"(`downsample_layers.*`, `stages.*`); first keys: {', '.join(list(backbone)[:8])}."
    )


def _stage_depths(backbone: dict[str, torch.Tensor], pattern: re.Pattern, first: int) -> list[int]:
    """Blocks per stage from `<stage>.<block>.` indices; stages must be numbered first, first + 1, ..."""
    blocks: dict[int, set[int]] = {}
    for key in backbone:
        if match := pattern.match(key):
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    stages = sorted(blocks)
    if stages != list(range(first, first + len(stages))):
        raise CheckpointMismatchError(f"Stage indices {stages} are not consecutive from {first}.")
    depths = []
    for stage in stages:
        if sorted(blocks[stage]) != list(range(len(blocks[stage]))):
            raise CheckpointMismatchError(f"Stage {stage} has block indices {sorted(blocks[stage])}, not 0..n-1.")
        depths.append(len(blocks[stage]))
    return depths


def _get(backbone: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in backbone:
        raise CheckpointMismatchError(f"Missing key {key!r}, needed to read the architecture.")
    return backbone[key]


def infer_backbone_config(backbone: dict[str, torch.Tensor]) -> tuple[dict, bool]:
    """Backbone fields of VicreglConfig from names and shapes; also whether layer-scale `gamma` keys are present."""
    backbone_type = backbone_type_of(backbone)
    if backbone_type == "resnet":
        depths = _stage_depths(backbone, _RESNET_BLOCK, first=1)
        stem = _get(backbone, "conv1.weight")
        fields = dict(
            backbone_type="resnet",
            num_channels=stem.shape[1],
            embedding_size=stem.shape[0],
            depths=depths,
            hidden_sizes=[_get(backbone, f"layer{s + 1}.0.conv3.weight").shape[0] for s in range(len(depths))],
            drop_path_rate=0.0,
        )
        return fields, False
    depths = _stage_depths(backbone, _CONVNEXT_STAGE, first=0)
    stem = _get(backbone, "downsample_layers.0.0.weight")
    fields = dict(
        backbone_type="convnext",
        num_channels=stem.shape[1],
        patch_size=stem.shape[-1],
        depths=depths,
        hidden_sizes=[_get(backbone, f"stages.{s}.0.dwconv.weight").shape[0] for s in range(len(depths))],
        layer_norm_eps=1e-6,
    )
    return fields, any(_CONVNEXT_GAMMA.match(k) for k in backbone)


def projector_spec(heads: dict[str, torch.Tensor], name: str) -> str | None:
    """The projector's widths as VICRegL's `--mlp` spells them (e.g. `8192-8192-8192`), read off its Linear weights
    (`<name>.0/3/6.weight`, 2-D); None if the checkpoint has no such projector."""
    linears = sorted(
        (int(m.group(2)), tensor)
        for key, tensor in heads.items()
        if (m := _PROJECTOR.match(key)) and m.group(1) == name and m.group(3) == "weight" and tensor.ndim == 2
    )
    if not linears:
        return None
    return "-".join(str(tensor.shape[0]) for _, tensor in linears)


def alpha_from_name(*names) -> tuple[float | None, str | None]:
    """`..._alpha0.9...`, `alpha0p75` (torch.hub entries) in the first name that has it -> (alpha, that name)."""
    for name in names:
        if name and (match := _ALPHA.search(str(name))):
            value = float(match.group(1).replace("p", "."))
            if not 0 <= value <= 1:
                raise ValueError(f"alpha={value} read from {name!r} is not in [0, 1].")
            return value, str(name)
    return None, None


def infer_alpha(specs: dict[str, str | None], is_full: bool, names: tuple) -> tuple[float, str]:
    """alpha and where it came from: the projectors a full checkpoint holds (alpha 1 drops the local one, 0 the
    global one), else the model or file name, else the config default."""
    named, source = alpha_from_name(*names)
    if is_full:
        present = [name for name in PROJECTORS if specs[name] is not None]
        if present == ["projector"]:
            structural = 1.0
        elif present == ["maps_projector"]:
            structural = 0.0
        elif not present:
            raise CheckpointMismatchError("A full checkpoint without `projector.*` and `maps_projector.*` keys.")
        else:
            structural = None
        if structural is not None:
            if named is not None and named != structural:
                raise ValueError(
                    f"alpha={named} in {source!r} contradicts the checkpoint, whose projectors ({', '.join(present)}) "
                    f"mean alpha={structural}."
                )
            return structural, f"projectors in the checkpoint ({', '.join(present)} only)"
        if named is not None:
            if not 0 < named < 1:
                raise ValueError(f"alpha={named} in {source!r} contradicts the checkpoint, which has both projectors.")
            return named, f"name {source!r} (both projectors present: 0 < alpha < 1)"
        default = VicreglConfig().alpha
        return default, f"both projectors present (0 < alpha < 1) but no alphaX in the name: config default {default}"
    if named is not None:
        return named, f"name {source!r}"
    default = VicreglConfig().alpha
    return default, f"not stored in a backbone file and no alphaX in the model/file name: config default {default}"


def release_of(model_name: str | None, *more_names) -> str | None:
    """The release a name (`convnext_small_alpha0.9`, `vicregl-convnext-small-alpha0p9`, ...) refers to."""
    for name in (model_name, *more_names):
        if not name:
            continue
        normalized = str(name).lower().replace("-", "_").replace("0p", "0.")
        for release in sorted(RELEASES, key=len, reverse=True):  # alpha0.75 before alpha0.7...
            if re.search(rf"(^|[^a-z0-9]){re.escape(release)}($|[^0-9])", normalized):
                return release
    return None


def matches_release(config: VicreglConfig, release: str | Release) -> bool:
    """Whether `config` has the expected backbone of the release (hf_mim.hub.releases)."""
    return not architecture_mismatches(RELEASES[release] if isinstance(release, str) else release, config)


def convert_checkpoint(checkpoint, checkpoint_path="<checkpoint>", names=()):
    """Original checkpoint -> (VicreglConfig, state dict of VicreglForPreTraining (full) or VicreglModel (backbone
    file), whether it is a full checkpoint, report)."""
    backbone, heads, ignored_top, layout = split_checkpoint(checkpoint, checkpoint_path)
    fields, has_gamma = infer_backbone_config(backbone)
    is_full = bool(heads)
    specs = {name: projector_spec(heads, name) for name in PROJECTORS}
    alpha, alpha_source = infer_alpha(specs, is_full, names)
    config = VicreglConfig(
        **fields,
        image_size=RELEASE_IMAGE_SIZE,
        alpha=alpha,
        layer_scale_init_value=LAYER_SCALE_PLACEHOLDER if has_gamma else 0.0,
        **{name: spec for name, spec in specs.items() if spec is not None},
    )
    rename_backbone = rename_resnet_key if config.backbone_type == "resnet" else rename_convnext_key
    mapping, ignored, unexpected = account_for_keys(backbone, rename_backbone, lambda key: False)
    if is_full:
        mapping = {f"backbone.{k}": f"vicregl.{v}" for k, v in mapping.items()}
        unexpected = [f"backbone.{k}" for k in unexpected]
        head_mapping, ignored, head_unexpected = account_for_keys(heads, rename_projector_key, is_ignored)
        mapping.update(head_mapping)
        unexpected += head_unexpected
        model_class, tensors = VicreglForPreTraining, {f"backbone.{k}": v for k, v in backbone.items()} | heads
    else:
        model_class, tensors = VicreglModel, backbone
    origin = {new: old for old, new in mapping.items()}
    hint = "Layer scale found (`gamma`): every block needs one." if has_gamma else ""
    check_against_reference(checkpoint_path, {new: tensors[old] for new, old in origin.items()}, model_class, config,
                            origin, unexpected, hint)  # fmt: skip
    kept, upcast = checked_weights({old: tensors[old] for old in mapping}, checkpoint_path, is_batch_norm_counter)
    state = {new: kept[old].contiguous().clone() for old, new in mapping.items()}
    ignored_groups = {}
    for key in ignored:
        prefix = next(p for p in IGNORED_PREFIXES if key.startswith(p))
        ignored_groups.setdefault(prefix, []).append(key)
    report = {
        "layout": layout,
        "architecture": describe(config, is_full, has_gamma),
        "alpha": config.alpha,
        "alpha_source": alpha_source,
        "kept_keys": len(mapping),
        "ignored_keys": len(ignored) + len(ignored_top),
        "ignored": "; ".join(
            [f"{', '.join(keys)} ({IGNORED_PREFIXES[prefix]})" for prefix, keys in ignored_groups.items()]
            + [f"top-level '{k}'" for k in ignored_top]
        )
        or "none",
    }
    if upcast:
        report["upcast"] = describe_upcast(upcast)
    return config, state, is_full, report


def describe(config: VicreglConfig, is_full: bool, has_gamma: bool) -> str:
    if config.backbone_type == "resnet":
        text = f"ResNet (bottleneck), stem {config.embedding_size}"
    else:
        text = f"ConvNeXt, patch {config.patch_size}" + (", layer scale (gamma)" if has_gamma else "")
    text += f", depths {config.depths}, hidden_sizes {config.hidden_sizes}"
    if is_full:
        heads = [("projector", config.uses_global_loss), ("maps_projector", config.uses_local_loss)]
        text += "; " + ", ".join(f"{name} {getattr(config, name)}" for name, present in heads if present)
    return text


# ------------------------------------------------------------------------------------------ reference forward
def _channels_first_layer_norm(x, weight, bias, eps=1e-6):
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    return weight[:, None, None] * ((x - mean) / torch.sqrt(var + eps)) + bias[:, None, None]


def reference_forward(backbone_type: str, weights: dict[str, torch.Tensor], pixel_values: torch.Tensor):
    """The original `resnet.py` / `convnext.py` forward (eval mode), written with torch.nn.functional on the
    original-layout tensors: an independent path that checks the renaming. Returns (maps (B, h*w, C),
    representation (B, C)) as VICRegL's backbones do."""
    w = weights
    if backbone_type == "resnet":

        def bn(x, prefix):
            return F.batch_norm(x, w[f"{prefix}.running_mean"], w[f"{prefix}.running_var"], w[f"{prefix}.weight"],
                                w[f"{prefix}.bias"], training=False, eps=1e-5)  # fmt: skip

        x = F.conv2d(F.pad(pixel_values, (1, 1, 1, 1)), w["conv1.weight"], stride=2, padding=2)  # ZeroPad2d(1)+pad 2
        x = F.max_pool2d(F.relu(bn(x, "bn1")), 3, stride=2, padding=1)
        for stage, depth in enumerate(_stage_depths(w, _RESNET_BLOCK, first=1), start=1):
            for block in range(depth):
                p = f"layer{stage}.{block}"
                stride = 2 if stage > 1 and block == 0 else 1
                out = F.relu(bn(F.conv2d(x, w[f"{p}.conv1.weight"]), f"{p}.bn1"))
                kernel = w[f"{p}.conv2.weight"].shape[-1]
                out = F.relu(bn(F.conv2d(out, w[f"{p}.conv2.weight"], stride=stride, padding=kernel // 2), f"{p}.bn2"))
                out = bn(F.conv2d(out, w[f"{p}.conv3.weight"]), f"{p}.bn3")
                if f"{p}.downsample.0.weight" in w:
                    x = bn(F.conv2d(x, w[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
                x = F.relu(out + x)
        return x.flatten(2).transpose(1, 2), x.mean(dim=(2, 3))
    stem = w["downsample_layers.0.0.weight"]
    x = F.conv2d(pixel_values, stem, w["downsample_layers.0.0.bias"], stride=stem.shape[-1])
    x = _channels_first_layer_norm(x, w["downsample_layers.0.1.weight"], w["downsample_layers.0.1.bias"])
    for stage, depth in enumerate(_stage_depths(w, _CONVNEXT_STAGE, first=0)):
        if stage > 0:
            p = f"downsample_layers.{stage}"
            x = _channels_first_layer_norm(x, w[f"{p}.0.weight"], w[f"{p}.0.bias"])
            x = F.conv2d(x, w[f"{p}.1.weight"], w[f"{p}.1.bias"], stride=w[f"{p}.1.weight"].shape[-1])
        for block in range(depth):
            p = f"stages.{stage}.{block}"
            dw = w[f"{p}.dwconv.weight"]
            y = F.conv2d(x, dw, w[f"{p}.dwconv.bias"], padding=dw.shape[-1] // 2, groups=x.shape[1])
            y = F.layer_norm(y.permute(0, 2, 3, 1), (x.shape[1],), w[f"{p}.norm.weight"], w[f"{p}.norm.bias"], 1e-6)
            y = F.linear(F.gelu(F.linear(y, w[f"{p}.pwconv1.weight"], w[f"{p}.pwconv1.bias"])),
                         w[f"{p}.pwconv2.weight"], w[f"{p}.pwconv2.bias"])  # fmt: skip
            if f"{p}.gamma" in w:
                y = w[f"{p}.gamma"] * y
            x = x + y.permute(0, 3, 1, 2)
    maps = F.layer_norm(x.flatten(2).transpose(1, 2), (x.shape[1],), w["norm.weight"], w["norm.bias"], 1e-6)
    return maps, maps.mean(dim=1)


def reference_difference(
    model: VicreglModel, backbone: dict[str, torch.Tensor], side: int = 64
) -> tuple[float, float]:
    """max |converted - reference| over the dense maps and the representation of a seeded random batch, and the
    largest reference value (for scale)."""
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, model.config.num_channels, side, side - 16, generator=generator)
    with torch.no_grad():
        out = model(pixel_values)
        maps, representation = reference_forward(model.config.backbone_type, backbone, pixel_values)
    difference = max((out.feature_map.flatten(1, 2) - maps).abs().max().item(),
                     (out.pooler_output - representation).abs().max().item())  # fmt: skip
    return difference, max(maps.abs().max().item(), representation.abs().max().item())


# ------------------------------------------------------------------------------------------ model card
def conversion_checks(report: dict) -> list[str]:
    """What converting this file measured, in the card's words."""
    return [
        f"Layout: {report['layout']}; every key accounted for ({report['kept_keys']} kept, {report['ignored_keys']} "
        f"ignored: {report['ignored']}).",
        f"alpha = {report['alpha']} ({report['alpha_source']}).",
        "The converted backbone was run against a functional re-implementation of the original forward on the "
        f"original-layout tensors (random 2 x 64 x 48 batch): max abs difference {report['reference_max_abs_diff']}.",
        *upcast_check(report),
    ]


def model_card(model_name: str, config: VicreglConfig, release: str | Release | None, is_full: bool,
               report: dict | None = None, repo_id: str | None = None, remote_code: bool = True,
               source_file: str | None = None):  # fmt: skip
    """The folder's `huggingface_hub.ModelCard` (layout: hf_mim.hub.model_cards). `release`: a release of the table (or
    its key, e.g. `convnext_small_alpha0.9`) whose facts and reported numbers the card carries, or None."""
    if isinstance(release, str):
        release = RELEASES[release]
    arch = "ResNet" if config.backbone_type == "resnet" else "ConvNeXt"
    data_text = (
        f"pretrained on **{release.pretraining_data}**"
        if release is not None
        else "pretraining data not identified (not one of the seven releases)"
    )
    summary = (
        f"VICRegL {arch} backbone (depths {config.depths}, widths {config.hidden_sizes}), {data_text}, alpha = "
        f"**{config.alpha}** (weight of the global loss; `1 - alpha` weighs the local one). Converted from the "
        "original checkpoint with hf_mim."
    )
    contents = (
        "The folder holds the backbone and the pretraining projector(s) of the full checkpoint: "
        "`AutoModelForPreTraining` loads everything (to continue pretraining), `AutoModel` the backbone."
        if is_full
        else "The folder holds the backbone (`AutoModel`); the projectors are not part of a backbone release."
    )
    notes = [
        "As in the original, the representation is the average of the dense maps; for ConvNeXt each token is "
        "normalised by the final LayerNorm *before* averaging (`last_hidden_state` is the map before that norm, as in "
        "transformers' `ConvNextModel`). The weights use transformers' "
        f"`{'ResNetModel' if arch == 'ResNet' else 'ConvNextModel'}` names."
    ]
    return conversion_card(
        "vicregl",
        config=config,
        model_name=model_name,
        repo_id=repo_id,
        release=release,
        source_file=source_file,
        summary=summary,
        contents=contents,
        checks=conversion_checks(report) if report is not None else (),
        notes=notes,
        extra_tags=(config.backbone_type,),
        remote_code=remote_code,
        pretraining=is_full,
        identification=report.get("release") if report is not None else None,
    )


# ------------------------------------------------------------------------------------------ entry point
def default_model_name(checkpoint_path: Path) -> str:
    name = checkpoint_path.name
    for suffix in (".tar", ".pth", ".pt"):
        name = name.removesuffix(suffix)
    return name.removesuffix("_fullckpt")


def convert(checkpoint_path, output_dir, model_name=None, push_to_hub=None, remote_code=True, repo_id=None,
            release: Release | None = None) -> dict:  # fmt: skip
    """Convert one file into `output_dir`. `release` (a `hf_mim.hub.releases.Release`) overrides the identification
    from the model / file name; a release whose backbone the weights do not have gets no release facts in the card.
    `remote_code` also writes the code bundle; `repo_id` is the Hub id the card's snippets use."""
    checkpoint_path = Path(checkpoint_path)
    check_output_dir(output_dir)  # before the work: a path that cannot become a folder fails now
    file_name = default_model_name(checkpoint_path)
    model_name = model_name or file_name
    with torch.serialization.safe_globals(OPTIMIZER_GLOBALS):
        checkpoint = load_original_checkpoint(checkpoint_path)
    names = (model_name, file_name) if release is None else (release.key, model_name, file_name)
    config, state, is_full, report = convert_checkpoint(checkpoint, checkpoint_path, names=names)
    model_class = VicreglForPreTraining if is_full else VicreglModel
    model = model_from_state(model_class, config, state)
    backbone = model.vicregl if is_full else model
    # The reference runs on the same up-cast float32 values as the converted model (a half-precision original only
    # rounded its weights, which both sides share), so float32's tolerance is the right one for either file.
    original_backbone, _ = checked_weights(split_checkpoint(checkpoint, checkpoint_path)[0], checkpoint_path,
                                           is_batch_norm_counter)  # fmt: skip
    difference, scale = reference_difference(backbone, original_backbone)
    if not difference <= 1e-4 * max(scale, 1.0):
        raise RuntimeError(f"The converted backbone differs from the original forward by {difference:.3g}.")
    if release is None:
        release = RELEASES.get(release_of(model_name, file_name))
    release, report["release"] = credited_release(release, config, "key")
    report["reference_max_abs_diff"] = f"{difference:.3g} (outputs up to {scale:.3g})"
    report["saved_architecture"] = model_class.__name__
    report["model_name"] = model_name
    card = model_card(model_name, config, release, is_full, report, repo_id or push_to_hub, remote_code,
                      checkpoint_path.name)  # fmt: skip
    processor = image_processor_at(VicreglImageProcessor, config.image_size)
    return finish_conversion(report, output_dir, model, processor, card, remote_code, push_to_hub)


def convert_release(checkpoint_path, output_dir, release: Release, repo_id=None, remote_code=True) -> dict:
    """`convert` for a release of the table (scripts/convert/publish_releases.py)."""
    return convert(checkpoint_path, output_dir, model_name=release.name, remote_code=remote_code, repo_id=repo_id,
                   release=release)  # fmt: skip


def main(argv=None) -> int:
    """The command line of `scripts/convert/convert_vicregl_to_hf.py`: the report on stdout and exit status 0, or one
    `error: ...` line on stderr and 2 (`run_converter`)."""
    parser = ConverterArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_path", required=True, help="Original <name>.pth or <name>_fullckpt.pth")
    parser.add_argument("--output_dir", required=True, help="Folder to write the Hub-ready model into")
    parser.add_argument(
        "--model_name",
        default=None,
        help="e.g. convnext_small_alpha0.9 (default: from the file name); identifies the release and alpha",
    )
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="Upload the folder to this Hub repo")
    add_remote_code_flag(parser)
    args = parser.parse_args(argv)
    return run_converter(
        convert, args.checkpoint_path, args.output_dir, args.model_name, args.push_to_hub, not args.no_remote_code
    )
