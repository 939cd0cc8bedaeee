"""Training parity with the original CAE v1 / v2 (Atten4Vis/CAE), step for step.

`tests/fixtures/trajectory_cae` was recorded by `scripts/trajectory/record_cae_trajectory.py` from the original code
(its ContextAutoencoderViT, MaskingGenerator, `cosine_scheduler` lr / wd schedules, `get_parameter_groups` rule and
engine_for_pretraining.py's step with gradient clipping), v1 with given token ids, v2 with given teacher features.
Here the converted initial weights train through hf_mim's own `CaeTrainer` (its groups, schedules, clipping) on the
same images, masks and targets; every lr / weight decay must be equal at every step, and the losses (per step) and
final weights / AdamW state within 20x the original's own float32-vs-float64 drift.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from hf_mim import CaeConfig, CaeForPreTraining
from hf_mim.models.cae.convert_cae import convert_checkpoint
from hf_mim.trainers import CaeTrainer, CaeTrainingArguments

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

FIXTURE = FIXTURES / "trajectory_cae"
DRIFT_FACTOR = 20
FLOOR = 1e-7  # relative: float32 rounding


@pytest.fixture(scope="module")
def recorded():
    record = json.loads((FIXTURE / "trajectory.json").read_text())
    return {name: load_file(FIXTURE / f"{name}.safetensors") for name in record["runs"]}, record


def original_state(tensors, stage: str) -> dict:
    prefix = f"{stage}."
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def converted(state: dict, w: dict) -> dict:
    _, hf_state, is_full, _ = convert_checkpoint(
        {"model": state}, "<original>", num_heads=w["heads"], decoder_num_heads=w["decoder_heads"]
    )
    assert is_full
    return hf_state


def hf_config(w: dict) -> CaeConfig:
    return CaeConfig(
        cae_version=w["version"], image_size=w["image_size"], patch_size=w["patch_size"], hidden_size=w["width"],
        num_hidden_layers=w["depth"], num_attention_heads=w["heads"], intermediate_size=4 * w["width"],
        layer_scale_init_value=0.1, drop_path_rate=0.0, decoder_hidden_size=w["decoder_width"],
        decoder_num_attention_heads=w["decoder_heads"], decoder_intermediate_size=4 * w["decoder_width"],
        decoder_layer_scale_init_value=0.1, regressor_num_layers=w["regressor_depth"],
        decoder_num_layers=w["decoder_depth"], vocab_size=w["vocab_size"], target_hidden_size=w["target_dim"],
        num_masking_patches=w["num_masked"], min_masking_patches_per_block=w["min_block"],
        attn_implementation="eager",
    )  # fmt: skip


def run_hf(recorded, name: str, tmp_path):
    runs, record = recorded
    a, run = record["arguments"], record["runs"][name]
    tensors, w = runs[name], run["workload"]
    config = hf_config(w)
    config.alignment_loss_weight = a["align_loss_weight"]
    model = CaeForPreTraining(config)
    model.load_state_dict(converted(original_state(tensors, "initial"), w), strict=True)
    arguments = CaeTrainingArguments(
        output_dir=str(tmp_path),
        max_steps=a["steps"],
        per_device_train_batch_size=a["batch"],
        learning_rate=a["lr"],
        min_lr_ratio=a["min_lr"] / a["lr"],
        warmup_steps=a["warmup_epochs"] * (a["steps"] // a["epochs"]),
        warmup_start_lr_ratio=0.0,
        weight_decay=a["weight_decay"],
        weight_decay_end=a["weight_decay_end"],
        max_grad_norm=a["clip_grad"],
        **REPLAY_ARGUMENTS,
    )
    target_key = "labels" if w["version"] == 1 else "target_features"

    def batch_for(step):
        targets = tensors[f"targets.{step}"]
        return {
            "pixel_values": tensors[f"images.{step}"].float(),
            "bool_masked_pos": tensors[f"mask.{step}"],
            target_key: targets.long() if w["version"] == 1 else targets,
        }

    parts = record_output_fields(model, ("prediction_loss", "alignment_loss") if w["version"] == 1 else ())
    trajectory, trainer = replay(CaeTrainer, arguments, model, a["steps"], a["batch"], batch_for)
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    state = {n: optimizer.state[p] for n, p in model.named_parameters() if p.requires_grad}
    return trajectory, parts, model, state


def converted_optimizer_state(tensors, w) -> dict[str, dict[str, torch.Tensor]]:
    """The original's final AdamW state under hf_mim's names (each state tensor in place of its parameter in the
    original state dict, which the converter then renames and splits)."""
    final = original_state(tensors, "final")
    state = {}
    for key in ("exp_avg", "exp_avg_sq"):
        checkpoint = {n: tensors.get(f"optim.{n}.{key}", v) for n, v in final.items()}
        for name, value in converted(checkpoint, w).items():
            state.setdefault(name, {})[key] = value
    return state


def compare(recorded, name: str, trajectory, parts, model, optimizer_state, schedules=True) -> dict:
    runs, record = recorded
    run = record["runs"][name]
    steps, w, tensors = run["steps"], run["workload"], runs[name]
    initial = original_state(tensors, "initial")
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    decayed_original = sum(
        initial[n].numel()
        for members, group in zip(run["group_members"], steps[0]["groups"])
        if group["weight_decay"] > 0
        for n in members
    )
    for step, (expected, hyper) in enumerate(zip(steps, trajectory.hyper if schedules else [])):
        assert set(hyper) == set(trained)
        lrs = {g["lr"] for g in expected["groups"]}
        wds = {g["weight_decay"] for g in expected["groups"]} - {0.0}
        assert len(lrs) == 1 and len(wds) == 1  # lr_scale 1 everywhere; one decay value
        decayed = 0
        for pname, (lr, wd) in hyper.items():
            no_decay = trained[pname].ndim == 1 or pname.endswith(".bias")  # get_parameter_groups' rule
            assert lr == pytest.approx(next(iter(lrs)), rel=1e-12, abs=1e-15), f"step {step}: lr of {pname}"
            expected_wd = 0.0 if no_decay else next(iter(wds))
            assert wd == pytest.approx(expected_wd, rel=1e-12, abs=1e-15), f"step {step}: wd of {pname}"
            decayed += trained[pname].numel() if wd > 0 else 0
        assert decayed == decayed_original, f"step {step}: {decayed} decayed weights, the original {decayed_original}"

    gaps = {"loss": 0.0, "parts": 0.0}
    drift = 0.0  # the original's own float32 / float64 loss gap so far
    for step, (ours, expected) in enumerate(zip(trajectory.losses, steps)):
        drift = max(drift, abs(expected["loss"] - expected["loss_float64"]) / abs(expected["loss_float64"]))
        bound = DRIFT_FACTOR * max(drift, FLOOR)
        gap = abs(ours - expected["loss"]) / abs(expected["loss"])
        gaps["loss"] = max(gaps["loss"], gap / bound)
        assert gap <= bound, f"step {step}: loss gap {gap:.2e} > {bound:.2e}"
        for field, key in (("prediction_loss", "loss_main"), ("alignment_loss", "loss_align")):
            if field in parts:
                part_gap = abs(parts[field][step] - expected[key]) / max(abs(expected[key]), 1e-3)
                gaps["parts"] = max(gaps["parts"], part_gap / bound)
                assert part_gap <= bound * 10, f"step {step}: {field} gap {part_gap:.2e}"

    bound = DRIFT_FACTOR * max(run["float_drift"]["weights"], FLOOR)
    gaps["weights"] = 0.0
    ours = model.state_dict()
    noise_bound = DRIFT_FACTOR * max(run["float_drift"]["key_norm_bias"], FLOOR)
    for pname, value in converted(original_state(tensors, "final"), w).items():
        gap = relative_gap(ours[pname], value)
        if pname.endswith("norm1_k.bias"):  # stepped by rounding noise (see below): held to its own drift
            assert gap <= noise_bound, f"final weights: {pname} differs by {gap:.2e} > {noise_bound:.2e}"
            continue
        gaps["weights"] = max(gaps["weights"], gap)
        assert gap <= bound, f"final weights: {pname} differs by {gap:.2e} > {bound:.2e}"
    # The regressor's key LayerNorm bias gets a zero gradient in exact arithmetic (a shift common to all keys cancels
    # in the softmax): its Adam moments are rounding noise on either side (its weights are still compared above).
    gaps["optimizer_state"] = optimizer_state_gap(
        optimizer_state, converted_optimizer_state(tensors, w), bound, skip=("norm1_k.bias",)
    )
    return gaps


@pytest.mark.parametrize("name", ["v1", "v2"])
def test_trajectory_matches_the_original(recorded, name, tmp_path):
    gaps = compare(recorded, name, *run_hf(recorded, name, tmp_path))
    print(
        name,
        "gaps (loss, parts: in units of the per-step bound):",
        gaps,
        "drift:",
        recorded[1]["runs"][name]["float_drift"],
    )


def _weight_decay_on_vectors(monkeypatch):
    def groups(self, model):
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": params, "lr_multiplier": 1.0, "weight_decay_multiplier": 1.0}]

    monkeypatch.setattr(CaeTrainer, "parameter_groups", groups)


def _clipping_off(monkeypatch):
    real = CaeTrainingArguments.__post_init__

    def post_init(self):
        real(self)
        self.max_grad_norm = 0.0

    monkeypatch.setattr(CaeTrainingArguments, "__post_init__", post_init)


@pytest.mark.parametrize(
    "fault, name",
    [(schedule_off_by_one, "v1"), (_weight_decay_on_vectors, "v2"), (_clipping_off, "v1")],
)
def test_trajectory_test_catches_faults(recorded, tmp_path, monkeypatch, fault, name):
    fault(monkeypatch)
    replayed = run_hf(recorded, name, tmp_path)
    assert_fault_caught(compare, f"{fault.__name__} {name}", recorded, name, *replayed)
