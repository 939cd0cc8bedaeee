"""Convert the DALL-E dVAE encoder (CAE v1's / BEiT's tokenizer) into a Hub-ready `DalleTokenizer` folder.

The library side of `scripts/convert/convert_dalle_tokenizer_to_hf.py` (its flags: `main`). Two inputs are read:

* a plain state dict (MMPretrain's `dalle_encoder.pth`: `blocks.input.w`, `blocks.group_1.block_1.res_path.conv_1.w`,
  ..., `blocks.output.conv.b`; optionally under `state_dict` and/or with DDP `module.` prefixes), loaded with
  `torch.load(weights_only=True)`;
* OpenAI's `encoder.pkl` (https://cdn.openai.com/dall-e/encoder.pkl), a `torch.save` of the whole
  `dall_e.encoder.Encoder` module. Unpickling it normally imports and runs the `dall_e` package (and whatever else
  the pickle names). Here it goes through a restricted unpickler instead: `find_class` admits only the exact globals
  listed in `ADMITTED_GLOBALS` - the three `dall_e` classes and the `torch.nn` containers/layers of the encoder, each
  mapped to an inert stand-in class that merely records its pickled `__dict__`; `collections.OrderedDict`, `set`,
  `torch.device`; torch's tensor/parameter rebuild functions (wrapped, so hooks and metadata are dropped) - and
  refuses every other global with an error naming it, before anything from the file is called. TorchScript archives
  (which `torch.load` would hand to `torch.jit.load`) and pre-0.4 tar archives are refused up front. The parameters
  `w` / `b` are then read off the recorded module tree.

Sizes (width, codebook, groups, blocks per group, channels) are read off the tensors. Every key is converted
(`X.w -> X.weight`, `X.b -> X.bias`); anything else is an error listing the missing and unexpected keys. The weights
are saved in float32: half-precision ones are up-cast (reported), NaN / inf or integer ones refused by name. The
tokenizer has no attention, so there is no head count to give. For the pickled module, its module names and types,
conv kernel sizes, max-pool settings, block `post_gain`s and the encoder's recorded hyper-parameters must agree with
the converted model as well.
"""

import _compat_pickle
import pickle
import re
import tarfile
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from ...hub.conversion import (
    CheckpointMismatchError,
    ConverterArgumentParser,
    account_for_keys,
    add_remote_code_flag,
    check_against_reference,
    check_checkpoint_path,
    check_output_dir,
    checked_weights,
    credited_release,
    describe_upcast,
    finish_conversion,
    load_original_checkpoint,
    raise_on_mismatch,
    run_converter,
)
from ...hub.model_cards import conversion_card
from ...hub.releases import Release, release_for_file, release_named, releases_for
from .tokenizer_dalle import DalleEncoderBlock, DalleTokenizer, DalleTokenizerConfig, map_pixels

RELEASES = {release.name: release for release in releases_for("dalle_tokenizer")}  # hf_mim.hub.releases


# ----------------------------------------------------------------------------------------- restricted unpickler
class UnsafePickleError(ValueError):
    """The pickle names a global outside `ADMITTED_GLOBALS`; nothing from the file was executed."""


class _StandIn:
    """An inert replacement for one pickled original object: `__setstate__` only records the pickled state."""

    original = "?"

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):  # (__dict__, slots)
            state = state[0]
        if not isinstance(state, dict):
            raise UnsafePickleError(f"{self.original}: expected a dict state, got {type(state).__name__}")
        self.state = state

    @property
    def attributes(self) -> dict:
        return getattr(self, "state", {})


def _stand_in(original: str) -> type:
    name = original.rsplit(".", 1)[-1]
    return type(f"StandIn_{name}", (_StandIn,), {"original": original, "__module__": __name__})


OriginalEncoder = _stand_in("dall_e.encoder.Encoder")
OriginalEncoderBlock = _stand_in("dall_e.encoder.EncoderBlock")
OriginalConv2d = _stand_in("dall_e.utils.Conv2d")
OriginalSequential = _stand_in("torch.nn.modules.container.Sequential")
OriginalReLU = _stand_in("torch.nn.modules.activation.ReLU")
OriginalMaxPool2d = _stand_in("torch.nn.modules.pooling.MaxPool2d")
OriginalIdentity = _stand_in("torch.nn.modules.linear.Identity")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch's `_rebuild_tensor_v2` on a storage from the archive; `requires_grad`, hooks and metadata dropped."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise UnsafePickleError(f"tensor rebuild got a {type(storage).__name__}, not a storage from the archive")
    if not isinstance(storage_offset, int) or not all(isinstance(v, int) for v in (*size, *stride)):
        raise UnsafePickleError("tensor rebuild got non-integer offset / size / stride")
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, tuple(size), tuple(stride), False, OrderedDict())


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """`nn.Parameter` -> its plain tensor."""
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError(f"parameter rebuild got a {type(data).__name__}, not a tensor")
    return data


