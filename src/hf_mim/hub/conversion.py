"""Machinery shared by the checkpoint converters (`hf_mim.models.<m>.convert_<m>`, whose command lines are
`scripts/convert/`; also the pretraining scripts' exports): safe loading, strict key accounting, the check against a
reference model built on the meta device, checked and up-cast weights, image processors at the training
resolution, writing the Hub folder (weights, processor, remote code, model card) all at once or not at all, Hub
upload, and the command line's contract: a report on success, else one `error: ...` line and exit status 2."""

import argparse
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from ..image_processing_utils import image_processor_at  # noqa: F401  (the converters' import)
from .push import HubPushError, pushing_to
from .releases import Release, architecture_mismatches


class CheckpointMismatchError(ValueError):
    """The checkpoint does not have the keys the converter expects; the message lists them."""


# Names a downloaded checkpoint may have; a directory given as the checkpoint is searched for them to say which file
# to pass (the converters read one file, and guessing among several could convert the wrong one).
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".pkl", ".bin", ".ckpt")


def check_checkpoint_path(path: str | Path) -> Path:
    """The checkpoint file to read: a missing path or a directory is an error that says which, naming the
    checkpoint files inside a directory."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(str(p) for p in path.iterdir() if p.is_file() and p.name.endswith(CHECKPOINT_SUFFIXES))
        advice = (
            f"pass the checkpoint file inside it: {', '.join(inside[:5])}{' ...' if len(inside) > 5 else ''}"
            if inside
            else f"it holds no checkpoint file ({', '.join(CHECKPOINT_SUFFIXES)})"
        )
        raise IsADirectoryError(f"--checkpoint_path {path} is a directory; {advice}.")
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    return path


def check_output_dir(output_dir: str | Path) -> Path:
    """Refuse, before any work, an output path that cannot become a folder: an existing file there, or a file where
    one of its parent folders would be."""
    output_dir = Path(output_dir)
    for path in (output_dir, *output_dir.parents):
        if path.exists():
            if not path.is_dir():
                where = "is an existing file" if path == output_dir else f"lies under {path}, which is a file"
                raise NotADirectoryError(f"--output_dir {output_dir} {where}, not a directory.")
            break
    return output_dir


def load_original_checkpoint(path: str | Path) -> dict:
    """`torch.load(..., weights_only=True)`, allowing only `argparse.Namespace` (stored by some training saves)."""
    path = check_checkpoint_path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickle with code, not a torch file...
        raise ValueError(f"Could not read {path} as a PyTorch checkpoint (weights_only=True): {error}") from error


def account_for_keys(
    original_keys: Iterable[str], rename: Callable[[str], str | None], ignored: Callable[[str], bool]
) -> tuple[dict[str, str], list[str], list[str]]:
    """Map every original key: renamed, explicitly ignored, or unexpected. Returns (mapping, ignored, unexpected)."""
    mapping, dropped, unexpected = {}, [], []
    for key in original_keys:
        if ignored(key):
            dropped.append(key)
            continue
        new_key = rename(key)
        if new_key is None:
            unexpected.append(key)
        else:
            mapping[key] = new_key
    return mapping, dropped, unexpected


def raise_on_mismatch(checkpoint_path, missing: list[str], unexpected: list[str], hint: str = "") -> None:
    if not missing and not unexpected:
        return
    lines = [f"Checkpoint {checkpoint_path} does not match the expected layout.{(' ' + hint) if hint else ''}"]
    if missing:
        lines.append(
            f"Missing keys ({len(missing)}): "
            + ", ".join(sorted(missing)[:40])
            + (" ..." if len(missing) > 40 else "")
        )
    if unexpected:
        lines.append(
            f"Unexpected keys ({len(unexpected)}): "
            + ", ".join(sorted(unexpected)[:40])
            + (" ..." if len(unexpected) > 40 else "")
        )
    raise CheckpointMismatchError("\n".join(lines))


def reference_shapes(model_class: type, config) -> dict[str, torch.Size]:
    """The state-dict keys and shapes of `model_class(config)`, built on the meta device: nothing is allocated or
    initialised, so checking a ViT-g's keys costs what a tiny model's does."""
    with torch.device("meta"):
        return {key: tensor.shape for key, tensor in model_class(config).state_dict().items()}


def check_against_reference(
    checkpoint_path,
    tensors: Mapping[str, torch.Tensor],
    model_class: type,
    config,
    origin: Mapping[str, str] | None = None,
    unexpected: Iterable[str] = (),
    hint: str = "",
    missing_name: Callable[[str], str] = str,
) -> None:
    """Every converter's last check before it builds the model: the converted `tensors` (hf_mim names) must be the
    state dict of `model_class(config)` (`reference_shapes`) - no key missing, none left over, every shape equal.

    A failure raises `CheckpointMismatchError` naming the keys as the file has them, so that the user can find them:
    `origin` maps an hf_mim name to the file's key (default: the same name), `missing_name` spells a missing hf_mim
    key in the file's terms, `unexpected` are the file's keys the converter could not place at all; a wrong shape is
    named by the file's key, and by the part too where the converter split one tensor into several (a fused qkv).
    Keys are compared first (one error lists all of them), shapes only once the keys agree."""
    origin = origin or {}
    reference = reference_shapes(model_class, config)
    left_over = {origin.get(name, name) for name in tensors if name not in reference}
    missing = [missing_name(name) for name in reference if name not in tensors]
    raise_on_mismatch(checkpoint_path, missing, sorted({*unexpected, *left_over}), hint)
    split = {key for key, count in Counter(origin.values()).items() if count > 1}  # a fused qkv became q, k, v

    def named(name: str) -> str:
        key = origin.get(name, name)
        return f"{key} -> {name}" if key in split else key

    wrong = [
        f"{named(name)} {tuple(tensor.shape)} != {tuple(reference[name])}"
        for name, tensor in tensors.items()
        if tensor.shape != reference[name]
    ]
    if wrong:
        raise CheckpointMismatchError("Tensors with unexpected shapes: " + "; ".join(wrong[:20]))


def model_from_state(model_class: type, config, state: dict[str, torch.Tensor]):
    """`model_class(config)` in eval mode holding exactly the converted `state`: built on the meta device and given
    the tensors themselves (no random initialisation, no second copy in memory). A tensor the state does not provide
    - a buffer the model computes instead of storing - is an error that names it (such a model is built normally)."""
    with torch.device("meta"):
        model = model_class(config)
    model.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"Tensors not loaded from the checkpoint: {left[:10]}")
    return model.eval()


def credited_release(release: Release | None, config, name_field: str = "name") -> tuple[Release | None, str]:
    """The release a converted folder's card may credit (its facts and reported numbers), and the report's
    `release` line. A release that was named - by the file, the model name or the caller - but whose expected
    architecture (hf_mim.hub.releases) the converted `config` does not have is credited to nobody, and the line says
    what differs. `name_field`: the release's field the line names it by (`name`, or a converter's own `key`)."""
    if release is None:
        return None, "none identified"
    name = getattr(release, name_field)
    if mismatches := architecture_mismatches(release, config):
        return None, f"{name} named, but the weights are not its architecture ({'; '.join(mismatches)})"
    return release, name


# ------------------------------------------------------------------------------------------ weights
_LISTED = 8  # keys an error names before "... and N more": enough to see the pattern, short enough to read


def _tensors(count: int) -> str:
    return f"{count} tensor{'s' * (count != 1)}"


def _named(keys: list[str]) -> str:
    return ", ".join(keys[:_LISTED]) + (f" ... and {len(keys) - _LISTED} more" if len(keys) > _LISTED else "")


def _is_low_precision(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() and tensor.element_size() < 4  # float16, bfloat16 (and float8)


def half_precision_counts(tensors: Iterable[torch.Tensor]) -> Counter:
    """How many of `tensors` `checked_weights` up-casts, per dtype name (`float16`, `bfloat16`)."""
    return Counter(str(t.dtype).removeprefix("torch.") for t in tensors if _is_low_precision(t))


def checked_weights(
    tensors: dict[str, torch.Tensor],
    checkpoint_path="<checkpoint>",
    integer_keys: Callable[[str], bool] = lambda key: False,
) -> tuple[dict[str, torch.Tensor], Counter]:
    """The weights a converter keeps, made safe to convert: refused, naming the keys, if any is not floating-point -
    unless `integer_keys(key)` says it is integer by nature, like BatchNorm's `num_batches_tracked` - or holds NaN /
    inf; float16 / bfloat16 tensors are up-cast to float32 (exactly), so every later check and the saved model run in
    float32. Returns (tensors, count of up-cast tensors per original dtype name)."""
    not_tensors = [f"{key} ({type(t).__name__})" for key, t in tensors.items() if not isinstance(t, torch.Tensor)]
    if not_tensors:
        raise CheckpointMismatchError(f"{checkpoint_path}: entries that are not tensors: {_named(not_tensors)}.")
    not_float = [f"{key} ({str(t.dtype).removeprefix('torch.')})" for key, t in tensors.items()
                 if not t.is_floating_point() and not integer_keys(key)]  # fmt: skip
    if not_float:
        raise CheckpointMismatchError(
            f"{checkpoint_path}: {_tensors(len(not_float))} not floating-point where weights are expected: "
            f"{_named(not_float)}."
        )
    non_finite = []
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():  # counted only when there are some
            nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
            non_finite.append(f"{key} ({nan} NaN, {inf} inf)")
    if non_finite:
        raise CheckpointMismatchError(
            f"{checkpoint_path}: NaN or inf in {_tensors(len(non_finite))} (a diverged or damaged checkpoint): "
            f"{_named(non_finite)}."
        )
    upcast = half_precision_counts(tensors.values())
    return {key: t.float() if _is_low_precision(t) else t for key, t in tensors.items()}, upcast


def describe_upcast(counts: Counter) -> str | None:
    """The report line of `checked_weights`' up-cast (None if nothing was): `40 float16 tensors to float32`."""
    if not counts:
        return None
    return " and ".join(f"{n} {dtype} tensor{'s' * (n != 1)}" for dtype, n in sorted(counts.items())) + " to float32"


