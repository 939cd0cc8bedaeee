"""Training parity with the original CAPI, step for step.

`tests/fixtures/trajectory_capi` was recorded by `scripts/trajectory/record_capi_trajectory.py` from the original
code (its init, `get_params_groups`, `WarmupThenCosine` lr / momentum / clustering-lr schedules, clustering AdamW,
InverseBlockMasking collate and `train_capi.train()` step). Here the converted initial weights train through
hf_mim's own `CapiTrainer` on the same batches and masks, and every schedule value, both loss parts and the final
weights (student, EMA teacher, prediction head, clustering head and its Adam moments) must match. Tolerance: the
original's own float32-vs-float64 drift over the run (stored in the fixture, ~1e-6 relative) times a safety factor;
the faults below move things by orders of magnitude more.

hf_mim differs from the original on purpose in its default weight-decay groups (no decay on norms and tokens); the
run here uses `original_weight_decay_groups=True`, which restores the original's (biases 0, norm weights x0.1,
tokens x1). Not compared, because hf_mim has no counterpart: the original's RoPE tables are parameters trained at
lr 0 (hf_mim: analytic buffers; the test checks they never moved in the original), and the original's EMA of the
student prediction head (`student_ema.head`, in the releases as `head.*`; hf_mim keeps no EMA of the head).
"""

import json
import math
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hf_mim import CapiForPreTraining
from hf_mim.data import pretraining_transform
from hf_mim.masking import InverseBlockMasking
from hf_mim.masking.inverse_block import to_absolute
from hf_mim.models.capi import convert_capi
from hf_mim.trainers import CapiTrainer, CapiTrainingArguments

from .helpers import FIXTURES
from .trajectory_harness import (
    REPLAY_ARGUMENTS,
    ema_before_optimizer_step,
    record_output_fields,
    relative_gap,
    replay,
    schedule_off_by_one,
)

FIXTURE = FIXTURES / "trajectory_capi"
DRIFT_FACTOR = 20  # hf_mim may round differently from the original (fused AdamW, lerp EMA, gather order), not more
HEAD_NAMES = {"magnitude": "last_layer.weight_g", "direction": "last_layer.weight_v"}


@pytest.fixture(scope="module")
def recorded():
    return load_file(FIXTURE / "trajectory.safetensors"), json.loads((FIXTURE / "trajectory.json").read_text())


def original_checkpoint(tensors, stage: str, model: str = "student") -> dict:
    """The original's `backbone.*` / `head.*` layout (a release's) of the student or the EMA model at a stage."""
    prefix = f"{stage}.{model}."
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def clustering_state(tensors, stage: str) -> dict:
    prefix = f"{stage}.teacher.head.layer."
    return {f"clustering_head.{k[len(prefix) :]}": v for k, v in tensors.items() if k.startswith(prefix)}


def hf_to_original_name(name: str, backbone_keys) -> str:
    """hf_mim parameter name -> the original's (`student.backbone.*`, `student.head.*`, `teacher.head.*`)."""
    part, rest = name.split(".", 1)
    if part == "capi":
        inverse = {convert_capi.rename_key(k): k for k in backbone_keys}
        return f"student.backbone.{inverse[rest]}"
    if part == "prediction_head":
        return f"student.head.{HEAD_NAMES[rest]}"
    if part == "clustering_head":
        return f"teacher.head.layer.{rest}"
    raise KeyError(name)


def per_image(flat: torch.Tensor, batch: int, side: int) -> torch.Tensor:
    """The original's flat batch indices (b * N + n, image-major, the same count per image) -> hf_mim's per-image
    (batch, n). Batch-first, so the Trainer's batch handling (which slices tensors along dim 0) keeps them whole."""
    local = flat.long().reshape(batch, -1)
    images = local // (side * side)
    assert torch.equal(images, torch.arange(batch)[:, None].expand_as(images))
    return local - images * side * side


