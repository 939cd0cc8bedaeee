"""Training parity with the original VICRegL, step for step (ResNet + LARS, ConvNeXt + AdamW).

`tests/fixtures/trajectory_vicregl` was recorded by `scripts/trajectory/record_vicregl_trajectory.py` from the
original code (its VICRegL model and loss, `build_optimizer`, `utils.learning_schedule`, main_vicregl.py's step).
Here the converted initial weights train through hf_mim's own `VicreglTrainer` (its optimizer, parameter groups and
schedule) on the same views and location grids; every lr / weight decay must be equal at every step, and the losses
and final weights within 20x the original's own float32-vs-float64 drift, per step for the losses.

The ResNet run is chaotic in the original itself: its float32 and float64 runs part by ~x50 per step from the start
(loss 1e-8, 4e-7, 1e-5, 7e-4, 1e-2 relative at steps 0-4; ~2 relative in the final weights; the same with batch 6,
64 px local crops, or base lr 1 to 100). Its losses are held to the original's drift so far at each step (tight over
the first steps, where the faults below already show), its weights after `early_steps` (2) steps to their 2e-4 drift,
its final weights and LARS momenta only to the (loose) final drift. The ConvNeXt + AdamW run is not chaotic
(2.5e-6 final weight drift) and is held tightly throughout.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from hf_mim import VicreglForPreTraining
from hf_mim.models.vicregl.convert_vicregl import convert_checkpoint
from hf_mim.trainers import VicreglTrainer, VicreglTrainingArguments

from .helpers import FIXTURES
from .trajectory_harness import (
    REPLAY_ARGUMENTS,
    assert_fault_caught,
    optimizer_state_gap,
    record_output_fields,
    relative_gap,
    replay,
    schedule_off_by_one,
)

FIXTURE = FIXTURES / "trajectory_vicregl"
DRIFT_FACTOR = 20
FLOOR = 1e-7  # relative: float32 rounding of a loss of ~25
PARTS = {
    "global_invariance_loss": "inv_l",
    "global_variance_loss": "var_l",
    "global_covariance_loss": "cov_l",
    "local_invariance_loss": "minv_l",
    "local_variance_loss": "mvar_l",
    "local_covariance_loss": "mcov_l",
}


@pytest.fixture(scope="module")
def recorded():
    record = json.loads((FIXTURE / "trajectory.json").read_text())
    runs = {name: load_file(FIXTURE / f"{name}.safetensors") for name in record["runs"]}
    return load_file(FIXTURE / "batches.safetensors"), runs, record


def views_from_uint8(crop: torch.Tensor, mean, std) -> torch.Tensor:
    """The recorder's normalisation (ToTensor + the original's Normalize), on the stored uint8 crops."""
    x = crop.movedim(-1, -3).float() / 255
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def original_state(tensors, stage: str) -> dict:
    prefix = f"{stage}."
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def run_hf(recorded, backbone: str, tmp_path):
    batches, runs, record = recorded
    a, run = record["arguments"], record["runs"][backbone]["arguments"]
    config, state, is_full, _ = convert_checkpoint(
        original_state(runs[backbone], "initial"), names=(f"alpha{a['alpha']}",)
    )
    assert is_full
    config.num_matches = tuple(a["num_matches"])
    config.l2_all_matches = True
    config.num_global_views = record["views"]["global"]
    config.image_size = a["global_size"]
    config.drop_path_rate = 0.0
    model = VicreglForPreTraining(config)
    model.load_state_dict(state, strict=True)
    arguments = VicreglTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=a["steps"],
        per_device_train_batch_size=a["batch"],
        base_learning_rate=run["base_lr"],
        min_lr_ratio=run["end_lr_ratio"],
        warmup_steps=run["warmup_steps"],
        weight_decay=a["adamw_weight_decay"],
        **REPLAY_ARGUMENTS,
    )
    views = record["views"]
    num_global = views["global"]

    def batch_for(step):
        count = num_global + views["local"]
        crops = [views_from_uint8(batches[f"view.{step}.{v}"], views["mean"], views["std"]) for v in range(count)]
        grids = [batches[f"grid.{step}.{v}"] for v in range(count)]
        return {
            "pixel_values": torch.stack(crops[:num_global], dim=1),
            "locations": torch.stack(grids[:num_global], dim=1),
            "local_pixel_values": torch.stack(crops[num_global:], dim=1),
            "local_locations": torch.stack(grids[num_global:], dim=1),
        }

    parts = record_output_fields(model, tuple(PARTS))
    early, calls = {}, []

    def snapshot(module, args):  # before forward k: the weights after k optimizer steps (and k BN updates)
        if len(calls) == a["early_steps"]:
            early.update({k: v.detach().clone() for k, v in module.state_dict().items()})
        calls.append(None)

    model.register_forward_pre_hook(snapshot)
    trajectory, trainer = replay(VicreglTrainer, arguments, model, a["steps"], a["batch"], batch_for)
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    state = {name: optimizer.state[p] for name, p in model.named_parameters() if p.requires_grad}
    return trajectory, parts, model, early, state


def converted(tensors, stage: str, alpha: float) -> dict:
    return convert_checkpoint(original_state(tensors, stage), names=(f"alpha{alpha}",))[1]


def converted_optimizer_state(tensors, alpha: float) -> dict[str, dict[str, torch.Tensor]]:
    """The original's final optimizer state under hf_mim's names: each state tensor put in place of its parameter in
    the original state dict, which the converter then renames."""
    final = original_state(tensors, "final")
    keys = {k.rsplit(".", 1)[1] for k in tensors if k.startswith("optim.")}
    state = {}
    for key in keys:
        checkpoint = {
            name: tensors.get(f"optim.{name}.{key}", value) if not name.startswith("classifier.") else value
            for name, value in final.items()
        }
        for name, value in convert_checkpoint(checkpoint, names=(f"alpha{alpha}",))[1].items():
            state.setdefault(name, {})[key] = value
    return state


def compare_weights(ours: dict, expected: dict, bound: float, what: str) -> float:
    worst = 0.0
    for name, value in expected.items():
        if not value.is_floating_point():
            assert torch.equal(ours[name], value), f"{what}: {name}"
            continue
        gap = relative_gap(ours[name], value)
        worst = max(worst, gap)
        assert gap <= bound, f"{what}: {name} differs by {gap:.2e} > {bound:.2e}"
    return worst


def compare(recorded, backbone: str, trajectory, parts, model, early, optimizer_state, schedules=True) -> dict:
    """Assert the replayed trajectory is the recorded one; returns the measured gaps. `schedules=False` skips the
    lr / weight-decay comparison (to show that the losses and weights alone catch a fault too)."""
    _, runs, record = recorded
    run = record["runs"][backbone]
    steps = run["steps"]
    initial = original_state(runs[backbone], "initial")
    # The original's groups, read per parameter: LARS has one group and excludes 1-D parameters from weight decay
    # (and adaptation) by its filter; AdamW has a no-decay group of the 1-D parameters.
    group_of = {name: i for i, names in enumerate(run["group_members"]) for name in names}
    for name, index in group_of.items():
        if run["arguments"]["optimizer"] == "adamw" and not name.startswith("classifier."):
            assert (initial[name].ndim == 1) == (index == 0), name
    for step, (expected, hyper) in enumerate(zip(steps, trajectory.hyper if schedules else [])):
        trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert set(hyper) == set(trained)
        for name, (lr, wd) in hyper.items():
            vector = trained[name].ndim == 1
            if run["arguments"]["optimizer"] == "lars":
                group = expected["groups"][0]
                expected_wd = 0.0 if vector else group["weight_decay"]
            else:
                group = expected["groups"][0 if vector else 1]
                expected_wd = group["weight_decay"]
            assert lr == pytest.approx(group["lr"], rel=1e-12, abs=1e-15), f"step {step}: lr of {name}"
            assert wd == pytest.approx(expected_wd, rel=1e-12, abs=1e-15), f"step {step}: wd of {name}"

    gaps = {"loss": 0.0, "parts": 0.0}
    drift = 0.0  # the original's own float32 / float64 gap so far (a chaotic run's gap, once grown, stays)
    for step, (ours, expected) in enumerate(zip(trajectory.losses, steps)):
        drift = max(drift, abs(expected["loss"] - expected["loss_float64"]) / abs(expected["loss_float64"]))
        bound = DRIFT_FACTOR * max(drift, FLOOR)
        gap = abs(ours - expected["loss"]) / abs(expected["loss"])
        gaps["loss"] = max(gaps["loss"], gap / bound)
        assert gap <= bound, f"step {step}: loss gap {gap:.2e} > {bound:.2e}"
        for field, key in PARTS.items():
            part_gap = abs(parts[field][step] - expected[key]) / max(abs(expected[key]), 1e-3)
            gaps["parts"] = max(gaps["parts"], part_gap / max(bound, 1e-6))
            assert part_gap <= max(bound, 1e-6) * 10, f"step {step}: {field} gap {part_gap:.2e}"

    alpha, drift = record["arguments"]["alpha"], run["float_drift"]
    tensors = runs[backbone]
    early_bound = DRIFT_FACTOR * max(drift["early_weights"], FLOOR)
    gaps["early_weights"] = compare_weights(early, converted(tensors, "early", alpha), early_bound, "early weights")
    bound = DRIFT_FACTOR * max(drift["weights"], FLOOR)
    gaps["weights"] = compare_weights(model.state_dict(), converted(tensors, "final", alpha), bound, "final weights")
    gaps["optimizer_state"] = optimizer_state_gap(optimizer_state, converted_optimizer_state(tensors, alpha), bound)
    return gaps


@pytest.mark.parametrize("backbone", ["resnet", "convnext"])
def test_trajectory_matches_the_original(recorded, backbone, tmp_path):
    gaps = compare(recorded, backbone, *run_hf(recorded, backbone, tmp_path))
    drift = recorded[2]["runs"][backbone]["float_drift"]
    print(backbone, "gaps (loss, parts: in units of the per-step bound):", gaps, "original's fp32/fp64 drift:", drift)


def _weight_decay_on_vectors(monkeypatch):
    def groups(self, model):
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": params, "lr_multiplier": 1.0, "weight_decay_multiplier": 1.0, "lars_adaptation": True}]

    monkeypatch.setattr(VicreglTrainer, "parameter_groups", groups)


def _lars_adaptation_on_vectors(monkeypatch):
    real = VicreglTrainer.parameter_groups

    def groups(self, model):
        return [{**group, "lars_adaptation": True} for group in real(self, model)]

    monkeypatch.setattr(VicreglTrainer, "parameter_groups", groups)


@pytest.mark.parametrize(
    "fault, backbone",
    [
        (schedule_off_by_one, "convnext"),
        (_weight_decay_on_vectors, "convnext"),
        (_lars_adaptation_on_vectors, "resnet"),
    ],
)
def test_trajectory_test_catches_faults(recorded, tmp_path, monkeypatch, fault, backbone):
    fault(monkeypatch)
    replayed = run_hf(recorded, backbone, tmp_path)
    assert_fault_caught(compare, f"{fault.__name__} {backbone}", recorded, backbone, *replayed)


def test_location_grids_match_the_original(recorded):
    """hf_mim's `crop_location_grid` (closed form) gives the original `_location_to_NxN_grid` (running float32 sums) of
    every recorded crop box and flip, to float32 rounding."""
    from hf_mim.data import crop_location_grid

    batches, _, record = recorded
    stride = record["views"]["stride"]
    count = record["views"]["global"] + record["views"]["local"]
    for step in range(record["arguments"]["steps"]):
        for v in range(count):
            grids = batches[f"grid.{step}.{v}"]
            for box, expected in zip(batches[f"box.{step}.{v}"].tolist(), grids):
                ours = crop_location_grid(box[:4], grids.shape[1], flip=bool(box[4]))
                assert ours.shape[0] == batches[f"view.{step}.{v}"].shape[1] // stride
                torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
