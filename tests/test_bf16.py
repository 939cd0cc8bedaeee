"""bf16 that matches fp32.

Every method trains 50 steps through its own Trainer with `bf16=True, use_cpu=True` (CPU autocast: what `--bf16
--use_cpu` runs) and in float32, from the same initial weights on the same recorded batches and masks; neither curve
may hold a NaN and they must agree within a measured bound. Under autocast the numerically sensitive parts must run in
float32 (CAPI's Sinkhorn targets and cross-entropies, I-JEPA's target norm and loss, CAE's losses, VICReg's variance,
covariance and invariance), while the rest really runs in bfloat16 (checked, so that the dtype assertions are not
vacuous). The EMA teacher must stay a float32 master copy, updated outside autocast.
"""

import functools

import PIL.Image
import pytest
import torch

from hf_mim import (
    CaeConfig,
    CaeForPreTraining,
    CapiConfig,
    CapiForPreTraining,
    IJepaConfig,
    IJepaForPreTraining,
    VicreglConfig,
    VicreglForPreTraining,
    losses,
)
from hf_mim.data import (
    MultiCropCollator,
    MultiCropTransform,
    PretrainingCollator,
    TwoViewCollator,
    TwoViewCropTransform,
    pretraining_transform,
)
from hf_mim.losses import sinkhorn_knopp
from hf_mim.models.cae.tokenizer_dalle import DalleTokenizer, DalleTokenizerConfig
from hf_mim.models.vicregl import loss_vicregl
from hf_mim.trainers import (
    CaeTrainer,
    CaeTrainingArguments,
    CapiTrainer,
    CapiTrainingArguments,
    IJepaTrainer,
    IJepaTrainingArguments,
    VicreglTrainer,
    VicreglTrainingArguments,
)

from .image_processor_test_mixin import photo
from .trajectory_harness import RecordedCollator, RecordedSteps

STEPS, BATCH, DISTINCT_BATCHES = 50, 8, 10
# Bound on max over the 50 steps of |loss_bf16 - loss_fp32| / |loss_fp32|. Measured here (README, "Mixed precision"):
# CAPI 4.1e-3, I-JEPA 1.2e-3, CAE 1.8e-3, VICRegL 6.9e-4 (without the float32 guards: 4.2e-3, 2.6e-3, 2.7e-2, 3.8e-3);
# bounds about 2.5x the measured gap, for other CPUs' bf16 kernels.
MAX_RELATIVE_GAP = {"capi": 1e-2, "ijepa": 3e-3, "cae": 5e-3, "vicregl": 2e-3}


# ------------------------------------------------------------------------------------------------ the four methods
@functools.cache
def recorded_batches(method: str) -> tuple[dict, ...]:
    """DISTINCT_BATCHES batches of transformed photos with their masks, drawn once from a seeded RNG: both runs of a
    method see the same ones, cycled over the 50 steps."""
    config, transform, collator = SETUPS[method][0](), *SETUPS[method][3:]
    torch.manual_seed(0)
    photos = [PIL.Image.fromarray(photo(72, 80, seed=i)) for i in range(BATCH)]
    batches = []
    for _ in range(DISTINCT_BATCHES):
        views = [transform(config, image) for image in photos]
        batch = collator(config)([v if isinstance(v, dict) else {"pixel_values": v} for v in views])
        batches.append({k: v for k, v in batch.items() if k not in ("num_skipped", "skipped_files")})
    return tuple(batches)


def model_masks(model_class, collator_class=PretrainingCollator):
    """config -> a collator with the masks `model_class` builds from it (no model is built: the RNG is untouched)."""
    return lambda config: collator_class(config.patch_size, model_class.build_mask_generator(config))


SETUPS = {  # config, model class, (trainer, arguments), transform, collator
    "capi": (
        lambda: CapiConfig.tiny(drop_path_rate=0.0, num_prototypes=32),
        CapiForPreTraining,
        (CapiTrainer, CapiTrainingArguments),
        lambda config, image: pretraining_transform(56)(image),
        model_masks(CapiForPreTraining),
    ),
    "ijepa": (
        IJepaConfig.tiny,
        IJepaForPreTraining,
        (IJepaTrainer, IJepaTrainingArguments),
        lambda config, image: pretraining_transform(56, (0.3, 1.0), hflip=False, interpolation="bilinear")(image),
        model_masks(IJepaForPreTraining),
    ),
    "cae": (
        lambda: CaeConfig.tiny(cae_version=1, drop_path_rate=0.0),
        CaeForPreTraining,
        (CaeTrainer, CaeTrainingArguments),
        lambda config, image: TwoViewCropTransform.cae_v1(64)(image),
        model_masks(CaeForPreTraining, TwoViewCollator),
    ),
    "vicregl": (  # a narrower tiny ConvNeXt, two global views: the local loss matches their 2x2 maps
        lambda: VicreglConfig.tiny(hidden_sizes=[8, 16, 32, 64], projector="64-64-64", maps_projector="32-32-32"),
        VicreglForPreTraining,
        (VicreglTrainer, VicreglTrainingArguments),
        lambda config, image: MultiCropTransform((64,), (2,), (0.4,), (1.0,))(image),
        lambda config: MultiCropCollator(),
    ),
}