def build_model(tensors, record) -> CapiForPreTraining:
    """The original's initial weights, converted: backbone through the converter, prediction head as
    `--with_pretraining_heads` maps it, clustering head (not in releases) copied directly."""
    a = record["arguments"]
    checkpoint = original_checkpoint(tensors, "initial")
    config, state, _ = convert_capi.convert_state_dict(checkpoint)
    capi = record["config"]["capi"]
    clustering = capi["clustering_kwargs"]
    config.num_prototypes = capi["num_clusters"]
    config.drop_path_rate = a["drop_path"]
    config.image_size = a["img"]
    config.student_temp = capi["student_temp"]
    config.target_temp = clustering["target_temp"]
    config.clustering_pred_temp = clustering["pred_temp"]
    config.sinkhorn_iterations = clustering["n_sk_iter"]
    config.clustering_bias = clustering["bias"]
    config.mask_ratio, config.prediction_subsampling = a["mask_ratio"], a["prediction_subsampling"]
    torch.manual_seed(0)
    model = CapiForPreTraining(config)
    full = {f"capi.{k}": v for k, v in state.items()}
    full.update({f"teacher.{k}": v for k, v in state.items()})  # the original's student_ema starts as the student
    full.update(convert_capi.prediction_head_state(checkpoint))
    full.update(clustering_state(tensors, "initial"))
    model.load_state_dict(full, strict=True)
    return model


def training_arguments(record, output_dir, **overrides) -> CapiTrainingArguments:
    a, optim = record["arguments"], record["config"]["optim"]
    lr, momentum = optim["lr_schedule"], optim["momentum_schedule"]
    clustering = record["config"]["capi"]["clustering_optimizer"]
    assert clustering["lr_schedule"]["warmup_iters"] == lr["warmup_iters"]  # hf_mim: one warmup for both lrs
    assert clustering["lr_schedule"]["truncate_cos"] == lr["truncate_cos"]
    assert clustering["lr_schedule"]["final_value"] == lr["final_value"] == 0
    assert tuple(clustering["kwargs"]["betas"]) == tuple(optim["optimizer_kwargs"]["betas"])
    settings = dict(
        output_dir=str(output_dir),
        max_steps=optim["total_iters"],
        per_device_train_batch_size=a["batch"],
        learning_rate=lr["base_value"],
        warmup_steps=lr["warmup_iters"],
        warmup_start_lr_ratio=lr.get("start_warmup_value", 0) / lr["base_value"],
        min_lr_ratio=lr["final_value"] / lr["base_value"],
        lr_truncate_cos=lr["truncate_cos"],
        weight_decay=optim["weight_decay"],
        weight_decay_end=None,  # CAPI's weight decay is constant
        adam_beta1=optim["optimizer_kwargs"]["betas"][0],
        adam_beta2=optim["optimizer_kwargs"]["betas"][1],
        patch_embed_lr_multiplier=optim["patch_embed_lr_mult"],
        original_weight_decay_groups=True,
        clustering_learning_rate=clustering["lr_schedule"]["base_value"],
        clustering_weight_decay=0.01,  # torch.optim.AdamW's default: the original passes none
        teacher_momentum=momentum["base_value"],
        teacher_momentum_end=momentum["final_value"],
        teacher_momentum_warmup_start=momentum["start_warmup_value"],
        teacher_momentum_warmup_steps=momentum["warmup_iters"],
        teacher_momentum_truncate_cos=momentum["truncate_cos"],
        max_grad_norm=0.0,
        **REPLAY_ARGUMENTS,
    )
    settings.update(overrides)
    return CapiTrainingArguments(**settings)