def upcast_check(report: dict) -> list[str]:
    """The model card's line on an up-cast file (none for a float32 one)."""
    if "upcast" not in report:
        return []
    return [f"Half-precision weights in the original, up-cast: {report['upcast']} (exact: no rounding added)."]


@contextmanager
def staged_folder(output_dir: str | Path) -> Iterator[Path]:
    """An empty scratch folder beside `output_dir` to write into; when the block succeeds its files move into
    `output_dir` (created if needed; in an existing folder, files of the same names are replaced and the others
    kept), when anything fails - or is interrupted - it is removed. A failed conversion therefore leaves neither a
    partial folder nor a changed one."""
    output_dir = check_output_dir(output_dir)
    # the nearest existing folder: the scratch folder is on the same file system, so the final move is a rename
    anchor = next(p for p in output_dir.parents if p.is_dir())
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=anchor))
    try:
        yield staging
        if not output_dir.exists():
            output_dir.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, output_dir)  # the folder appears complete, in one step
            return
        for entry in staging.iterdir():
            target = output_dir / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_converted_folder(output_dir: str | Path, model, image_processor, card, remote_code: bool = True,
                           push_to_hub: str | None = None, commit_message: str = "") -> dict:  # fmt: skip
    """A converter's last step: `save_converted_folder` into a staged folder, upload it to `push_to_hub` if given,
    then move it into `output_dir` - all or nothing (`staged_folder`), except that a failed upload still leaves the
    complete folder in `output_dir` before its `HubPushError` is raised (the conversion itself succeeded). Returns the
    report entries (`remote_code_files`, and `hub` after an upload)."""
    failed_push = None
    with staged_folder(output_dir) as staging:
        report = {"remote_code_files": save_converted_folder(staging, model, image_processor, card, remote_code)}
        if push_to_hub:
            try:
                report["hub"] = push_folder_to_hub(staging, push_to_hub, commit_message)
            except HubPushError as error:
                failed_push = error
    if failed_push is not None:
        raise failed_push
    return report


