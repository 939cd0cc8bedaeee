"""Nothing lost in a long run (issue 23): runs stopped anywhere resume exactly, no checkpoint on disk is ever
incomplete or non-finite, unreadable images never stop training, finished runs are not overwritten by accident.

Every test here failed on main before the fixes it covers (the closing note of issue 23 lists before -> after)."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from hf_mim.trainers import NonFiniteLossError
from hf_mim.trainers.run_pretraining import run

from .helpers import REPO, load_script

STAGING_DIR = ".incomplete"  # where checkpoints are written before they are renamed into place
PRESETS = {"capi": "capi-tiny", "ijepa": "ijepa-tiny", "cae": "cae-tiny", "vicregl": "vicregl-tiny"}
RECIPE_NAMES = {"capi": "CAPI", "ijepa": "IJEPA", "cae": "CAE", "vicregl": "VICREGL"}


def recipe(method: str):
    return getattr(load_script(f"examples/pytorch/pretraining/run_{method}.py"), RECIPE_NAMES[method])


def image_folder(root: Path, count: int = 10, corrupt: int = 0) -> Path:
    """`count` small noise images (40 x 48, so every crop resizes) and `corrupt` files that are not images."""
    folder = root / "images" / "class_a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        PIL.Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    for i in range(corrupt):
        (folder / f"broken_{i}.png").write_bytes(b"not an image at all" * 10)
    return root / "images"


def arguments(method: str, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--train_dir", str(data), "--config_name", PRESETS[method], "--output_dir", str(output),
        "--per_device_train_batch_size", "2", "--learning_report", "False", "--report_to", "none",
        "--logging_steps", "1", "--seed", "1", "--use_cpu", "True", "--disable_tqdm", "True", *extra,
    ]  # fmt: skip


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def non_finite_tensors(folder: Path) -> list[str]:
    return [name for name, tensor in weights(folder).items() if not torch.isfinite(tensor).all()]


# ---------------------------------------------------------------- 1. exact resume from any optimizer step
@pytest.mark.parametrize("workers", ["0", "1"])
@pytest.mark.parametrize("method", ["capi", "ijepa", "cae", "vicregl"])
def test_mid_epoch_resume_is_bit_exact(tmp_path, method, workers):
    """10 images, batch 2: 5 steps an epoch. Stopped after checkpoint-3 (mid-epoch) and resumed, the run reaches
    step 7 (across the epoch boundary) with every tensor equal to the uninterrupted run's. Before: 0/76 (CAPI),
    3/114 (I-JEPA), 2/128 (CAE), 0/68 (VICRegL) tensors equal."""
    data = image_folder(tmp_path)
    common = ["--max_steps", "7", "--save_steps", "3", "--dataloader_num_workers", workers]
    assert run(recipe(method), arguments(method, data, tmp_path / "full", *common)) == 0
    partial = tmp_path / "partial"
    partial.mkdir()
    os.rename(tmp_path / "full" / "checkpoint-3", partial / "checkpoint-3")  # the run killed after step 3's save
    assert run(recipe(method), arguments(method, data, partial, *common)) == 0
    expected, resumed = weights(tmp_path / "full"), weights(partial)
    assert expected.keys() == resumed.keys()
    differing = [name for name in expected if not torch.equal(expected[name], resumed[name])]
    assert not differing, f"{len(differing)}/{len(expected)} tensors differ, e.g. {differing[:3]}"


def test_mid_epoch_resume_with_gradient_accumulation(tmp_path):
    """Accumulation 2 over 5 micro-batches an epoch (3 optimizer steps): checkpoint-2 is mid-epoch."""
    data = image_folder(tmp_path)
    common = ["--max_steps", "5", "--save_steps", "2", "--gradient_accumulation_steps", "2"]
    assert run(recipe("capi"), arguments("capi", data, tmp_path / "full", *common)) == 0
    partial = tmp_path / "partial"
    partial.mkdir()
    os.rename(tmp_path / "full" / "checkpoint-2", partial / "checkpoint-2")
    assert run(recipe("capi"), arguments("capi", data, partial, *common)) == 0
    expected, resumed = weights(tmp_path / "full"), weights(partial)
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)


def test_global_rng_option_keeps_the_originals_draw_order(tmp_path):
    """--augmentation_rng global draws from the running global RNG (the originals' order): two epochs of the same
    image get different crops either way, but only "position" makes a crop a function of (seed, epoch, index)."""
    from hf_mim.data import SafeImageTransform, pretraining_transform
    from hf_mim.data.positional import PositionalDataset

    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(4)]
    transform = SafeImageTransform(pretraining_transform(32, (0.2, 1.0)))

    class Images:
        def __len__(self):
            return len(images)

        def __getitem__(self, index):
            return {k: v[0] for k, v in transform({"image": [images[index]]}).items()}

    positional = PositionalDataset(Images(), seed=5)
    first = positional[2]["pixel_values"]
    torch.rand(100)  # the global RNG moves on; positional draws do not care
    assert torch.equal(positional[2]["pixel_values"], first)
    positional.set_epoch(1)
    assert not torch.equal(positional[2]["pixel_values"], first)  # a new epoch, new crops
    state = torch.get_rng_state()
    positional[3]
    assert torch.equal(torch.get_rng_state(), state)  # the model's RNG (drop path) is left alone
    in_order = PositionalDataset(Images(), seed=5, seeded=False)
    torch.manual_seed(0)
    a = in_order[2]["pixel_values"]
    torch.manual_seed(0)
    assert torch.equal(in_order[2]["pixel_values"], a)  # global: the RNG as it stands decides


# ---------------------------------------------------------------- 2. never write or name a non-finite checkpoint
class PoisonGradients(TrainerCallback):
    """From optimizer step `step` on, the first parameter's gradient is NaN while the loss stays finite."""

    def __init__(self, model, step: int):
        self.model, self.step, self.handle = model, step, None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step and self.handle is None:
            parameter = next(p for p in self.model.parameters() if p.requires_grad)
            self.handle = parameter.register_hook(lambda grad: grad * float("nan"))


def test_nan_gradient_with_finite_loss_stops_before_the_step(tmp_path):
    """Before: the NaN gradient of step 3 reached the weights, checkpoint-3 was written with NaN tensors and the
    run stopped at step 4 naming it as the last good one."""
    from .test_capi_pretraining import make_trainer, photo_dataset

    trainer = make_trainer(tmp_path, photo_dataset(), max_steps=8, save_steps=1)
    trainer.add_callback(PoisonGradients(trainer.model, step=3))
    with pytest.raises(NonFiniteLossError, match=r"gradient norm \(nan\) at step 3") as raised:
        trainer.train()
    assert str(tmp_path / "checkpoint-2") in str(raised.value)
    checkpoints = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]
    for name in checkpoints:
        assert non_finite_tensors(tmp_path / name) == []