def run_hf(recorded, tmp_path, **overrides):
    tensors, record = recorded
    a = record["arguments"]
    model = build_model(tensors, record)
    arguments = training_arguments(record, tmp_path, **overrides)

    def batch_for(step):
        pixels = tensors[f"batch.{step}"].float()
        return {
            "pixel_values": pixels,
            "visible_indices": per_image(tensors[f"visible.{step}"], pixels.shape[0], a["img"] // a["patch"]),
            "predict_indices": per_image(tensors[f"predict.{step}"], pixels.shape[0], a["img"] // a["patch"]),
        }

    parts = record_output_fields(model, ("student_loss", "clustering_loss"))
    trajectory, trainer = replay(CapiTrainer, arguments, model, a["steps"], a["batch"], batch_for)
    return trajectory, parts, model, trainer


def compare(recorded, trajectory, parts, model, trainer):
    """Assert the replayed trajectory is the recorded one; returns the measured gaps."""
    tensors, record = recorded
    steps = record["steps"]
    members = record["group_members"]
    group_of = {name: index for index, names in enumerate(members) for name in names}
    backbone_keys = [
        k[len("initial.student.backbone.") :] for k in tensors if k.startswith("initial.student.backbone.")
    ]
    names = {n: hf_to_original_name(n, backbone_keys) for n, p in model.named_parameters() if p.requires_grad}
    assert len(trajectory.hyper) == len(steps)
    # every trainable original parameter has an hf_mim counterpart, except the RoPE tables (lr 0 there, buffers here)
    assert {n for g in members for n in g} - set(names.values()) == {n for n in group_of if n.endswith("rope.freqs")}
    for step, (expected, hyper) in enumerate(zip(steps, trajectory.hyper)):
        assert set(hyper) == set(names)
        for name, (lr, wd) in hyper.items():
            original = names[name]
            group = (
                expected["clustering"] if original.startswith("teacher.") else expected["groups"][group_of[original]]
            )
            assert lr == pytest.approx(group["lr"], rel=1e-12, abs=1e-15), f"step {step}: lr of {name}"
            assert wd == pytest.approx(group["weight_decay"], rel=1e-12, abs=1e-15), f"step {step}: wd of {name}"
    assert trajectory.momenta == pytest.approx([s["momentum"] for s in steps], rel=1e-12)

    drift = record["float_drift"]
    gaps = {}
    for ours, theirs in (("student_loss", "capi_loss"), ("clustering_loss", "clustering_loss")):
        gaps[ours] = max(abs(x - s[theirs]) / abs(s[theirs]) for x, s in zip(parts[ours], steps))
        assert gaps[ours] <= DRIFT_FACTOR * max(drift[theirs], 1e-7), f"{ours} gap {gaps[ours]:.2e}"

    # The original trains its RoPE tables at lr 0: they must not have moved (hf_mim rebuilds them analytically; the
    # converter checks the tables equal the analytic ones).
    for key, value in tensors.items():
        if key.startswith("final.student.backbone.") and key.endswith("rope.freqs"):
            assert torch.equal(value, tensors[key.replace("final.", "initial.", 1)]), key

    ours = model.state_dict()
    expected = {}
    for model_name, prefix, part in (("student", "capi.", "student"), ("student_ema", "teacher.", "student_ema")):
        _, state, _ = convert_capi.convert_state_dict(original_checkpoint(tensors, "final", model_name))
        expected.update({f"{prefix}{k}": (v, part) for k, v in state.items()})
    head = convert_capi.prediction_head_state(original_checkpoint(tensors, "final", "student"))
    expected.update({k: (v, "student") for k, v in head.items()})
    expected.update({k: (v, "clustering_head") for k, v in clustering_state(tensors, "final").items()})
    assert set(expected) == set(ours), set(expected) ^ set(ours)
    for name, (value, part) in expected.items():
        gap = relative_gap(ours[name], value)
        gaps[part] = max(gaps.get(part, 0.0), gap)
        assert gap <= DRIFT_FACTOR * max(drift["weights"][part], 1e-7), f"{name}: final weights differ by {gap:.2e}"

    # The clustering head's Adam moments (the original's separate clustering AdamW; hf_mim: one group of its AdamW).
    optimizer = trainer.optimizer
    parameters = dict(model.named_parameters())
    for name in ("weight", "bias"):
        state = optimizer.state[parameters[f"clustering_head.{name}"]]
        for key in ("exp_avg", "exp_avg_sq"):
            theirs = tensors[f"clustering_optimizer.layer.{name}.{key}"]
            gap = relative_gap(state[key], theirs)
            gaps["clustering_adam"] = max(gaps.get("clustering_adam", 0.0), gap)
            assert gap <= DRIFT_FACTOR * 10 * max(drift["weights"]["clustering_head"], 1e-7), (
                f"{name}.{key}: {gap:.2e}"
            )
        assert float(state["step"]) == float(tensors[f"clustering_optimizer.layer.{name}.step"])
    return gaps


def test_trajectory_matches_the_original(recorded, tmp_path):
    trajectory, parts, model, trainer = run_hf(recorded, tmp_path)
    gaps = compare(recorded, trajectory, parts, model, trainer)
    drift = {k: v for k, v in recorded[1]["float_drift"].items() if k != "per_tensor"}
    print("relative gaps to the original:", gaps, "original's own fp32/fp64 drift:", drift)


def _weight_decay_on_biases(monkeypatch):
    """The patch-embedding bias (CAPI's only bias) decayed like a weight, everything else as the original."""
    real = CapiTrainer.parameter_groups

    def decayed_bias(self, model):
        groups = real(self, model)
        bias = model.capi.embeddings.patch_embeddings.projection.bias
        for group in groups:
            if any(p is bias for p in group["params"]):
                group["weight_decay_multiplier"] = 1.0
        return groups

    monkeypatch.setattr(CapiTrainer, "parameter_groups", decayed_bias)


@pytest.mark.parametrize("fault", [schedule_off_by_one, ema_before_optimizer_step, _weight_decay_on_biases])
def test_trajectory_test_catches_faults(recorded, tmp_path, monkeypatch, fault):
    fault(monkeypatch)
    trajectory, parts, model, trainer = run_hf(recorded, tmp_path)
    with pytest.raises(AssertionError):
        compare(recorded, trajectory, parts, model, trainer)


def test_hf_mim_default_weight_decay_groups_differ_from_the_original(recorded, tmp_path):
    """hf_mim's default groups (no decay on norms and tokens) differ on purpose from the original's, which is why the
    trajectory runs with `original_weight_decay_groups=True`."""
    tensors, record = recorded
    model = build_model(tensors, record)
    trainer = CapiTrainer(model=model, args=training_arguments(record, tmp_path, original_weight_decay_groups=False))
    optimizer = trainer.create_optimizer()
    wd = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    embeddings = model.capi.embeddings
    original = record["group_multipliers"]
    assert wd[id(embeddings.register_tokens)] == 0.0  # the original: x1
    assert wd[id(model.capi.encoder.layer[0].norm1.weight)] == 0.0  # the original: x0.1
    assert {g["wd_multiplier"] for g in original} == {0.0, 0.1, 1.0}


def test_data_transform_matches_the_original(recorded):
    """Same crop parameters and flip (same RNG draws), bicubic resize on PIL and normalisation as the transform
    train_capi.train() composes."""
    import PIL.Image
    import skimage.data

    tensors, record = recorded
    a, settings = record["arguments"], record["transform"]
    transform = pretraining_transform(
        a["img"], tuple(a["crop_scale"]), hflip=settings["hflip"], interpolation="bicubic"
    )
    for name in settings["images"]:
        image = PIL.Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        for seed in settings["seeds"]:
            torch.manual_seed(seed)
            ours = transform(image)
            torch.testing.assert_close(ours, tensors[f"transform.{name}.{seed}"], atol=1e-5, rtol=0)


def test_original_mask_sampler_reproduces_the_original_masks(recorded):
    """hf_mim's default sampler draws from a torch generator; `sampler="original"` draws as the original collate
    does (python `random` for the blocks, torch's global RNG for the prediction subset) and repeats its masks."""
    tensors, record = recorded
    a = record["arguments"]
    masking = InverseBlockMasking(a["mask_ratio"], a["prediction_subsampling"], roll=True, sampler="original")
    grid = (a["img"] // a["patch"],) * 2
    num_tokens = math.prod(grid)
    seed = record["sampler"]["seed"]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    for index in range(record["sampler"]["batches"]):
        masks = masking(a["batch"], grid)
        assert torch.equal(to_absolute(masks.visible_indices, num_tokens), tensors[f"sampler.{index}.visible"].long())
        assert torch.equal(to_absolute(masks.predict_indices, num_tokens), tensors[f"sampler.{index}.predict"].long())
