"""Fine-tuning recipe: layer-wise lr decay, Mixup / CutMix, label smoothing, RandAugment, top-k metrics, linear
probing, gradient accumulation, and the example script end to end (tiny models, tiny data)."""

import json
import os

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import EvalPrediction, ViTConfig, ViTForImageClassification

import hf_mim
from hf_mim.finetuning import (
    FinetuningArguments,
    FinetuningTrainer,
    MixupCutmix,
    build_compute_metrics,
    finetuning_eval_transform,
    finetuning_train_transform,
    layer_decay_parameter_groups,
    layer_id_for_parameter,
    num_backbone_layers,
    smooth_one_hot,
    topk_accuracy,
)

from .helpers import load_script, run_script

SCRIPT = "examples/pytorch/image-classification/run_image_classification.py"
BASE_LR, DECAY, WD = 1e-3, 0.5, 0.05


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread; on 2 busy cores two threads are up to ~30x slower (oversubscription)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def groups_by_name(groups):
    return {name: group for group in groups for name in group["param_names"]}


def ijepa_classifier(**kwargs):
    return hf_mim.IJepaForImageClassification(hf_mim.IJepaConfig.tiny(num_labels=10, **kwargs))


# ---------------------------------------------------------------- layer decay


def test_layer_ids_of_parameter_names():
    L = 12
    assert layer_id_for_parameter("ijepa.embeddings.patch_embeddings.projection.weight", L) == 0
    assert layer_id_for_parameter("ijepa.embeddings.position_embeddings", L) == 0
    assert layer_id_for_parameter("ijepa.layers.0.attention.q_proj.weight", L) == 1
    assert layer_id_for_parameter("ijepa.layers.11.mlp.fc2.bias", L) == 12
    assert layer_id_for_parameter("ijepa.layernorm.weight", L) == L + 1
    assert layer_id_for_parameter("classifier.weight", L) == L + 1
    assert layer_id_for_parameter("capi.embeddings.register_tokens", L) == 0
    assert layer_id_for_parameter("capi.encoder.layer.4.norm1.weight", L) == 5
    assert layer_id_for_parameter("capi.predictor.layer.0.mlp.fc1.weight", L) == L + 1
    assert layer_id_for_parameter("capi.predictor.mask_token", L) == L + 1
    assert layer_id_for_parameter("pooler.query", L) == L + 1
    # transformers' ViT family, before and after the 5.9 renaming
    assert layer_id_for_parameter("vit.embeddings.cls_token", L) == 0
    assert layer_id_for_parameter("vit.encoder.layer.3.attention.attention.query.weight", L) == 4
    assert layer_id_for_parameter("vit.layers.3.attention.q_proj.weight", L) == 4
    assert layer_id_for_parameter("dinov2.embeddings.mask_token", L) == 0


def test_layer_decay_ijepa_classifier():
    model = ijepa_classifier()
    L = num_backbone_layers(model)
    assert L == 2
    groups = layer_decay_parameter_groups(model, BASE_LR, WD, DECAY)
    by_name = groups_by_name(groups)
    assert set(by_name) == {name for name, _ in model.named_parameters()}  # every parameter exactly once
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))

    def lr(k):
        return BASE_LR * DECAY ** (L + 1 - k)

    block = by_name["ijepa.layers.0.attention.q_proj.weight"]
    assert block["lr"] == pytest.approx(lr(1)) == pytest.approx(BASE_LR * 0.25)
    assert block["weight_decay"] == WD
    assert by_name["ijepa.layers.1.mlp.fc1.weight"]["lr"] == pytest.approx(BASE_LR * 0.5)
    patch = by_name["ijepa.embeddings.patch_embeddings.projection.weight"]
    assert patch["lr"] == pytest.approx(lr(0)) == pytest.approx(BASE_LR * 0.125)
    assert patch["weight_decay"] == WD
    assert by_name["ijepa.embeddings.position_embeddings"]["lr"] == pytest.approx(lr(0))
    assert by_name["classifier.weight"]["lr"] == pytest.approx(BASE_LR)
    assert by_name["classifier.weight"]["weight_decay"] == WD
    assert by_name["ijepa.layernorm.weight"]["lr"] == pytest.approx(BASE_LR)
    # no weight decay on biases, norms, position embeddings
    for name in (
        "classifier.bias",
        "ijepa.layers.0.attention.q_proj.bias",
        "ijepa.layers.0.layernorm_before.weight",
        "ijepa.layernorm.weight",
        "ijepa.embeddings.position_embeddings",
        "ijepa.embeddings.patch_embeddings.projection.bias",
    ):
        assert by_name[name]["weight_decay"] == 0.0, name
    # decay 1: a single lr everywhere
    assert {g["lr"] for g in layer_decay_parameter_groups(model, BASE_LR, WD, 1.0)} == {BASE_LR}