def _device(*args):
    if not all(isinstance(a, str | int) for a in args):
        raise UnsafePickleError("torch.device got non-string arguments")
    return torch.device(*args)


# (module, name) as they appear in the pickle (after Python 2 name fixing) -> what the unpickler returns instead.
# Storage types (`torch FloatStorage` ...) never reach this table: torch's loader resolves them itself to
# `torch.serialization.StorageType` (a dtype record) before delegating to `find_class`.
ADMITTED_GLOBALS = {
    ("dall_e.encoder", "Encoder"): OriginalEncoder,
    ("dall_e.encoder", "EncoderBlock"): OriginalEncoderBlock,
    ("dall_e.utils", "Conv2d"): OriginalConv2d,
    ("torch.nn.modules.container", "Sequential"): OriginalSequential,
    ("torch.nn.modules.activation", "ReLU"): OriginalReLU,
    ("torch.nn.modules.pooling", "MaxPool2d"): OriginalMaxPool2d,
    ("torch.nn.modules.linear", "Identity"): OriginalIdentity,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("torch", "device"): _device,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


def _normalize(module: str, name: str) -> tuple[str, str]:
    """Python 2 names (`__builtin__ set`, as protocol-2 pickles write them) -> Python 3 names, without importing."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def restricted_pickle_module(admitted: set | None = None) -> types.ModuleType:
    """A module-like object for `torch.load(pickle_module=...)`: `Unpickler` (and `load`) whose `find_class` returns
    only `ADMITTED_GLOBALS` entries and raises `UnsafePickleError` for anything else. `admitted` collects the
    globals the file used."""
    admitted = set() if admitted is None else admitted

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            key = _normalize(module, name)
            if key not in ADMITTED_GLOBALS:
                shown = ".".join(key) + ("" if key == (module, name) else f" (pickled as {module}.{name})")
                raise UnsafePickleError(
                    f"refused to unpickle the global {shown}: a DALL-E encoder pickle may only reference "
                    f"{', '.join(sorted('.'.join(k) for k in ADMITTED_GLOBALS))}. Nothing from the file was executed."
                )
            admitted.add(".".join(key))
            return ADMITTED_GLOBALS[key]

    def load(file, **kwargs):
        return RestrictedUnpickler(file, **kwargs).load()

    module = types.ModuleType("hf_mim_restricted_pickle")
    module.Unpickler, module.load, module.UnpicklingError = RestrictedUnpickler, load, pickle.UnpicklingError
    return module


def load_pickled_encoder(path) -> tuple[object, list[str]]:
    """`torch.load` a whole-module `torch.save` through the restricted unpickler -> (stand-in tree, globals used)."""
    path = check_checkpoint_path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.rsplit("/", 1)[-1] == "constants.pkl" or "/code/" in n for n in names):
            raise UnsafePickleError(f"{path} is a TorchScript archive (torch.load would run torch.jit.load); refused.")
        if sum(n.endswith("data.pkl") for n in names) != 1:
            raise ValueError(f"{path} is a zip file but not a torch.save archive (no single data.pkl).")
    elif tarfile.is_tarfile(path):
        raise ValueError(f"{path} is a tar archive (torch < 0.4 format), which this converter does not read.")
    admitted = set()
    try:
        root = torch.load(
            path, map_location="cpu", pickle_module=restricted_pickle_module(admitted), weights_only=False
        )
    except UnsafePickleError:
        raise
    except Exception as error:  # truncated file, not a pickle, TORCH_FORCE_WEIGHTS_ONLY_LOAD set...
        raise ValueError(f"Could not read {path} with the restricted unpickler: {error}") from error
    return root, sorted(admitted)


# ----------------------------------------------------------------------------------------- original -> state dict
def stand_in_modules(root) -> tuple[dict[str, _StandIn], dict[str, torch.Tensor]]:
    """Walk the recorded module tree: (module name -> stand-in, parameter/buffer name -> tensor), torch's naming."""
    if not isinstance(root, OriginalEncoder):
        raise CheckpointMismatchError(
            f"The pickle holds a {getattr(root, 'original', type(root).__name__)}, not a dall_e.encoder.Encoder."
        )
    modules, tensors = {}, {}

    def visit(name: str, node) -> None:
        if not isinstance(node, _StandIn):
            raise CheckpointMismatchError(f"Submodule {name!r} is a {type(node).__name__}, not a module.")
        modules[name] = node
        prefix = f"{name}." if name else ""
        for kind in ("_parameters", "_buffers"):
            for key, value in (node.attributes.get(kind) or {}).items():
                if value is None:
                    continue
                if not isinstance(value, torch.Tensor):
                    raise CheckpointMismatchError(f"{prefix}{key} is a {type(value).__name__}, not a tensor.")
                tensors[prefix + key] = value
        for key, child in (node.attributes.get("_modules") or {}).items():
            if child is not None:
                visit(prefix + key, child)

    visit("", root)
    return modules, tensors


def plain_state_dict(checkpoint) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A state dict (or an mmengine-style `{"state_dict": ..., "meta": ...}`) -> (tensors without DDP `module.`
    prefixes, ignored top-level keys)."""
    ignored = []
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        ignored = sorted(k for k in checkpoint if k != "state_dict")
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointMismatchError(
            f"Expected a state dict of tensors (or {{'state_dict': ...}}), got {type(checkpoint).__name__}."
        )
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}, ignored


def read_checkpoint(checkpoint_path) -> tuple[dict[str, torch.Tensor], dict[str, _StandIn] | None, dict]:
    """(original-named tensors, stand-in modules or None, report entries): a weights-only state dict if the file is
    one, else OpenAI's pickled module through the restricted unpickler."""
    try:
        checkpoint = load_original_checkpoint(checkpoint_path)
    except ValueError as weights_only_error:
        first_error = str(weights_only_error).strip().splitlines()[0]
    else:
        state, ignored = plain_state_dict(checkpoint)
        return state, None, {"source": "state dict (weights_only=True)", "ignored": ignored}
    try:
        root, admitted = load_pickled_encoder(checkpoint_path)
    except UnsafePickleError as error:
        raise UnsafePickleError(f"{checkpoint_path}: {error}") from None
    except ValueError as error:
        raise ValueError(
            f"{checkpoint_path} is neither a weights-only state dict ({first_error}) nor a readable pickled DALL-E "
            f"encoder ({error})."
        ) from None
    modules, tensors = stand_in_modules(root)
    report = {"source": "pickled dall_e.encoder.Encoder (restricted unpickler)", "admitted_globals": admitted}
    return tensors, modules, report


def infer_config(state: dict[str, torch.Tensor], image_size: int) -> DalleTokenizerConfig:
    for key in ("blocks.input.w", "blocks.output.conv.w"):
        if key not in state:
            raise CheckpointMismatchError(f"Missing key {key!r}: is this a DALL-E dVAE encoder?")
    groups = {int(m.group(1)) for k in state if (m := re.match(r"^blocks\.group_(\d+)\.", k))}
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"^blocks\.group_1\.block_(\d+)\.", k))}
    if not groups or not blocks:
        raise CheckpointMismatchError("No blocks.group_N.block_M.* keys found: is this a DALL-E dVAE encoder?")
    weight = state["blocks.input.w"]
    if weight.dim() != 4 or state["blocks.output.conv.w"].dim() != 4:
        raise CheckpointMismatchError("blocks.input.w and blocks.output.conv.w must be 4-D conv weights.")
    return DalleTokenizerConfig(
        group_count=max(groups),
        hidden_size=weight.shape[0],
        num_blocks_per_group=max(blocks),
        num_channels=weight.shape[1],
        vocab_size=state["blocks.output.conv.w"].shape[0],
        image_size=image_size,
    )


