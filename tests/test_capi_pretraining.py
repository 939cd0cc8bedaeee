import json
import math

import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForPreTraining

from hf_mim import CapiConfig, CapiForPreTraining, CapiModel
from hf_mim.data import PretrainingCollator, SafeImageTransform, pretraining_transform
from hf_mim.losses import effective_rank, sinkhorn_knopp
from hf_mim.models.capi import convert_capi
from hf_mim.teacher import ema_update
from hf_mim.trainers import CapiTrainer, CapiTrainingArguments, NonFiniteLossError, warmup_then_cosine

from .helpers import FIXTURES, StopAfter, convert_capi_fixture, fixture_tolerance, run_script
from .image_processor_test_mixin import photo
from .model_test_mixin import initialise_from_nan

CAPI_FIXTURE = FIXTURES / "capi"


def tiny(**overrides):
    return CapiConfig.tiny(**{"drop_path_rate": 0.0, "num_prototypes": 32, **overrides})


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def converted_pretraining_dir(tmp_path_factory):
    output = tmp_path_factory.mktemp("capi_pretraining")
    convert_capi_fixture(output, "--with_pretraining_heads")
    return output


def test_reproduces_original_pretraining_tensors(converted_pretraining_dir):
    inputs = load_file(CAPI_FIXTURE / "inputs.safetensors")
    expected = load_file(CAPI_FIXTURE / "expected.safetensors")
    model = AutoModelForPreTraining.from_pretrained(converted_pretraining_dir).eval()
    assert isinstance(model, CapiForPreTraining) and model.config.num_prototypes == 32
    with torch.no_grad():
        out = model(
            inputs["pixel_values_56x56"],
            visible_indices=inputs["visible_indices"],
            predict_indices=inputs["predict_indices"],
        )
    for name, actual in (
        ("pretrain_student_predictions", out.predictions),
        ("pretrain_student_head_logits", out.student_logits),
        ("pretrain_teacher_patch_tokens", out.teacher_patch_tokens),
    ):
        reference = expected[name]
        torch.testing.assert_close(actual, reference, rtol=0, atol=fixture_tolerance(reference), msg=name)
    # the same per-image masks given as (B, n) local indices give the same result
    local_visible = inputs["visible_indices"].reshape(2, -1) - torch.tensor([[0], [16]])
    local_predict = inputs["predict_indices"].reshape(2, -1) - torch.tensor([[0], [16]])
    with torch.no_grad():
        again = model(inputs["pixel_values_56x56"], visible_indices=local_visible, predict_indices=local_predict)
    torch.testing.assert_close(again.student_logits, out.student_logits, atol=0, rtol=0)
    # AutoModel on the same folder gives the released backbone
    backbone = AutoModel.from_pretrained(converted_pretraining_dir)
    assert isinstance(backbone, CapiModel)


# ------------------------------------------------------------------------------------------------ objective
def test_loss_equals_hand_computation():
    torch.manual_seed(0)
    model = CapiForPreTraining(tiny()).eval()
    x = torch.randn(2, 3, 56, 56)
    visible = torch.tensor([[0, 1, 4, 5, 8, 9], [5, 6, 9, 10, 13, 14]])
    predict = torch.tensor([[15, 2], [0, 3]])
    out = model(x, visible_indices=visible, predict_indices=predict)
    cfg = model.config
    with torch.no_grad():
        teacher = model.teacher(x, compute_global_representation=False).last_hidden_state[:, 4:]  # (B, N, D)
        head = model.clustering_head
        logits_t = torch.nn.functional.linear(
            torch.nn.functional.normalize(teacher, dim=-1, eps=1e-7), head.weight, head.bias
        )
        # Sinkhorn by hand, per position over the batch (B=2), 3 iterations
        q = torch.exp(logits_t / cfg.target_temp - (logits_t / cfg.target_temp).max(dim=0, keepdim=True).values + 50)
        for _ in range(3):
            q = q / (q.sum(dim=0, keepdim=True) + 1e-8)
            q = q / (q.sum(dim=-1, keepdim=True) + 1e-8)
        clustering = -(q * torch.log_softmax(logits_t / cfg.clustering_pred_temp, -1)).sum(-1).mean()
        targets = torch.stack([q[0, predict[0]], q[1, predict[1]]]).flatten(0, 1)
        w = model.prediction_head.direction * (
            model.prediction_head.magnitude / (model.prediction_head.direction.norm(dim=1, keepdim=True) + 1e-8)
        )
        student_logits = torch.nn.functional.normalize(out.predictions, dim=-1) @ w.T
        student = -(targets * torch.log_softmax(student_logits / cfg.student_temp, -1)).sum(-1).mean()
    torch.testing.assert_close(out.targets, targets, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.clustering_loss, clustering, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.student_loss, student, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, student + clustering, atol=1e-5, rtol=1e-5)


