"""Machinery shared by the checkpoint converters in `scripts/convert/` (and the pretraining scripts' exports): safe
loading, strict key accounting, image processors at the training resolution, model cards and Hub upload."""

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch


class CheckpointMismatchError(ValueError):
    """The checkpoint does not have the keys the converter expects; the message lists them."""


def load_original_checkpoint(path: str | Path) -> dict:
    """`torch.load(..., weights_only=True)`, allowing only `argparse.Namespace` (stored by some training saves)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
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


# The released evaluation protocols resize the shorter side to 256 and center-crop 224.
EVAL_RESIZE, EVAL_CROP = 256, 224


def image_processor_at(processor_class: type, image_size: int, **kwargs):
    """`processor_class` for a model trained at `image_size` px: center crop `image_size` x `image_size` after
    resizing the shorter side to `round(image_size * 256 / 224)` (the releases' 256 / 224 evaluation ratio).

    Every folder a pretraining run or a converter writes gets its processor from here, so its crop size is the
    resolution the model was trained at (e.g. 56 px -> shortest_edge 64, crop 56; 224 -> 256, 224)."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}.")
    size = {"shortest_edge": round(image_size * EVAL_RESIZE / EVAL_CROP)}
    crop_size = {"height": image_size, "width": image_size}
    return processor_class(**{"size": size, "crop_size": crop_size, **kwargs})


def write_model_card(output_dir: str | Path, front_matter: dict, body: str) -> None:
    """README.md with YAML front matter (JSON is valid YAML, so no yaml dependency is needed)."""
    lines = ["---"]
    for key, value in front_matter.items():
        lines.append(f"{key}: {json.dumps(value)}")
    lines += ["---", "", body.strip(), ""]
    Path(output_dir, "README.md").write_text("\n".join(lines))


def push_folder_to_hub(output_dir: str | Path, repo_id: str, commit_message: str) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    info = api.upload_folder(folder_path=str(output_dir), repo_id=repo_id, commit_message=commit_message)
    return str(info)


def run_converter(convert, *args) -> int:
    """Run a converter's `convert(*args)` for a command line: print its report, or the error and return 2."""
    import sys

    try:
        report = convert(*args)
    except (CheckpointMismatchError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for key, value in report.items():
        print(f"{key}: {value}")
    return 0