def test_non_finite_weights_are_never_saved(tmp_path):
    """Weights broken without a NaN loss or gradient (e.g. an optimizer bug): the save refuses, naming them."""
    from .test_capi_pretraining import make_trainer, photo_dataset

    trainer = make_trainer(tmp_path, photo_dataset(), max_steps=2, save_steps=2)

    class BreakWeights(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    next(trainer.model.parameters()).fill_(float("inf"))

    trainer.add_callback(BreakWeights())
    with pytest.raises(NonFiniteLossError, match="Non-finite weights at step 2"):
        trainer.train()
    assert not list(tmp_path.glob("checkpoint-*"))


def test_last_good_checkpoint_is_verified_finite(tmp_path):
    """A checkpoint on disk with NaN weights (e.g. written by older code) is never named as the last good one."""
    from safetensors.torch import save_file

    from hf_mim.trainers.checkpoints import last_good_checkpoint

    for step, value in ((2, 1.0), (4, float("nan"))):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        save_file({"w": torch.full((3,), value)}, folder / "model.safetensors")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 10}))
    assert last_good_checkpoint(tmp_path) == tmp_path / "checkpoint-2"


def test_feature_health_skips_non_finite_features(tmp_path):
    """Before: logging effective rank of a NaN batch died in linalg.svd."""
    from hf_mim import CapiForPreTraining
    from hf_mim.trainers import CapiTrainer, CapiTrainingArguments

    from .test_capi_pretraining import tiny

    args = CapiTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    trainer = CapiTrainer(model=CapiForPreTraining(tiny()), args=args)
    trainer._last_pooled = torch.full((4, 8), float("nan"))
    trainer._parts, trainer._parts_count = {"clustering_loss": torch.tensor(1.0)}, 1
    logged = {}
    trainer.callback_handler.on_log = lambda args, state, control, logs: logged.update(logs)
    trainer.log({"loss": 1.0})
    assert "effective_rank" not in logged and logged["clustering_loss"] == 1.0