def test_layer_decay_capi_classifier():
    # global_avg_patch pooling keeps predictor block 0, which must count as head, not as an encoder block
    model = hf_mim.CapiForImageClassification(
        hf_mim.CapiConfig.tiny(num_labels=10, classifier_pooling="global_avg_patch")
    )
    L = num_backbone_layers(model)
    assert L == 2  # the predictor's blocks are not encoder blocks
    by_name = groups_by_name(layer_decay_parameter_groups(model, BASE_LR, WD, DECAY))
    assert by_name["capi.encoder.layer.1.attention.q_proj.weight"]["lr"] == pytest.approx(BASE_LR * DECAY)
    assert by_name["capi.encoder.layer.0.mlp.fc1.weight"]["lr"] == pytest.approx(BASE_LR * DECAY**2)
    assert by_name["capi.encoder.layer.0.mlp.fc1.weight"]["weight_decay"] == WD
    registers = by_name["capi.embeddings.register_tokens"]
    assert registers["lr"] == pytest.approx(BASE_LR * DECAY**3) and registers["weight_decay"] == 0.0
    assert by_name["capi.embeddings.patch_embeddings.projection.weight"]["lr"] == pytest.approx(BASE_LR * DECAY**3)
    for name in ("classifier.weight", "capi.predictor.layer.0.mlp.fc1.weight"):
        assert by_name[name]["lr"] == pytest.approx(BASE_LR), name
    for name in ("classifier.bias", "capi.encoder.layer.0.norm1.weight", "capi.predictor.mask_token"):
        assert by_name[name]["weight_decay"] == 0.0, name
    attentive = hf_mim.CapiForImageClassification(hf_mim.CapiConfig.tiny(num_labels=10))
    by_name = groups_by_name(layer_decay_parameter_groups(attentive, BASE_LR, WD, DECAY))
    assert by_name["pooler.kv.weight"]["lr"] == pytest.approx(BASE_LR)
    assert by_name["pooler.query"]["weight_decay"] == 0.0


def test_layer_decay_cae_classifier():
    """CAE's fine-tuning recipe: layer id 0 = cls token / patch embedding, block k -> k + 1, head -> L + 1."""
    model = hf_mim.CaeForImageClassification(hf_mim.CaeConfig.tiny(num_labels=10, classifier_type="attentive"))
    L = num_backbone_layers(model)
    assert L == 2
    by_name = groups_by_name(layer_decay_parameter_groups(model, BASE_LR, WD, DECAY))
    assert by_name["cae.layers.1.attention.q_proj.weight"]["lr"] == pytest.approx(BASE_LR * DECAY)
    assert by_name["cae.layers.0.mlp.fc1.weight"]["lr"] == pytest.approx(BASE_LR * DECAY**2)
    assert by_name["cae.embeddings.cls_token"]["lr"] == pytest.approx(BASE_LR * DECAY**3)
    assert by_name["cae.embeddings.patch_embeddings.projection.weight"]["lr"] == pytest.approx(BASE_LR * DECAY**3)
    for name in ("classifier.weight", "pooler.attention.cross_attention.q_proj.weight", "cae.layernorm.weight"):
        assert by_name[name]["lr"] == pytest.approx(BASE_LR), name
    for name in ("cae.embeddings.cls_token", "cae.layers.0.layer_scale1.lambda1", "pooler.query_token"):
        assert by_name[name]["weight_decay"] == 0.0, name
    assert "cae.embeddings.position_embeddings" not in by_name  # fixed sin-cos table, not trained


