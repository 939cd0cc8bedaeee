"""Training parity with the original I-JEPA, step for step.

`tests/fixtures/trajectory_ijepa` was recorded by `scripts/trajectory/record_ijepa_trajectory.py` from the original
code (its init, `init_opt` groups and schedulers, momentum generator, MaskCollator and train step). Here the
converted initial weights train through hf_mim's own `IJepaTrainer` on the same batches and masks, and every
schedule value, every loss and the final weights must match. Tolerance: the original's own float32-vs-float64 drift
over the run (stored in the fixture, ~1e-6 relative) times a safety factor; the faults below move things by orders of
magnitude more.
"""

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from hf_mim import IJepaForPreTraining
from hf_mim.data import pretraining_transform
from hf_mim.masking import from_mask_major
from hf_mim.models.ijepa import convert_ijepa
from hf_mim.trainers import IJepaTrainer, IJepaTrainingArguments

from .helpers import FIXTURES
from .trajectory_harness import (
    REPLAY_ARGUMENTS,
    ema_before_optimizer_step,
    relative_gap,
    replay,
    schedule_off_by_one,
)

FIXTURE = FIXTURES / "trajectory_ijepa"
DRIFT_FACTOR = 20  # hf_mim may round differently from the original (fused AdamW, gather order), not more


@pytest.fixture(scope="module")
def recorded():
    return load_file(FIXTURE / "trajectory.safetensors"), json.loads((FIXTURE / "trajectory.json").read_text())


def original_state(tensors, stage: str, parts=("encoder", "predictor", "target_encoder")) -> dict:
    checkpoint = {}
    for part in parts:
        source = "encoder" if (stage == "initial" and part == "target_encoder") else part
        prefix = f"{stage}.{source}."
        checkpoint[part] = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    return checkpoint


def hf_to_original_name(name: str) -> str:
    """hf_mim parameter name -> the original's (`encoder.*` / `predictor.*`), through the converter's tables."""
    part, tables, blocks = (
        ("encoder", convert_ijepa._ENCODER, "blocks") if name.startswith("ijepa.") else
        ("predictor", convert_ijepa._PREDICTOR, "predictor_blocks")
    )  # fmt: skip
    rest = name.split(".", 1)[1]
    top = {v: k for k, v in tables.items()}
    if rest in top:
        return f"{part}.{top[rest]}"
    index, inner = re.match(r"layers\.(\d+)\.(.+)$", rest).groups()
    if m := re.match(r"attention\.[qkv]_proj\.(weight|bias)$", inner):
        return f"{part}.{blocks}.{index}.attn.qkv.{m.group(1)}"
    return f"{part}.{blocks}.{index}.{ {v: k for k, v in convert_ijepa._BLOCK.items()}[inner] }"


def run_hf(recorded, tmp_path):
    tensors, record = recorded
    a = record["arguments"]
    config, state, _ = convert_ijepa.convert_checkpoint(original_state(tensors, "initial"), num_heads=a["heads"])
    config.drop_path_rate = 0.0
    torch.manual_seed(0)
    model = IJepaForPreTraining(config)
    model.load_state_dict(state)
    model.init_teacher()  # the original's target encoder starts as a copy of the encoder
    arguments = IJepaTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=a["steps"],
        per_device_train_batch_size=a["batch"],
        learning_rate=a["lr"],
        warmup_start_lr_ratio=a["start_lr"] / a["lr"],
        min_lr_ratio=a["final_lr"] / a["lr"],
        warmup_steps=int(a["warmup_frac"] * a["steps"]),
        weight_decay=a["wd"],
        weight_decay_end=a["final_wd"],
        teacher_momentum=a["ema"][0],
        teacher_momentum_end=a["ema"][1],
        **REPLAY_ARGUMENTS,
    )

    def batch_for(step):
        return {
            "pixel_values": tensors[f"batch.{step}"].float(),
            "context_indices": from_mask_major(tensors[f"masks_enc.{step}"].long()),
            "target_indices": from_mask_major(tensors[f"masks_pred.{step}"].long()),
        }

    trajectory, _ = replay(IJepaTrainer, arguments, model, a["steps"], a["batch"], batch_for)
    return trajectory, model