def build_model(method: str):
    config_factory, model_class = SETUPS[method][:2]
    config = config_factory()
    torch.manual_seed(0)
    model = model_class(config)
    if method == "cae":  # the tiny random DALL-E tokenizer, attached as run_cae.py attaches the real one
        torch.manual_seed(1)
        model.set_target_model(DalleTokenizer(DalleTokenizerConfig.tiny(vocab_size=config.vocab_size)))
    return model


def train(method: str, output_dir, bf16: bool, model=None):
    """50 Trainer steps on the recorded batches; returns (losses, trainer)."""
    model = model if model is not None else build_model(method)
    trainer_class, arguments_class = SETUPS[method][2]
    arguments = arguments_class(
        output_dir=str(output_dir), per_device_train_batch_size=BATCH, max_steps=STEPS, warmup_steps=5, bf16=bf16,
        use_cpu=True, save_strategy="no", logging_steps=10_000, report_to="none", dataloader_num_workers=0,
        disable_tqdm=True, remove_unused_columns=False, seed=0, log_feature_health=False,
    )  # fmt: skip
    batches = recorded_batches(method)
    losses = []
    model.register_forward_hook(lambda module, args, output: losses.append(output.loss.item()))
    if hasattr(model, "update_teacher"):
        model.update_teacher = recording_ema_update(model)
    trainer = trainer_class(
        model=model,
        args=arguments,
        train_dataset=RecordedSteps(STEPS, BATCH),
        data_collator=RecordedCollator(lambda step: batches[step % len(batches)]),
    )
    trainer.train()
    return losses, trainer


def recording_ema_update(model):
    """`model.update_teacher`, also checking each update against the float32 formula and recording whether autocast
    was on when the trainer called it (into `model.ema_updates`)."""
    update, model.ema_updates = model.update_teacher, []

    def recording(momentum):
        teacher, student = list(model.teacher_module.parameters()), list(model.student_module.parameters())
        expected = [torch.lerp(t.detach().clone(), s.detach(), 1 - momentum) for t, s in zip(teacher, student)]
        update(momentum)
        model.ema_updates.append(
            {
                "autocast": torch.is_autocast_enabled("cpu"),
                "dtypes": {t.dtype for t in teacher},
                "as_formula": all(torch.equal(t, e) for t, e in zip(teacher, expected)),
            }
        )

    return recording


def relative_gaps(losses: list[float], reference: list[float]) -> torch.Tensor:
    losses, reference = torch.tensor(losses, dtype=torch.float64), torch.tensor(reference, dtype=torch.float64)
    return (losses - reference).abs() / reference.abs()


# ------------------------------------------------------------------------------------------------ loss curves
@pytest.mark.parametrize("method", list(SETUPS))
def test_bf16_loss_curve_matches_fp32(method, tmp_path):
    reference, _ = train(method, tmp_path / "fp32", bf16=False)
    losses, trainer = train(method, tmp_path / "bf16", bf16=True)
    assert len(losses) == len(reference) == STEPS
    assert all(torch.isfinite(torch.tensor(losses + reference))), "NaN or inf in a loss curve"
    gaps = relative_gaps(losses, reference)
    assert gaps.max() <= MAX_RELATIVE_GAP[method], f"{method}: bf16 drifts {gaps.max():.2e} from fp32"
    assert gaps.max() > 0  # autocast really ran: bf16 is not bit-identical to fp32
    model = trainer.model
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps float32 master weights
    if hasattr(model, "ema_updates"):  # the EMA teacher: float32, updated outside autocast, as the formula says
        assert len(model.ema_updates) == STEPS
        assert not any(u["autocast"] for u in model.ema_updates)
        assert all(u["dtypes"] == {torch.float32} for u in model.ema_updates)
        assert all(u["as_formula"] for u in model.ema_updates)


# ------------------------------------------------------------------------------------------------ what stays float32
def forward_under_autocast(method: str):
    """One forward of the method's model on its first recorded batch, under CPU bf16 autocast as the Trainer's."""
    model = build_model(method)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model, model(**recorded_batches(method)[0])