def test_layer_decay_transformers_vit_and_frozen_parameters():
    config = ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                       image_size=32, patch_size=8, num_labels=3)  # fmt: skip
    model = ViTForImageClassification(config)
    assert num_backbone_layers(model) == 3
    model.vit.embeddings.requires_grad_(False)
    by_name = groups_by_name(layer_decay_parameter_groups(model, BASE_LR, WD, DECAY))
    assert not any(name.startswith("vit.embeddings") for name in by_name)  # frozen parameters are left out
    block = next(name for name in by_name if ".2." in name and name.endswith("weight") and "norm" not in name)
    assert by_name[block]["lr"] == pytest.approx(BASE_LR * DECAY)
    assert by_name["classifier.weight"]["lr"] == pytest.approx(BASE_LR)


# ---------------------------------------------------------------- mixup / cutmix / smoothing


def test_smooth_one_hot_and_soft_cross_entropy():
    targets = smooth_one_hot(torch.tensor([2, 0]), 4, 0.1)
    expected = torch.tensor([[0.025, 0.025, 0.925, 0.025], [0.925, 0.025, 0.025, 0.025]])
    torch.testing.assert_close(targets, expected)
    logits = torch.randn(2, 4)
    torch.testing.assert_close(
        torch.nn.functional.cross_entropy(logits, targets),  # the trainer's loss on mixed / smoothed targets
        torch.nn.functional.cross_entropy(logits, torch.tensor([2, 0]), label_smoothing=0.1),
    )


def test_mixup_targets_are_mixed_smoothed_one_hots():
    mixer = MixupCutmix(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=5)
    pixels = torch.randn(4, 3, 8, 8)
    labels = torch.tensor([0, 1, 3, 4])
    mixed, targets = mixer(pixels, labels, generator=torch.Generator().manual_seed(3))
    lam = mixer.last_lambda
    assert mixer.last_mode == "mixup" and 0.0 < lam < 1.0
    torch.testing.assert_close(targets.sum(-1), torch.ones(4))
    smooth = smooth_one_hot(labels, 5, 0.1)
    torch.testing.assert_close(targets, lam * smooth + (1 - lam) * smooth.flip(0))
    torch.testing.assert_close(mixed, lam * pixels + (1 - lam) * pixels.flip(0))
    # a generator (or the global seed) makes it reproducible
    again, _ = mixer(pixels, labels, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again, mixed)
    torch.manual_seed(7)
    first, _ = mixer(pixels, labels)
    torch.manual_seed(7)
    second, _ = mixer(pixels, labels)
    torch.testing.assert_close(first, second)


def test_cutmix_lambda_is_box_area_and_outside_is_unchanged():
    mixer = MixupCutmix(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=3)
    pixels = torch.arange(4 * 3 * 16 * 16, dtype=torch.float32).reshape(4, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 1])
    checked = 0
    for seed in range(6):
        mixed, targets = mixer(pixels, labels, generator=torch.Generator().manual_seed(seed))
        assert mixer.last_mode == "cutmix"
        top, bottom, left, right = mixer.last_box
        area = (bottom - top) * (right - left)
        assert mixer.last_lambda == pytest.approx(1 - area / 256)
        inside = torch.zeros(16, 16, dtype=torch.bool)
        inside[top:bottom, left:right] = True
        torch.testing.assert_close(mixed[..., ~inside], pixels[..., ~inside])
        torch.testing.assert_close(mixed[..., inside], pixels.flip(0)[..., inside])
        one_hot = smooth_one_hot(labels, 3, 0.0)
        lam = mixer.last_lambda
        torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot.flip(0))
        torch.testing.assert_close(targets.sum(-1), torch.ones(4))
        checked += 0 < area < 256
    assert checked >= 3  # most draws paste a proper box


