"""VicreglTrainer end to end on tiny models: LARS (ResNet) and AdamW (ConvNeXt) runs through the real multi-crop data
path, bit-exact resume, the NaN guard keeping the last good checkpoint, undecodable images skipped, and
run_vicregl.py under 2-process DDP through `accelerate launch`."""

import json
import sys

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from hf_mim import VicreglConfig, VicreglForPreTraining, VicreglModel
from hf_mim.data import MultiCropCollator, MultiCropTransform, SafeImageTransform
from hf_mim.optim import LARS
from hf_mim.trainers import NonFiniteLossError, VicreglTrainer, VicreglTrainingArguments

from .distributed_launch import ENV, free_ports, start, wait
from .helpers import REPO, StopAfter


def photo_dataset(n=12, corrupt_paths=(), local=True):
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)) for _ in range(n)]
    dataset = datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image(decode=False))
    if corrupt_paths:
        extra = datasets.Dataset.from_dict({"image": [{"bytes": None, "path": str(p)} for p in corrupt_paths]},
                                           features=dataset.features)  # fmt: skip
        dataset = datasets.concatenate_datasets([dataset, extra])
    sizes, counts, mins, maxs = ((64, 32), (2, 2), (0.4, 0.1), (1.0, 0.4)) if local else ((64,), (2,), (0.1,), (1.0,))
    return dataset.with_transform(SafeImageTransform(MultiCropTransform(sizes, counts, mins, maxs)))


def make_trainer(output_dir, config=None, dataset=None, **overrides):
    config = config or VicreglConfig.tiny()
    torch.manual_seed(0)
    args = VicreglTrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=overrides.pop("max_steps", 6),
        save_steps=overrides.pop("save_steps", 100), save_strategy="steps", logging_steps=2,
        remove_unused_columns=False, report_to="none", use_cpu=True, dataloader_num_workers=0, seed=0, data_seed=0,
        disable_tqdm=True, **overrides,
    )  # fmt: skip
    dataset = dataset if dataset is not None else photo_dataset(local=config.backbone_type != "resnet")
    return VicreglTrainer(
        model=VicreglForPreTraining(config), args=args, train_dataset=dataset, data_collator=MultiCropCollator()
    )


@pytest.mark.parametrize("preset", ["tiny", "tiny_resnet"])
def test_training_runs_with_the_backbone_optimizer(preset, tmp_path):
    config = getattr(VicreglConfig, preset)()
    trainer = make_trainer(tmp_path, config, max_steps=4)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    assert isinstance(optimizer, LARS) == (preset == "tiny_resnet")
    logged = trainer.state.log_history[0]
    for key in ("global_loss", "global_variance_loss", "effective_rank", "feature_std"):
        assert key in logged, logged
    if preset == "tiny":  # the ResNet recipe has no small crops, but its two global crops still give a local loss
        assert "local_covariance_loss" in logged
    moved = [
        k for k, v in trainer.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])
    ]
    assert any(k.startswith("vicregl.") for k in moved) and any(k.startswith("projector.") for k in moved)


def test_resume_reproduces_uninterrupted_run(tmp_path):
    full = make_trainer(tmp_path / "full", max_steps=6)
    full.train()
    interrupted = make_trainer(tmp_path / "part", max_steps=6, save_steps=3)
    interrupted.add_callback(StopAfter(3))
    interrupted.train()
    assert interrupted.state.global_step == 3
    resumed = make_trainer(tmp_path / "part", max_steps=6, save_steps=3)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-3"))
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    for name in full_state:
        assert torch.equal(full_state[name], resumed_state[name]), name


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=8, save_steps=2)
    original_forward = trainer.model.forward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = original_forward(*args, **kwargs)
        if calls["n"] == 5:
            out.loss = out.loss * float("nan")
        return out

    trainer.model.forward = poisoned
    with pytest.raises(NonFiniteLossError, match="checkpoint-4"):
        trainer.train()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "checkpoint-4" / "model.safetensors").values())


def test_undecodable_images_are_skipped_and_counted(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    trainer = make_trainer(tmp_path / "out", dataset=photo_dataset(7, corrupt_paths=[bad]), max_steps=2)
    trainer.train()
    assert trainer.total_skipped_images() == 1 and "bad.jpg" in trainer.skipped_files[0]


def test_run_vicregl_under_accelerate_ddp(tmp_path):
    """The example script under 2-process DDP (CPU, gloo) with the ResNet preset: LARS, BatchNorm projectors."""
    output_dir = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO / "examples/pytorch/pretraining/accelerate_configs/cpu_ddp_2proc.yaml"),
        "--main_process_port", str(free_ports(1)[0]), str(REPO / "examples/pytorch/pretraining/run_vicregl.py"),
        "--config_name", "vicregl-tiny-resnet", "--output_dir", str(output_dir), "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--logging_steps", "1", "--disable_tqdm", "true", "--report_to", "none",
    ]  # fmt: skip
    log = wait("accelerate launch run_vicregl.py", start(command, {**ENV, "ACCELERATE_USE_CPU": "1"}))
    assert "vicregl pretraining; world size 2" in log, log[-6000:]
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == 2
    backbone = AutoModel.from_pretrained(output_dir / "backbone")
    assert isinstance(backbone, VicreglModel) and backbone.config.backbone_type == "resnet"