def test_gradients_are_routed_like_the_original():
    """Clustering head: only from its own loss; teacher: none; student: only from the student loss."""
    torch.manual_seed(0)
    model = CapiForPreTraining(tiny()).train()
    out = model(torch.randn(4, 3, 56, 56))
    out.clustering_loss.backward(retain_graph=True)
    assert model.clustering_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.capi.parameters())
    model.zero_grad()
    out.student_loss.backward()
    assert model.clustering_head.weight.grad is None or model.clustering_head.weight.grad.abs().sum() == 0
    assert model.capi.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.teacher.parameters())
    assert not model.teacher.training and model.capi.training


def test_sinkhorn_marginals():
    torch.manual_seed(0)
    scores = torch.randn(5, 64, 16) * 3  # (positions, batch, prototypes)
    q = sinkhorn_knopp(scores, num_iterations=50)
    torch.testing.assert_close(q.sum(-1), torch.ones(5, 64))  # every token's assignment is a distribution
    # after many iterations each prototype gets an equal share of the batch (B/K per position)
    torch.testing.assert_close(q.sum(1), torch.full((5, 16), 64 / 16), atol=1e-3, rtol=1e-3)
    q3 = sinkhorn_knopp(scores, num_iterations=3)
    torch.testing.assert_close(q3.sum(-1), torch.ones(5, 64))
    assert (q3 >= 0).all()


def test_ema_matches_formula_and_moves_teacher():
    torch.manual_seed(0)
    model = CapiForPreTraining(tiny())
    for param in model.capi.parameters():
        param.data.add_(torch.randn_like(param))
    before = {n: p.clone() for n, p in model.teacher.named_parameters()}
    student = dict(model.capi.named_parameters())
    model.update_teacher(0.9)
    for name, param in model.teacher.named_parameters():
        torch.testing.assert_close(param, 0.9 * before[name] + 0.1 * student[name], atol=1e-6, rtol=1e-6)
    frozen = {n: p.clone() for n, p in model.teacher.named_parameters()}
    ema_update(model.teacher, model.capi, 1.0)
    assert all(torch.equal(frozen[n], p) for n, p in model.teacher.named_parameters())


def test_schedules_match_capi_recipe():
    total, warmup = 500_000, 50_000
    assert warmup_then_cosine(0, 1e-3, 0.0, total, warmup) == 0.0
    assert math.isclose(warmup_then_cosine(warmup, 1e-3, 0.0, total, warmup, truncate_cos=0.8), 1e-3)
    final_lr = warmup_then_cosine(total, 1e-3, 0.0, total, warmup, truncate_cos=0.8)
    assert math.isclose(final_lr, 1e-3 * 0.5 * (1 + math.cos(0.8 * math.pi)), rel_tol=1e-9)  # ~9.55e-5
    assert math.isclose(final_lr, 9.55e-5, rel_tol=1e-3)
    final_m = warmup_then_cosine(total, 0.999, 1.0, total, warmup, 1.0, 0.8)
    assert math.isclose(final_m, 0.9999045, rel_tol=1e-7)
    assert warmup_then_cosine(0, 0.999, 1.0, total, warmup, 1.0, 0.8) == 1.0


def test_effective_rank():
    torch.manual_seed(0)
    assert effective_rank(torch.randn(512, 8)) > 7.5
    collapsed = torch.randn(512, 1) @ torch.randn(1, 8)
    assert effective_rank(collapsed) < 1.1