def rename(key: str) -> str | None:
    """`blocks.<module path>.w|b` -> `blocks.<module path>.weight|bias`; anything else is unexpected."""
    match = re.fullmatch(r"(blocks\.[\w.]+)\.(w|b)", key)
    if match is None:
        return None
    return match.group(1) + (".weight" if match.group(2) == "w" else ".bias")


def original_name(key: str) -> str:
    """The inverse of `rename` (missing keys are reported as the original file would name them)."""
    return re.sub(r"\.weight$", ".w", re.sub(r"\.bias$", ".b", key))


_STAND_IN_FOR = (
    (DalleTokenizer, OriginalEncoder),
    (DalleEncoderBlock, OriginalEncoderBlock),
    (nn.Conv2d, OriginalConv2d),
    (nn.Sequential, OriginalSequential),
    (nn.ReLU, OriginalReLU),
    (nn.MaxPool2d, OriginalMaxPool2d),
    (nn.Identity, OriginalIdentity),
)


_MAX_POOL = {"kernel_size": 2, "stride": 2, "padding": 0, "dilation": 1, "return_indices": False, "ceil_mode": False}
_MAX_POOL_ALLOWED = {
    "kernel_size": (2, (2, 2)),
    "stride": (None, 2, (2, 2)),
    "padding": (0, (0, 0)),
    "dilation": (1, (1, 1)),
    "return_indices": (False,),
    "ceil_mode": (False,),
}