# ---------------------------------------------------------------- 3. atomic checkpoints, robust restart
CHILD = """
import os, runpy, signal, sys
from transformers import Trainer
step = int(os.environ.get("KILL_AT_STEP", "0"))
save = Trainer._save_optimizer_and_scheduler
def killing(self, output_dir):
    if self.state.global_step == step:
        os.kill(os.getpid(), signal.SIGKILL)  # the weights of this checkpoint are written, the rest is not
    return save(self, output_dir)
Trainer._save_optimizer_and_scheduler = killing
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_child(method: str, args: list[str], env_extra=None, shell_prefix: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    script = str(REPO / f"examples/pytorch/pretraining/run_{method}.py")
    command = [sys.executable, "-c", CHILD, script, *args]
    if shell_prefix:
        command = ["bash", "-c", shell_prefix + ' && exec "$@"', "bash", *command]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def test_kill_during_save_then_restart(tmp_path, caplog):
    """kill -9 while checkpoint-4 is being written. Before: checkpoint-4/ held weights without trainer_state.json
    and every restart failed (`Can't find a valid checkpoint`)."""
    data = image_folder(tmp_path)
    args = arguments("capi", data, tmp_path / "run", "--max_steps", "6", "--save_steps", "2")
    killed = run_child("capi", args, {"KILL_AT_STEP": "4"})
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]
    with caplog.at_level("INFO"):
        assert run(recipe("capi"), args) == 0
    assert "unfinished save" in caplog.text  # what the kill left is named and removed
    assert f"Resuming from {tmp_path / 'run' / 'checkpoint-2'}" in caplog.text
    assert json.loads((tmp_path / "run" / "trainer_state.json").read_text())["global_step"] == 6
    assert not (tmp_path / "run" / STAGING_DIR).exists()


def test_incomplete_checkpoint_is_skipped_with_a_warning(tmp_path, caplog):
    """A `checkpoint-N` cut short elsewhere (a copy, older code): skipped by name, the newest complete one used."""
    from safetensors.torch import save_file

    from hf_mim.trainers.checkpoints import latest_complete_checkpoint

    for step in (2, 4):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 10}))
        save_file({"w": torch.ones(1000)}, folder / "model.safetensors")
    (tmp_path / "checkpoint-6").mkdir()
    (tmp_path / "checkpoint-6" / "config.json").write_text("{}")
    truncated = tmp_path / "checkpoint-4" / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-1000])
    with caplog.at_level("WARNING"):
        assert latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert "checkpoint-6" in caplog.text and "trainer_state.json" in caplog.text
    assert "checkpoint-4" in caplog.text and "model.safetensors unreadable" in caplog.text


def test_write_failure_during_save_keeps_earlier_checkpoints(tmp_path):
    """A full disk (here `ulimit -f`: files over 1 MB fail with 'File too large') while writing checkpoint-4.
    Before: a traceback, a half-written checkpoint-4/ and every restart failing on it."""
    data = image_folder(tmp_path)
    assert run(recipe("capi"), arguments("capi", data, tmp_path / "run", "--max_steps", "2", "--save_steps", "2")) == 0
    longer = arguments("capi", data, tmp_path / "run", "--max_steps", "6", "--save_steps", "2")
    full_disk = run_child("capi", longer, shell_prefix="ulimit -f 1024")
    assert full_disk.returncode == 1, full_disk.stderr[-3000:]
    assert "error: Writing checkpoint-4 failed" in full_disk.stderr and "File too large" in full_disk.stderr
    assert "checkpoint-2" in full_disk.stderr.split("error: Writing checkpoint-4 failed")[1]
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (tmp_path / "run" / STAGING_DIR).exists()
    assert run(recipe("capi"), longer) == 0
    assert json.loads((tmp_path / "run" / "trainer_state.json").read_text())["global_step"] == 6


# ---------------------------------------------------------------- 4. a finished run is not overwritten by accident
def test_finished_run_is_not_reentered(tmp_path, capsys):
    """Before: the same command into a finished run trained 0 steps and rewrote its card ('Final training loss
    0.0000')."""
    data = image_folder(tmp_path)
    args = arguments("capi", data, tmp_path / "run", "--max_steps", "2", "--save_steps", "2")
    assert run(recipe("capi"), args) == 0
    card = (tmp_path / "run" / "backbone" / "README.md").read_text()
    capsys.readouterr()
    assert run(recipe("capi"), args) == 2
    message = capsys.readouterr().err
    assert "holds a finished run (2 of 2 steps, checkpoint-2)" in message
    assert "--max_steps larger than 2" in message and "--overwrite_output_dir" in message
    assert (tmp_path / "run" / "backbone" / "README.md").read_text() == card
    # a different batch size resuming an unfinished run is refused too
    (tmp_path / "run" / "checkpoint-2" / "trainer_state.json").write_text(
        json.dumps(
            {**json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text()), "max_steps": 9}
        )
    )
    other = arguments("capi", data, tmp_path / "run", "--max_steps", "9", "--per_device_train_batch_size", "3")
    assert run(recipe("capi"), other) == 2
    assert "per_device_train_batch_size 2 -> 3" in capsys.readouterr().err
    # the explicit flag starts afresh
    assert run(recipe("capi"), [*args, "--overwrite_output_dir", "True"]) == 0
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["log_history"][0]["step"] == 1  # trained again from step 1