# ------------------------------------------------------------------------------------------------ trainer
def photo_dataset(n=12, size=64, corrupt_paths=()):
    import datasets

    images = [{"bytes": None, "path": str(p)} for p in corrupt_paths]
    dataset = datasets.Dataset.from_dict({"image": [PIL.Image.fromarray(photo(size, size, seed=i)) for i in range(n)]})
    dataset = dataset.cast_column("image", datasets.Image(decode=False))
    if images:
        extra = datasets.Dataset.from_dict({"image": images}, features=dataset.features)
        dataset = datasets.concatenate_datasets([dataset, extra])
    return dataset.with_transform(SafeImageTransform(pretraining_transform(56)))


def make_trainer(tmp_path, dataset, config=None, **overrides):
    config = config or tiny()
    torch.manual_seed(0)
    model = CapiForPreTraining(config)
    args = CapiTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=overrides.pop("max_steps", 6),
        learning_rate=1e-3,
        warmup_steps=0.2,
        logging_steps=2,
        save_steps=overrides.pop("save_steps", 3),
        save_strategy="steps",
        remove_unused_columns=False,
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        **overrides,
    )
    collator = PretrainingCollator.for_model(model)
    return CapiTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)


def test_parameter_groups(tmp_path):
    trainer = make_trainer(tmp_path, photo_dataset(4))
    optimizer = trainer.create_optimizer()
    model = trainer.model
    by_param = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            by_param[id(p)] = group
    patch = by_param[id(model.capi.embeddings.patch_embeddings.projection.weight)]
    assert math.isclose(patch["lr"], 1e-3 * 0.2) and patch["weight_decay"] == 0.1
    assert by_param[id(model.capi.encoder.layer[0].norm1.weight)]["weight_decay"] == 0.0
    assert by_param[id(model.capi.embeddings.register_tokens)]["weight_decay"] == 0.0
    assert by_param[id(model.capi.predictor.mask_token)]["weight_decay"] == 0.0
    assert by_param[id(model.capi.embeddings.patch_embeddings.projection.bias)]["weight_decay"] == 0.0
    q_proj = by_param[id(model.capi.encoder.layer[0].attention.q_proj.weight)]
    assert q_proj["lr"] == 1e-3 and q_proj["weight_decay"] == 0.1
    clustering = by_param[id(model.clustering_head.weight)]
    assert math.isclose(clustering["lr"], 5e-4) and clustering["weight_decay"] == 0.01
    assert not any(id(p) in by_param for p in model.teacher.parameters())
    assert not any("rope" in n for n, _ in model.named_parameters())  # RoPE tables are frozen buffers
    assert optimizer.defaults["betas"] == (0.9, 0.95)


def test_training_logs_parts_and_moves_teacher(tmp_path):
    trainer = make_trainer(tmp_path, photo_dataset())
    teacher_before = {n: p.clone() for n, p in trainer.model.teacher.named_parameters()}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs
    for key in (
        "student_loss",
        "clustering_loss",
        "target_entropy",
        "teacher_momentum",
        "effective_rank",
        "feature_std",
    ):
        assert key in logs[-1], key
    assert 0.999 <= logs[-1]["teacher_momentum"] <= 1.0
    moved = max((p - teacher_before[n]).abs().max().item() for n, p in trainer.model.teacher.named_parameters())
    assert moved > 0


def test_resume_reproduces_uninterrupted_run(tmp_path):
    full = make_trainer(tmp_path / "full", photo_dataset(), max_steps=6, save_steps=100)
    full.train()
    interrupted = make_trainer(tmp_path / "part", photo_dataset(), max_steps=6, save_steps=3)
    interrupted.add_callback(StopAfter(3))  # killed right after the first checkpoint
    interrupted.train()
    assert interrupted.state.global_step == 3
    resumed = make_trainer(tmp_path / "part", photo_dataset(), max_steps=6, save_steps=3)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-3"))
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    for name in full_state:
        assert torch.equal(full_state[name], resumed_state[name]), name
    assert any(name.startswith("teacher.") for name in full_state)
    saved = load_file(tmp_path / "part" / "checkpoint-3" / "model.safetensors")
    assert {"clustering_head.weight", "prediction_head.direction"} <= saved.keys()
    assert any(k.startswith("teacher.") for k in saved)


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    missing = tmp_path / "missing.png"
    trainer = make_trainer(tmp_path / "out", photo_dataset(6, corrupt_paths=[bad, missing]), max_steps=2)
    trainer.train()
    assert trainer.num_skipped_images == 2
    assert trainer.total_skipped_images() == 2
    assert any("bad.jpg" in f for f in trainer.skipped_files) and any(
        "missing.png" in f for f in trainer.skipped_files
    )