def check_module_tree(checkpoint_path, modules: dict[str, _StandIn], model: DalleTokenizer) -> None:
    """The pickled module tree must be the converted model's: same names, types and hyper-parameters."""
    expected = dict(model.named_modules())
    raise_on_mismatch(
        checkpoint_path,
        sorted(set(expected) - set(modules)),
        sorted(set(modules) - set(expected)),
        hint="(modules of the pickled Encoder)",
    )
    config, problems = model.config, []
    for name, module in expected.items():
        stand_in = modules[name]
        wanted = next(s for t, s in _STAND_IN_FOR if isinstance(module, t))
        if type(stand_in) is not wanted:
            problems.append(f"{name or '<root>'} is a {stand_in.original}, expected {wanted.original}")
            continue
        attrs = stand_in.attributes
        if isinstance(module, nn.Conv2d) and attrs.get("kw", module.kernel_size[0]) != module.kernel_size[0]:
            problems.append(
                f"{name}: kw={attrs['kw']} but the weight is {module.kernel_size[0]}x{module.kernel_size[0]}"
            )
        if isinstance(module, nn.MaxPool2d):
            settings = {k: attrs.get(k, v) for k, v in _MAX_POOL.items()}
            if any(settings[k] not in allowed for k, allowed in _MAX_POOL_ALLOWED.items()):
                problems.append(f"{name}: MaxPool2d({settings}), expected kernel_size=2, stride 2, no padding")
        if (
            isinstance(module, DalleEncoderBlock)
            and abs(attrs.get("post_gain", module.post_gain) - module.post_gain) > 1e-12
        ):
            problems.append(f"{name}: post_gain={attrs['post_gain']}, expected 1/{config.num_layers}**2")
    recorded = modules[""].attributes
    for attribute, value in (
        ("n_hid", config.hidden_size),
        ("n_blk_per_group", config.num_blocks_per_group),
        ("input_channels", config.num_channels),
        ("vocab_size", config.vocab_size),
        ("group_count", config.group_count),
    ):
        if attribute in recorded and recorded[attribute] != value:
            problems.append(f"Encoder.{attribute}={recorded[attribute]!r} but the weights say {value}")
    if problems:
        raise CheckpointMismatchError(f"{checkpoint_path}: the pickled Encoder differs: " + "; ".join(problems))


def convert_checkpoint(state, checkpoint_path="<checkpoint>", image_size: int = 112, modules=None):
    """Original-named tensors -> (DalleTokenizer with the converted weights, report)."""
    config = infer_config(state, image_size)
    mapping, _, unexpected = account_for_keys(state, rename, ignored=lambda key: False)
    origin = {new: old for old, new in mapping.items()}
    check_against_reference(checkpoint_path, {new: state[old] for new, old in origin.items()}, DalleTokenizer, config,
                            origin, unexpected, "Keys of a DALL-E dVAE encoder (blocks.*.w / .b).",
                            missing_name=original_name)  # fmt: skip
    model = DalleTokenizer(config).eval()
    if modules is not None:
        check_module_tree(checkpoint_path, modules, model)
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values()})
    kept, upcast = checked_weights({key: state[key] for key in mapping}, checkpoint_path)
    converted = {new: kept[key].detach().to(torch.float32).contiguous().clone() for key, new in mapping.items()}
    model.load_state_dict(converted, strict=True)
    report = {
        "converted": len(converted),
        "original_dtypes": dtypes,
        "group_count": config.group_count,
        "hidden_size": config.hidden_size,
        "num_blocks_per_group": config.num_blocks_per_group,
        "num_channels": config.num_channels,
        "vocab_size": config.vocab_size,
    }
    if upcast:
        report["upcast"] = describe_upcast(upcast)
    return model, report


