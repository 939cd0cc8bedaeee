"""Checkpoint folders a restart can trust: complete, finite, and never confused with a half-written one.

`MimPretrainingTrainer` writes each `checkpoint-N` into `<output_dir>/.incomplete/` and renames it into place only
when every file is written (a rename within one file system is atomic), so a run killed during a save, or one whose
disk filled up, leaves no `checkpoint-N` that a restart would pick and fail on. Folders from elsewhere (older hf_mim,
a copy cut short) are checked for completeness before they are resumed from, and "last good checkpoint" in an error
message is one whose weights were read back and found finite.
"""

import json
import logging
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STAGING_DIR = ".incomplete"  # under output_dir; no `checkpoint-` prefix, so Trainer's folder scans never see it
TRAINER_STATE = "trainer_state.json"


def checkpoint_folders(output_dir) -> list[Path]:
    """`checkpoint-N` folders of `output_dir`, newest (largest N) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found, reverse=True)]


def _weight_files(folder: Path) -> list[Path] | None:
    """The safetensors files holding the model, None if the folder names none (or names a missing shard)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / shard for shard in shards]
        return files if all(f.is_file() for f in files) else None
    single = folder / "model.safetensors"
    return [single] if single.is_file() else None


def missing_parts(folder) -> list[str]:
    """What keeps `folder` from being a checkpoint training can resume from (empty: complete)."""
    folder = Path(folder)
    problems = []
    try:
        json.loads((folder / TRAINER_STATE).read_text())
    except (OSError, ValueError) as error:
        problems.append(f"{TRAINER_STATE} unreadable ({type(error).__name__})")
    if any(p.name.startswith("global_step") for p in folder.iterdir() if p.is_dir()):
        return problems  # DeepSpeed writes its own layout; its engine checks it when loading
    files = _weight_files(folder)
    if files is None:
        problems.append("no model weights (model.safetensors or a complete sharded index)")
    else:
        for path in files:
            try:
                with safe_open(str(path), framework="pt") as handle:
                    names = list(handle.keys())
                    if names:  # the header alone can be intact when the data was cut short: read the last tensor
                        handle.get_tensor(names[-1])
            except Exception as error:  # safetensors raises its own error type for a truncated file
                problems.append(f"{path.name} unreadable ({type(error).__name__}: {error})")
    return problems


def latest_complete_checkpoint(output_dir) -> Path | None:
    """The newest complete `checkpoint-N`; every newer, incomplete one is named in a warning and left on disk."""
    for folder in checkpoint_folders(output_dir):
        problems = missing_parts(folder)
        if not problems:
            return folder
        logger.warning("Skipping incomplete checkpoint %s: %s.", folder, "; ".join(problems))
    return None


def non_finite_tensors(folder) -> list[str]:
    """Names of the floating-point tensors in a checkpoint's weights that hold NaN or inf."""
    bad = []
    for path in _weight_files(Path(folder)) or []:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    bad.append(name)
    return bad


def last_good_checkpoint(output_dir) -> Path | None:
    """The newest checkpoint that is complete and whose weights were read back and found finite."""
    for folder in checkpoint_folders(output_dir):
        if missing_parts(folder):
            continue
        bad = non_finite_tensors(folder)
        if not bad:
            return folder
        logger.warning("%s holds non-finite weights (%s): not a good checkpoint.", folder, ", ".join(bad[:5]))
    return None


def non_finite_parameters(model: torch.nn.Module) -> list[str]:
    """Names of the model's floating-point parameters and buffers that hold NaN or inf (this process's part)."""
    named = [*model.named_parameters(), *model.named_buffers()]
    tensors = [(name, t) for name, t in named if t.is_floating_point() and t.numel()]
    if not tensors:
        return []
    finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in tensors]).cpu()
    return [name for (name, _), ok in zip(tensors, finite.tolist()) if not ok]


def clear_staging(output_dir) -> None:
    """Remove what a save that never finished left behind (it was never a checkpoint)."""
    staging = Path(output_dir) / STAGING_DIR
    if staging.is_dir():
        if any(staging.iterdir()):
            logger.warning("Removing %s: an unfinished save (it never became a checkpoint).", staging)
        shutil.rmtree(staging, ignore_errors=True)


RUN_SETTINGS = "run_settings.json"  # written into every checkpoint: what a resume must match to continue the run
# Settings that decide which images each optimizer step sees: a resume with other values is a different run.
MATCHED_SETTINGS = ("world_size", "per_device_train_batch_size", "gradient_accumulation_steps", "seed")


class RunFolderError(ValueError):
    """The output folder holds a run that starting this one would silently overwrite or continue wrongly."""


def run_settings(args) -> dict:
    return {
        "world_size": args.world_size,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "seed": args.data_seed if args.data_seed is not None else args.seed,
        "augmentation_rng": getattr(args, "augmentation_rng", None),
    }


def remove_checkpoints(output_dir) -> list[Path]:
    """Delete every `checkpoint-N` (and an unfinished save) of `output_dir`: an explicit fresh start."""
    removed = checkpoint_folders(output_dir)
    for folder in removed:
        shutil.rmtree(folder)
    clear_staging(output_dir)
    return removed


def checkpoint_to_resume(output_dir, args) -> Path | None:
    """The checkpoint a run started with `args` into `output_dir` resumes from, or None to start afresh.

    Refuses (RunFolderError) to re-enter a finished run with nothing left to train, or an unfinished one with other
    world size / batch / accumulation / seed (its resume would not continue the same run); `overwrite_output_dir`
    deletes the folder's checkpoints instead."""
    if getattr(args, "overwrite_output_dir", False):
        removed = remove_checkpoints(output_dir)
        if removed:
            logger.warning("--overwrite_output_dir: deleted %s", ", ".join(p.name for p in removed))
        return None
    clear_staging(output_dir)
    checkpoint = latest_complete_checkpoint(output_dir)
    if checkpoint is None:
        return None
    state = json.loads((checkpoint / TRAINER_STATE).read_text())
    done, total = int(state.get("global_step", 0)), int(state.get("max_steps", 0) or 0)
    how = "pass --overwrite_output_dir to delete its checkpoints and start afresh, or choose another --output_dir"
    if total and done >= total and (args.max_steps <= 0 or args.max_steps <= done):
        raise RunFolderError(
            f"{output_dir} holds a finished run ({done} of {total} steps, {checkpoint.name}): starting here would "
            f"train nothing and overwrite its model and card. To train it further, pass --max_steps larger than "
            f"{done} (it resumes from {checkpoint.name}); otherwise {how}."
        )
    saved_file = checkpoint / RUN_SETTINGS
    if saved_file.is_file():
        saved, current = json.loads(saved_file.read_text()), run_settings(args)
        differ = [f"{k} {saved[k]} -> {current[k]}" for k in MATCHED_SETTINGS if k in saved and saved[k] != current[k]]
        if differ:
            raise RunFolderError(
                f"{checkpoint} was written by a run with other settings ({', '.join(differ)}): resuming it would not "
                f"continue that run. Start with its settings to resume, or {how}."
            )
    return checkpoint