def finish_conversion(report: dict, output_dir: str | Path, model, image_processor, card, remote_code: bool = True,
                      push_to_hub: str | None = None) -> dict:  # fmt: skip
    """Every converter's end: its `report` (which names the `model_name`) gains `output_dir`, then the folder is
    written all at once and uploaded to `push_to_hub` if given (`write_converted_folder`, the commit naming the
    model). Returns the completed report - what the command line prints."""
    report["output_dir"] = str(output_dir)
    report.update(write_converted_folder(output_dir, model, image_processor, card, remote_code, push_to_hub,
                                         f"Upload {report['model_name']} converted with hf_mim"))  # fmt: skip
    return report


def save_converted_folder(output_dir: str | Path, model, image_processor, card, remote_code: bool = True) -> list[str]:
    """Write a converted model's Hub folder: weights and config, the image processor (if any), the remote-code bundle
    with `auto_map` (`remote_code=True`: the folder then loads in plain transformers with `trust_remote_code=True`)
    and the model card (a `huggingface_hub.ModelCard`, see hf_mim.hub.model_cards) as README.md. Returns the names of
    the remote-code files written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, remote_code=False)
    if image_processor is not None:
        image_processor.save_pretrained(output_dir)
    files = []
    if remote_code:  # after the processor, so preprocessor_config.json gets its auto_map too
        from .remote_code import export_remote_code

        files = export_remote_code(output_dir)
    card.save(output_dir / "README.md")
    return files


class ConverterArgumentParser(argparse.ArgumentParser):
    """argparse's parser with the converters' form of failure: the usage, then one `error: ...` line (argparse
    writes `<prog>: error: ...`), exit status 2."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")