def conversion_checks(report: dict) -> list[str]:
    """What converting this file measured, in the card's words."""
    source = report.get("source", "")
    checks = [
        f"Source: {source}." if source else "",
        f"Every key converted ({report['converted']} tensors, original dtypes "
        f"{', '.join(report['original_dtypes'])}, saved in float32); sizes read off the tensors.",
    ]
    if source.startswith("pickled"):
        checks.append(
            "The pickled module's names and types, kernel sizes, max-pool settings, block `post_gain`s and recorded "
            "hyper-parameters agree with the converted model."
        )
    return [check for check in checks if check]


def model_card(model_name: str, config: DalleTokenizerConfig, release: Release | None = None,
               report: dict | None = None, repo_id=None, remote_code: bool = True, source_file: str | None = None):  # fmt: skip
    """The folder's `huggingface_hub.ModelCard` (layout: hf_mim.hub.model_cards)."""
    grid = config.image_size // config.downsampling
    summary = (
        "The encoder of OpenAI's DALL-E discrete VAE, converted with hf_mim. It is the frozen tokenizer of CAE v1 and "
        f"BEiT: a {config.image_size} x {config.image_size} image maps to a {grid} x {grid} grid of ids from a "
        f"{config.vocab_size}-entry codebook."
    )
    notes = [
        "The inputs must be logit-Laplace mapped (`map_pixels`: 0.8 x + 0.1). The original runs its convolutions in "
        "float16 on CUDA; this port computes in float32, so a small fraction of ids can differ from the original's "
        "GPU ids."
    ]
    return conversion_card(
        "dalle_tokenizer",
        config=config,
        model_name=model_name,
        repo_id=repo_id,
        release=release,
        source_file=source_file,
        summary=summary,
        checks=conversion_checks(report) if report is not None else (),
        notes=notes,
        remote_code=remote_code,
        identification=report.get("release") if report is not None else None,
    )


def convert(checkpoint_path, output_dir, image_size=112, model_name=None, push_to_hub=None, remote_code=True,
            repo_id=None, release: Release | None = None) -> dict:  # fmt: skip
    """Convert one file into `output_dir`. `release` (a `hf_mim.hub.releases.Release`) overrides the identification
    from the file / model name; `remote_code` also writes the code bundle; `repo_id` is the Hub id the card's
    snippets use."""
    checkpoint_path = Path(checkpoint_path)
    check_output_dir(output_dir)  # before the work: a path that cannot become a folder fails now
    stem = checkpoint_path.name.rsplit(".", 1)[0]
    if release is None:
        release = release_for_file(checkpoint_path) or release_named(model_name)
        release = release if release is not None and release.method == "dalle_tokenizer" else None
    model_name = model_name or (release.name if release is not None else stem.lower().replace("_", "-"))
    state, modules, report = read_checkpoint(checkpoint_path)
    model, conversion_report = convert_checkpoint(state, checkpoint_path, image_size, modules)
    report.update(conversion_report)
    config = model.config
    images = torch.rand(
        1, config.num_channels, config.image_size, config.image_size, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        logits = model(map_pixels(images))
    if not torch.isfinite(logits).all():
        raise RuntimeError("The converted tokenizer produces non-finite logits.")
    release, report["release"] = credited_release(release, config)
    report.update(logits_shape=list(logits.shape), model_name=model_name)
    card = model_card(model_name, config, release, report, repo_id or push_to_hub, remote_code, checkpoint_path.name)
    return finish_conversion(report, output_dir, model, None, card, remote_code, push_to_hub)


def convert_release(checkpoint_path, output_dir, release: Release, repo_id=None, remote_code=True) -> dict:
    """`convert` for a release of the table (scripts/convert/publish_releases.py)."""
    return convert(checkpoint_path, output_dir, image_size=release.architecture.get("image_size", 112),
                   model_name=release.name, remote_code=remote_code, repo_id=repo_id, release=release)  # fmt: skip


def main(argv=None) -> int:
    """The command line of `scripts/convert/convert_dalle_tokenizer_to_hf.py`: the report on stdout and exit status 0,
    or one `error: ...` line on stderr and 2 (`run_converter`)."""
    parser = ConverterArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint_path", required=True, help="encoder.pkl (OpenAI) or dalle_encoder.pth (state dict)"
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--image_size", type=int, default=112, help="Resolution stored in the config (CAE v1: 112)")
    parser.add_argument("--model_name", default=None)
    parser.add_argument("--push_to_hub", default=None, metavar="REPO_ID")
    add_remote_code_flag(parser)
    args = parser.parse_args(argv)
    return run_converter(
        convert,
        args.checkpoint_path,
        args.output_dir,
        args.image_size,
        args.model_name,
        args.push_to_hub,
        not args.no_remote_code,
    )