def test_mixup_switch_and_probability():
    both = MixupCutmix(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, num_classes=10)
    generator = torch.Generator().manual_seed(0)
    modes = {both.sample(generator)[1] for _ in range(50)}
    assert modes == {"mixup", "cutmix"}
    never = MixupCutmix(prob=0.0, label_smoothing=0.1, num_classes=10)
    pixels, labels = torch.randn(2, 3, 4, 4), torch.tensor([1, 2])
    mixed, targets = never(pixels, labels)
    assert never.last_mode is None
    torch.testing.assert_close(mixed, pixels)
    torch.testing.assert_close(targets, smooth_one_hot(labels, 10, 0.1))


# ---------------------------------------------------------------- transforms


def noise_image(size=64) -> PIL.Image.Image:
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, size, dtype=np.float64)[None, :, None]
    array = np.clip(gradient + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    return PIL.Image.fromarray(array)


def test_rand_augment_changes_the_image_and_is_seeded():
    image = noise_image()
    # scale (1, 1) on a square image: the crop is the whole image, so only RandAugment is random here
    plain = finetuning_train_transform(64, crop_scale=(1.0, 1.0), hflip=False, rand_augment=False)
    augmented = finetuning_train_transform(64, crop_scale=(1.0, 1.0), hflip=False, rand_augment=True)
    reference = plain(image)
    assert reference.shape == (3, 64, 64)
    changed = 0
    for seed in range(4):
        torch.manual_seed(seed)
        first = augmented(image)
        torch.manual_seed(seed)
        second = augmented(image)
        torch.testing.assert_close(first, second)
        changed += not torch.allclose(first, reference)
    assert changed >= 3
    evaluation = finetuning_eval_transform(56, crop_pct=0.875)
    out = evaluation(image)
    assert out.shape == (3, 56, 56)
    torch.testing.assert_close(out, evaluation(image))


# ---------------------------------------------------------------- metrics


def test_topk_accuracy_on_a_crafted_example():
    logits = torch.tensor(
        [
            [9.0, 8.0, 7.0, 6.0, 5.0, 4.0],  # label 0: top-1 hit
            [9.0, 8.0, 7.0, 6.0, 5.0, 4.0],  # label 4: rank 5 -> top-5 hit only
            [9.0, 8.0, 7.0, 6.0, 5.0, 4.0],  # label 5: rank 6 -> miss
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # label 1: rank 5 -> top-5 hit only
        ]
    )
    labels = torch.tensor([0, 4, 5, 1])
    metrics = topk_accuracy(logits, labels, num_classes=6)
    assert metrics["top1"] == pytest.approx(0.25)
    assert metrics["top5"] == pytest.approx(0.75)
    assert metrics["top5"] >= metrics["top1"]
    from_trainer = build_compute_metrics(6)(EvalPrediction(predictions=logits.numpy(), label_ids=labels.numpy()))
    assert from_trainer == metrics
    assert topk_accuracy(logits[:, :3], torch.tensor([2, 1, 0, 2]), num_classes=3)["top5"] == 1.0  # k capped at C


# ---------------------------------------------------------------- trainer


def tiny_dataset(count=8, classes=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(count, 3, 56, 56, generator=generator)
    labels = torch.randint(0, classes, (count,), generator=generator)
    return [{"pixel_values": pixels[i], "labels": labels[i]} for i in range(count)]


def collate(examples):
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.stack([e["labels"] for e in examples]),
    }


def make_trainer(model, tmp_path, name, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / name), max_steps=1, per_device_train_batch_size=8, save_strategy="no",
        eval_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, warmup_steps=0, logging_steps=100,
        dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    args = FinetuningArguments(**{**defaults, **kwargs})
    return FinetuningTrainer(model=model, args=args, train_dataset=tiny_dataset(), data_collator=collate)


def test_linear_probe_trains_only_the_head(tmp_path):
    model = ijepa_classifier()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    trainer = make_trainer(model, tmp_path, "probe", linear_probe=True, learning_rate=1e-2)
    assert set(trainer.trainable_parameter_names) == {"classifier.weight", "classifier.bias"}
    trainer.train()
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(model.classifier.weight), id(model.classifier.bias)}
    after = model.state_dict()
    for name, value in before.items():
        if name.startswith("ijepa."):
            torch.testing.assert_close(after[name], value, rtol=0, atol=0, msg=name)
    assert not torch.equal(after["classifier.weight"], before["classifier.weight"])


