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
    if staging.exists():
        logger.warning("Removing %s: the unfinished save of an earlier run.", staging)
        shutil.rmtree(staging, ignore_errors=True)