def test_capi_sinkhorn_targets_and_cross_entropies_are_float32():
    model, output = forward_under_autocast("capi")
    assert output.student_logits.dtype == torch.bfloat16  # autocast is on: the prediction head's matmul is bf16
    for name in ("targets", "target_entropy", "student_loss", "clustering_loss", "loss"):
        assert getattr(output, name).dtype == torch.float32, name
    tokens = output.teacher_patch_tokens.transpose(0, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assignments, loss = model.clustering_head(tokens)
    assert assignments.dtype == loss.dtype == torch.float32


def test_sinkhorn_of_bf16_scores_runs_in_float32():
    """bf16 logits (what the clustering head's matmul gives under autocast) are not consumed, and the assignments are
    exactly those of their float32 up-cast, rows summing to 1 within 1e-6; the bf16 arithmetic the guard replaces
    leaves rows off by 4e-3 and moves the large assignments by up to 18 % (measured on these scores)."""
    logits = torch.randn(16, 8, 32, generator=torch.Generator().manual_seed(0))  # (positions, batch, prototypes)
    scores = logits.bfloat16()
    kept = scores.clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assignments = sinkhorn_knopp(scores, temperature=0.06, inplace=True)
    assert assignments.dtype == torch.float32 and torch.equal(scores, kept)
    assert torch.equal(assignments, sinkhorn_knopp(scores.float(), temperature=0.06))
    assert (assignments.sum(dim=-1) - 1).abs().max() < 1e-6

    unguarded = losses._sinkhorn_knopp(scores.clone(), 3, 1e-8, True, 0.06)  # the same steps in bf16
    assert unguarded.dtype == torch.bfloat16 and (unguarded.float().sum(dim=-1) - 1).abs().max() > 1e-3


def test_ijepa_target_norm_and_loss_are_float32():
    _, output = forward_under_autocast("ijepa")
    assert output.predictions.dtype == torch.bfloat16
    assert output.targets.dtype == output.loss.dtype == torch.float32


def test_cae_losses_and_tokens_are_float32(monkeypatch):
    # CPU autocast already runs cross_entropy and mse_loss in float32, so the outputs alone would not show the guard:
    # check what the losses are given
    given = []
    for name in ("cross_entropy", "mse_loss"):
        loss = getattr(torch.nn.functional, name)
        monkeypatch.setattr(
            torch.nn.functional, name, lambda x, y, *a, loss=loss, **k: given.append(x.dtype) or loss(x, y, *a, **k)
        )
    model, output = forward_under_autocast("cae")
    assert output.logits.dtype == torch.bfloat16
    assert output.prediction_loss.dtype == output.alignment_loss.dtype == output.loss.dtype == torch.float32
    assert given == [torch.float32, torch.float32]
    target_views = torch.cat([batch["target_pixel_values"] for batch in recorded_batches("cae")])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = model.compute_targets(target_views)
    assert torch.equal(tokens, model.compute_targets(target_views))  # the tokenizer's argmax runs outside autocast


def test_cae_v2_normalised_logits_and_cosine_loss_are_float32():
    config = CaeConfig.tiny(cae_version=2, drop_path_rate=0.0)
    model = CaeForPreTraining(config)
    batch = recorded_batches("cae")[0]
    features = torch.randn(BATCH, 1 + config.grid_size**2, config.target_hidden_size).bfloat16()  # a bf16 teacher's
    head = []
    model.decoder.head.register_forward_hook(lambda module, args, output: head.append(output.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(batch["pixel_values"], bool_masked_pos=batch["bool_masked_pos"], target_features=features)
    assert head == [torch.bfloat16]  # the head's matmul under autocast; its normalisation in float32
    assert output.logits.dtype == output.loss.dtype == torch.float32


def test_vicreg_variance_covariance_and_invariance_are_float32(monkeypatch):
    seen = {"variance": set(), "covariance": set()}
    variance, covariance = loss_vicregl._variance_term, loss_vicregl._off_diagonal_sq_sum
    monkeypatch.setattr(loss_vicregl, "_variance_term", lambda x: seen["variance"].add(x.dtype) or variance(x))
    monkeypatch.setattr(
        loss_vicregl, "_off_diagonal_sq_sum", lambda c: seen["covariance"].add(c.dtype) or covariance(c)
    )
    _, output = forward_under_autocast("vicregl")
    assert output.embeddings.dtype == torch.bfloat16
    assert seen == {"variance": {torch.float32}, "covariance": {torch.float32}}
    for prefix in ("global", "local"):
        for term in ("invariance", "variance", "covariance"):
            assert getattr(output, f"{prefix}_{term}_loss").dtype == torch.float32, (prefix, term)


# ------------------------------------------------------------------------------------------------ the EMA teacher
def test_half_precision_teacher_loses_ema_steps_and_warns(caplog):
    """Under autocast the teacher is float32 (see the loss-curve test); a model cast to bfloat16 is not, and its EMA
    steps round away (measured: two updates at m = 0.996 towards a student 1e-4 away change 0.09 % of a bfloat16
    teacher's values, 99.3 % of a float32 one's); the update warns once."""
    model = build_model("capi")
    with torch.no_grad():  # a student one small optimizer step away from the teacher
        for p in model.student_module.parameters():
            p.add_(1e-4 * torch.randn_like(p))
    half = build_model("capi").to(torch.bfloat16)
    half.load_state_dict(model.state_dict())
    moved = {}
    for name, candidate in (("float32", model), ("bfloat16", half)):
        before = [p.clone() for p in candidate.teacher_module.parameters()]
        with caplog.at_level("WARNING"):
            candidate.update_teacher(0.996)
            candidate.update_teacher(0.996)
        changed = sum((p != b).sum().item() for p, b in zip(candidate.teacher_module.parameters(), before))
        moved[name] = changed / sum(p.numel() for p in before)
    assert moved["float32"] > 0.9 and moved["bfloat16"] < 0.01, moved
    warnings = [r for r in caplog.records if "EMA teacher's parameters are torch.bfloat16" in r.getMessage()]
    assert len(warnings) == 1