def compare(recorded, trajectory, model):
    """Assert the replayed trajectory is the recorded one; returns the measured gaps."""
    tensors, record = recorded
    steps = record["steps"]
    members = record["group_members"]
    group_of = {name: index for index, names in enumerate(members) for name in names}
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    for step, (expected, hyper) in enumerate(zip(steps, trajectory.hyper)):
        assert set(hyper) == trained
        for name, (lr, wd) in hyper.items():
            group = expected["groups"][group_of[hf_to_original_name(name)]]
            assert lr == pytest.approx(group["lr"], rel=1e-12, abs=1e-15), f"step {step}: lr of {name}"
            assert wd == pytest.approx(group["weight_decay"], rel=1e-12, abs=1e-15), f"step {step}: wd of {name}"
    assert trajectory.momenta == pytest.approx([s["momentum"] for s in steps], rel=1e-12)

    drift = record["float_drift"]
    loss_gap = max(abs(x - s["loss"]) / abs(s["loss"]) for x, s in zip(trajectory.losses, steps))
    assert loss_gap <= DRIFT_FACTOR * max(drift["loss"], 1e-7), f"loss gap {loss_gap:.2e}"
    _, final, _ = convert_ijepa.convert_checkpoint(
        original_state(tensors, "final"), num_heads=record["arguments"]["heads"]
    )
    ours = model.state_dict()
    gaps = {}
    # Key biases: their exact gradient is zero (softmax ignores a shift shared by all keys), so in both code bases
    # Adam turns ~1e-10 float noise into steps of about the lr with random sign. They are only held to that bound.
    noise_driven = re.compile(r"attention\.k_proj\.bias$")
    lr_sum = sum(s["groups"][0]["lr"] for s in steps)
    for name, expected in final.items():
        part = {"ijepa": "encoder", "target_encoder": "target_encoder", "predictor": "predictor"}[name.split(".")[0]]
        if noise_driven.search(name):
            assert (ours[name] - expected).abs().max() <= 2 * lr_sum, name
            continue
        gap = relative_gap(ours[name], expected)
        gaps[part] = max(gaps.get(part, 0.0), gap)
        assert gap <= DRIFT_FACTOR * max(drift["weights"][part], 1e-7), f"{name}: final weights differ by {gap:.2e}"
    return {"loss": loss_gap, **gaps}


def test_trajectory_matches_the_original(recorded, tmp_path):
    trajectory, model = run_hf(recorded, tmp_path)
    gaps = compare(recorded, trajectory, model)
    print("relative gaps to the original:", gaps, "original's own fp32/fp64 drift:", recorded[1]["float_drift"])


def _weight_decay_on_biases(monkeypatch):
    def one_group(self, model):
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay_multiplier": 1.0}]

    monkeypatch.setattr(IJepaTrainer, "parameter_groups", one_group)


@pytest.mark.parametrize("fault", [schedule_off_by_one, ema_before_optimizer_step, _weight_decay_on_biases])
def test_trajectory_test_catches_faults(recorded, tmp_path, monkeypatch, fault):
    fault(monkeypatch)
    trajectory, model = run_hf(recorded, tmp_path)
    with pytest.raises(AssertionError):
        compare(recorded, trajectory, model)


def test_data_transform_matches_the_original(recorded):
    """Same crop parameters (same RNG draws), interpolation and normalisation as the original's make_transforms."""
    import PIL.Image
    import skimage.data

    tensors, record = recorded
    a, settings = record["arguments"], record["transform"]
    transform = pretraining_transform(a["img"], tuple(a["crop_scale"]), hflip=False, interpolation="bilinear")
    for name in settings["images"]:
        image = PIL.Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        for seed in settings["seeds"]:
            torch.manual_seed(seed)
            ours = transform(image)
            torch.testing.assert_close(ours, tensors[f"transform.{name}.{seed}"], atol=1e-5, rtol=0)


def test_original_block_sampler_reproduces_the_original_masks(recorded):
    """hf_mim's default sampler differs on purpose (it reaches the last row/column); `sampler="original"` restores the
    original's draws exactly, from the same global RNG state."""
    from hf_mim.masking import MultiBlockMasking

    tensors, record = recorded
    a = record["arguments"]
    masking = MultiBlockMasking(
        num_targets=a["npred"], target_scale=a["pred_mask_scale"], target_aspect_ratio=a["aspect_ratio"],
        num_context=a["nenc"], context_scale=a["enc_mask_scale"], min_keep=a["min_keep"], sampler="original",
    )  # fmt: skip
    grid = (a["img"] // a["patch"],) * 2
    torch.manual_seed(record["sampler"]["seed"])
    for index in range(record["sampler"]["batches"]):
        masks = masking(a["batch"], grid)
        assert torch.equal(masks.context_indices, from_mask_major(tensors[f"sampler.{index}.enc"].long())), index
        assert torch.equal(masks.target_indices, from_mask_major(tensors[f"sampler.{index}.pred"].long())), index