def add_remote_code_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no_remote_code",
        action="store_true",
        help="Do not write the remote-code bundle (by default the folder also loads without hf_mim, with "
        "trust_remote_code=True)",
    )


def push_folder_to_hub(output_dir: str | Path, repo_id: str, commit_message: str) -> str:
    """Create `repo_id` if needed and upload the folder; a Hub or network failure is a `HubPushError` (one line)."""
    from huggingface_hub import HfApi

    with pushing_to(repo_id):
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        info = api.upload_folder(folder_path=str(output_dir), repo_id=repo_id, commit_message=commit_message)
    return str(info)


# Failures whose message says all (bad files, bad arguments, unwritable paths); any other kind is named in the line.
_SELF_EXPLAINING = (ValueError, OSError, HubPushError)


def error_line(error: BaseException) -> str:
    """One line for the command line: multi-line messages (key lists) joined with ` | `."""
    text = " | ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if not isinstance(error, _SELF_EXPLAINING) or not text:
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return f"error: {text}"


def run_converter(convert, *args) -> int:
    """Run a converter's `convert(*args)` for a command line: print its report, or one `error: ...` line on stderr
    and return 2. Every failure ends this way - a bad file, a bad argument, a failed write or upload: the converters
    write their folder last and all at once (`write_converted_folder`), so a failure leaves nothing behind, except a
    failed upload (`error: pushing to <repo> failed: <cause>`), which leaves the complete folder."""
    try:
        report = convert(*args)
    except Exception as error:  # the command line's contract: any failure is one error line and exit status 2
        print(error_line(error), file=sys.stderr)
        return 2
    for key, value in report.items():
        print(f"{key}: {value}")
    return 0