def test_finetuning_uses_layer_decay_groups_and_mixup(tmp_path):
    model = ijepa_classifier()
    trainer = make_trainer(model, tmp_path, "ft", learning_rate=1e-3, layer_decay=0.5, lr_scheduler_type="constant")
    assert trainer.mixup is not None and trainer.compute_metrics is not None
    trainer.create_optimizer()
    lrs = {group["layer_id"]: group["lr"] for group in trainer.optimizer.param_groups}
    assert lrs == pytest.approx({0: 1.25e-4, 1: 2.5e-4, 2: 5e-4, 3: 1e-3})
    trainer.train()
    assert trainer.mixup.last_mode in ("mixup", "cutmix")
    assert np.isfinite(trainer.state.log_history[-1]["train_loss"])


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    """One SGD step with 2 x 4 accumulated images equals one step on the 8 images at once."""
    common = dict(optim="sgd", learning_rate=0.5, weight_decay=0.0, max_grad_norm=0.0, mixup_alpha=0.0,
                  cutmix_alpha=0.0, label_smoothing=0.0, layer_decay=0.75, lr_scheduler_type="constant")  # fmt: skip
    torch.manual_seed(0)
    reference = ijepa_classifier()
    initial = {name: value.clone() for name, value in reference.state_dict().items()}
    make_trainer(reference, tmp_path, "big", per_device_train_batch_size=8, **common).train()
    accumulated = ijepa_classifier()
    accumulated.load_state_dict(initial)
    trainer = make_trainer(
        accumulated, tmp_path, "acc", per_device_train_batch_size=4, gradient_accumulation_steps=2, **common
    )
    trainer.train()
    assert trainer.state.global_step == 1
    moved = 0
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(accumulated.state_dict()[name], value, rtol=1e-4, atol=1e-6, msg=name)
        moved += not torch.equal(value, initial[name])
    assert moved > 0


# ---------------------------------------------------------------- the example script


def test_script_loads_a_pretraining_backbone_folder(tmp_path):
    script = load_script(SCRIPT)
    backbone = hf_mim.IJepaModel(hf_mim.IJepaConfig.tiny())
    backbone.save_pretrained(tmp_path / "backbone")
    args = script.ModelArguments(model_name_or_path=str(tmp_path / "backbone"), drop_path_rate=0.1)
    model = script.build_model(args, [str(d) for d in range(10)], seed=0)
    assert isinstance(model, hf_mim.IJepaForImageClassification)
    assert model.config.num_labels == 10 and model.config.id2label[3] == "3"
    assert model.config.drop_path_rate == 0.1
    for name, value in backbone.state_dict().items():
        torch.testing.assert_close(model.ijepa.state_dict()[name], value, msg=name)


def test_script_end_to_end_with_gradient_accumulation(tmp_path):
    output = tmp_path / "run"
    result = run_script(
        SCRIPT,
        "--output_dir", str(output), "--num_train_epochs", "1", "--max_train_samples", "64",
        "--max_eval_samples", "64", "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "2",
        "--save_strategy", "no", "--disable_tqdm", "true", "--dataloader_num_workers", "0", "--use_cpu", "true",
        env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["train_images"] == 64 and printed["eval_images"] == 64 and printed["image_size"] == 56
    assert 0.0 <= printed["top1"] <= printed["top5"] <= 1.0
    assert np.isfinite(printed["train_loss"])
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 2  # 64 images / (16 x 2)
    evaluation = json.loads((output / "eval_results.json").read_text())
    assert evaluation["eval_top1"] == pytest.approx(printed["top1"], abs=1e-4)
    config = json.loads((output / "config.json").read_text())
    assert config["model_type"] == "hf_mim_ijepa" and len(config["id2label"]) == 10
    assert (output / "preprocessor_config.json").exists()