def test_continuing_a_finished_run_with_more_steps_is_allowed(tmp_path):
    from hf_mim.trainers.checkpoints import RunFolderError, checkpoint_to_resume

    class Args:
        max_steps, overwrite_output_dir = 10, False

    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, folder / "model.safetensors")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 4, "max_steps": 4}))
    assert checkpoint_to_resume(tmp_path, Args()) == folder
    Args.max_steps = 4
    with pytest.raises(RunFolderError, match="finished run"):
        checkpoint_to_resume(tmp_path, Args())


# ---------------------------------------------------------------- 5. unreadable images never stop training
def test_batches_of_unreadable_images_are_refilled(tmp_path, capsys, caplog):
    """1 readable image and 5 unreadable ones, batch 2. Before: `Every image in this batch failed to decode` at the
    first all-bad batch. After: each bad batch is refilled, every file named once, the total printed at the end."""
    data = image_folder(tmp_path, count=1, corrupt=5)
    args = arguments("capi", data, tmp_path / "run", "--max_steps", "6", "--save_steps", "100")
    with caplog.at_level("WARNING"):
        assert run(recipe("capi"), args) == 0  # 6 steps: every file fails about twice
    out = capsys.readouterr().out
    assert "Skipped 5 unreadable image(s): " in out
    for i in range(5):
        assert out.count(f"broken_{i}.png: UnidentifiedImageError") == 1
        assert caplog.text.count(f"broken_{i}.png: UnidentifiedImageError") == 1  # warned once, not per epoch


def test_vicregl_last_batch_of_one_does_not_make_nan(tmp_path):
    """5 images, batch 2: the epoch's last batch holds one image. Before: var() of one sample made the loss NaN at
    step 3 and the run stopped; now the short batch is dropped (as the original's loader does)."""
    data = image_folder(tmp_path, count=5)
    assert run(recipe("vicregl"), arguments("vicregl", data, tmp_path / "run", "--max_steps", "5")) == 0
    history = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    assert all(math.isfinite(entry["loss"]) for entry in history if "loss" in entry)


def test_vicregl_refuses_a_batch_of_one(tmp_path):
    data = image_folder(tmp_path, count=4)
    args = arguments("vicregl", data, tmp_path / "run", "--max_steps", "2", "--per_device_train_batch_size", "1")
    with pytest.raises(ValueError, match="at least 2 images per batch"):
        run(recipe("vicregl"), args)


def test_fewer_images_than_one_batch_is_named(tmp_path):
    data = image_folder(tmp_path, count=3)
    args = arguments("capi", data, tmp_path / "run", "--max_steps", "2", "--per_device_train_batch_size", "4")
    with pytest.raises(ValueError, match="has 3 images, fewer than one batch"):
        run(recipe("capi"), args)
