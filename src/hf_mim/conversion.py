"""Machinery shared by the checkpoint converters in `scripts/convert/` (and the pretraining scripts' exports): safe
loading, strict key accounting, image processors at the training resolution, writing the Hub folder (weights,
processor, remote code, model card) and Hub upload."""

import argparse
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


def save_converted_folder(output_dir: str | Path, model, image_processor, card, remote_code: bool = True) -> list[str]:
    """Write a converted model's Hub folder: weights and config, the image processor (if any), the remote-code bundle
    with `auto_map` (`remote_code=True`: the folder then loads in plain transformers with `trust_remote_code=True`)
    and the model card (a `huggingface_hub.ModelCard`, see hf_mim.model_cards) as README.md. Returns the names of
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


def add_remote_code_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no_remote_code",
        action="store_true",
        help="Do not write the remote-code bundle (by default the folder also loads without hf_mim, with "
        "trust_remote_code=True)",
    )


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