def test_collator_rejects_all_bad_batch():
    collator = PretrainingCollator(14)
    with pytest.raises(RuntimeError, match="failed to decode"):
        collator([{"pixel_values": None, "decode_error": "x.png: OSError"}])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, photo_dataset(), max_steps=8, save_steps=2)
    model = trainer.model
    original_forward = model.forward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = original_forward(*args, **kwargs)
        if calls["n"] == 5:  # the 5th step produces NaN
            out.loss = out.loss * float("nan")
        return out

    model.forward = poisoned
    with pytest.raises(NonFiniteLossError, match="checkpoint-4"):
        trainer.train()
    checkpoints = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]
    weights = load_file(tmp_path / "checkpoint-4" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


# ------------------------------------------------------------------------------------------------ run_capi.py
def test_run_capi_embedded_default_and_autmodel(tmp_path):
    output = tmp_path / "run"
    result = run_script(
        "examples/pytorch/pretraining/run_capi.py",
        "--output_dir", str(output), "--max_steps", "4", "--per_device_train_batch_size", "4",
        "--logging_steps", "2", "--report_to", "none", "--disable_tqdm", "true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Backbone (EMA teacher, AutoModel-loadable) saved to" in result.stdout
    backbone = AutoModel.from_pretrained(output / "backbone")
    full = AutoModelForPreTraining.from_pretrained(output)
    assert isinstance(backbone, CapiModel) and isinstance(full, CapiForPreTraining)
    for name, tensor in backbone.state_dict().items():
        assert torch.equal(tensor, full.teacher.state_dict()[name]), name
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_run_capi_json_config_and_train_dir(tmp_path):
    images = tmp_path / "images" / "class_a"
    images.mkdir(parents=True)
    for i in range(6):
        PIL.Image.fromarray(photo(70, 60, seed=i)).save(images / f"{i}.png")
    (images / "broken.png").write_bytes(b"not a png")
    args = {
        "train_dir": str(tmp_path / "images"),
        "output_dir": str(tmp_path / "run"),
        "config_name": "capi-tiny",
        "config_overrides": "num_prototypes=16",
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "report_to": "none",
        "disable_tqdm": True,
    }
    (tmp_path / "args.json").write_text(json.dumps(args))
    result = run_script("examples/pytorch/pretraining/run_capi.py", str(tmp_path / "args.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Skipped 1 unreadable image" in result.stdout
    assert CapiConfig.from_pretrained(tmp_path / "run" / "backbone").num_prototypes == 16


def test_converter_head_keys_are_consumed():
    state = torch.load(CAPI_FIXTURE / "checkpoint.pth", weights_only=True)
    heads = convert_capi.prediction_head_state(state)
    assert heads["prediction_head.magnitude"].shape == (32, 1) and heads["prediction_head.direction"].shape == (32, 64)


# ------------------------------------------------------------------------------------------------ common checks
def fixed_masks():
    return torch.tensor([[0, 1, 4, 5, 8, 9], [5, 6, 9, 10, 13, 14]]), torch.tensor([[15, 2, 3], [0, 3, 12]])


def test_pretraining_model_save_load_and_auto_class(tmp_path):
    torch.manual_seed(0)
    model = CapiForPreTraining(tiny()).eval()
    with torch.no_grad():
        for param in model.capi.parameters():
            param.add_(0.01)  # student != teacher, so a swapped or dropped teacher would show
    x = torch.randn(2, 3, 56, 56)
    visible, predict = fixed_masks()
    with torch.no_grad():
        before = model(x, visible_indices=visible, predict_indices=predict)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    assert type(reloaded) is CapiForPreTraining
    with torch.no_grad():
        after = reloaded(x, visible_indices=visible, predict_indices=predict)
    for name in ("loss", "student_logits", "targets", "teacher_patch_tokens"):
        torch.testing.assert_close(getattr(after, name), getattr(before, name), atol=0, rtol=0, msg=name)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name


def test_pretraining_model_from_backbone_checkpoint_copies_teacher(tmp_path):
    torch.manual_seed(0)
    backbone = CapiModel(tiny())
    backbone.save_pretrained(tmp_path)
    model = CapiForPreTraining.from_pretrained(tmp_path)
    for (name, teacher), student in zip(model.teacher.state_dict().items(), backbone.state_dict().values()):
        assert torch.equal(teacher, student), name
    for name, tensor in backbone.state_dict().items():
        assert torch.equal(model.capi.state_dict()[name], tensor), name


def test_pretraining_gradient_checkpointing_equivalence():
    x = torch.randn(2, 3, 56, 56)
    visible, predict = fixed_masks()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = CapiForPreTraining(tiny()).train()
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        out = model(x, visible_indices=visible, predict_indices=predict)
        out.loss.backward()
        grads.append(
            (out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        )
    torch.testing.assert_close(grads[1][0], grads[0][0])
    assert grads[0][1].keys() == grads[1][1].keys()
    for name in grads[0][1]:
        torch.testing.assert_close(grads[1][1][name], grads[0][1][name], atol=1e-6, rtol=1e-4, msg=name)


def test_pretraining_init_leaves_nothing_uninitialised():
    model = initialise_from_nan(CapiForPreTraining, tiny())
    assert model.clustering_head.weight.std() > 0.5  # N(0, 1) as the original
    assert torch.equal(model.prediction_head.magnitude, torch.ones_like(model.prediction_head.magnitude))


def test_pretraining_draws_masks_when_not_given():
    torch.manual_seed(0)
    model = CapiForPreTraining(tiny(mask_ratio=0.65, prediction_subsampling=0.5)).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 56, 56))
    assert out.student_logits.shape == (3 * 5, 32) and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="both"):
        model(torch.randn(1, 3, 56, 56), visible_indices=torch.tensor([[0]]))


def test_nan_check_interval_never_lets_a_broken_checkpoint_through(tmp_path):
    """With nan_check_steps > 1 the step before every checkpoint is still checked."""
    trainer = make_trainer(tmp_path, photo_dataset(), max_steps=8, save_steps=2, nan_check_steps=3)
    model = trainer.model
    original_forward = model.forward
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        out = original_forward(*args, **kwargs)
        if calls["n"] == 4:  # step 4: not a multiple of 3, but followed by checkpoint-4
            out.loss = out.loss * float("nan")
        return out

    model.forward = poisoned
    with pytest.raises(NonFiniteLossError, match="checkpoint-2"):
        trainer.train()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2"]


def test_original_weight_decay_groups(tmp_path):
    trainer = make_trainer(tmp_path, photo_dataset(4), original_weight_decay_groups=True)
    optimizer = trainer.create_optimizer()
    model = trainer.model
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert by_param[id(model.capi.embeddings.register_tokens)]["weight_decay"] == pytest.approx(0.1)
    assert by_param[id(model.capi.encoder.layer[0].norm1.weight)]["weight_decay"] == pytest.approx(0.01)
    assert by_param[id(model.capi.embeddings.patch_embeddings.projection.bias)]["weight_decay"] == 0.0


def test_converted_pretraining_folder_loads_quietly(converted_pretraining_dir):
    """Backbone and classifier from a converted folder with the pretraining heads: no UNEXPECTED wall."""
    from transformers import AutoModel, AutoModelForImageClassification

    from .model_test_mixin import ModelTesterMixin

    for auto_class, kwargs in ((AutoModel, {}), (AutoModelForImageClassification, {"num_labels": 3})):
        _, info, report = ModelTesterMixin.load_quietly(auto_class, converted_pretraining_dir, **kwargs)
        assert not info["unexpected_keys"], info
        assert "UNEXPECTED" not in report, report
