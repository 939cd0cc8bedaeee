"""CAE v1 / v2 pretraining end to end on tiny models: run_cae.py (embedded default with its RANDOM target network, and
real target networks passed by path), CaeTrainer's parameter groups and schedule, bit-exact resume, 2-process DDP
against one process (float64), and ZeRO-3 on 2 CPU ranks. In every case the frozen target network (v1 DALL-E
tokenizer, v2 CLIP teacher) stays outside the trained model: never saved, optimised, averaged, partitioned or changed.

run_cae.py runs in-process (`run(recipe, argv)`, as `python run_cae.py ...` does): a few seconds per tiny run."""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForPreTraining, CLIPVisionConfig, CLIPVisionModelWithProjection

import hf_mim  # noqa: F401  (registers the Auto classes)
from hf_mim import CaeConfig, CaeForPreTraining, CaeModel
from hf_mim.data import SafeImageTransform, TwoViewCollator, TwoViewCropTransform
from hf_mim.models.cae.targets_cae import ClipTeacher
from hf_mim.models.cae.tokenizer_dalle import DalleTokenizer, DalleTokenizerConfig
from hf_mim.trainers import CaeTrainer, CaeTrainingArguments
from hf_mim.trainers.run_pretraining import run

from .distributed_launch import free_ports, max_diff, run_layouts, weights
from .helpers import REPO, StopAfter, load_script

EXAMPLE = "examples/pytorch/pretraining/run_cae.py"
TRAIN_LOOP = "tests/distributed/cae_train_loop.py"
ZERO3_SCRIPT = "tests/distributed/cae_zero3_train.py"
# no before / after learning report (tests/test_learning_report.py covers it): it probes the digits twice per run
TINY = ["--max_steps", "3", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--report_to", "none",
        "--disable_tqdm", "true", "--learning_report", "false"]  # fmt: skip
DDP_STEPS = 3


def tiny_clip(config: CaeConfig) -> CLIPVisionModelWithProjection:
    """A tiny random CLIP vision tower whose projection matches CaeConfig.tiny's target_hidden_size (24)."""
    clip = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            image_size=config.image_size, patch_size=config.patch_size,
                            projection_dim=config.target_hidden_size)  # fmt: skip
    return CLIPVisionModelWithProjection(clip)


def target_network(version: int, config: CaeConfig):
    torch.manual_seed(1)
    if version == 1:
        return DalleTokenizer(DalleTokenizerConfig.tiny(vocab_size=config.vocab_size))
    return ClipTeacher(tiny_clip(config))


def cae_script(trainer_class=None):
    recipe = load_script(EXAMPLE).CAE
    return recipe if trainer_class is None else dataclasses.replace(recipe, trainer_class=trainer_class)


def assert_no_target_keys(folder, model: CaeForPreTraining) -> None:
    """The saved weights are exactly the pretraining model's: no tokenizer / teacher tensor under any name."""
    expected = set(model.state_dict())
    for file in folder.glob("**/model.safetensors"):
        if file.parent.name == "backbone":
            continue
        keys = set(load_file(file))
        assert keys == expected, (file, sorted(keys ^ expected)[:10])
        assert not any(k.startswith(("_target", "target_model", "clip", "blocks.", "vision_model")) for k in keys)


# ------------------------------------------------------------------------------------------------ run_cae.py
@pytest.mark.parametrize("version", [1, 2])
def test_run_cae_embedded_default(version, tmp_path, caplog):
    output = tmp_path / "run"
    argv = ["--output_dir", str(output), "--cae_version", str(version), *TINY]
    assert run(cae_script(), argv) == 0
    assert f"RANDOM {'DALL-E tokenizer' if version == 1 else 'CLIP teacher'}" in caplog.text, caplog.text[-3000:]

    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    steps = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(steps) == 3
    for entry in steps:
        assert "prediction_loss" in entry and np.isfinite(entry["loss"])
        assert ("alignment_loss" in entry) == (version == 1), entry
    if version == 1:  # loss = cross-entropy + alignment (weight 2 inside alignment_loss)
        entry = steps[-1]
        assert entry["loss"] == pytest.approx(entry["prediction_loss"] + entry["alignment_loss"], rel=1e-5)

    backbone = AutoModel.from_pretrained(output / "backbone")
    assert type(backbone) is CaeModel and backbone.config.cae_version == version
    full, info = AutoModelForPreTraining.from_pretrained(output, output_loading_info=True)
    assert type(full) is CaeForPreTraining and full.config.cae_version == version
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert full.target_model is None  # never saved, so never loaded
    for name, tensor in backbone.state_dict().items():
        assert torch.equal(tensor, full.cae.state_dict()[name]), name
    assert_no_target_keys(output, full)


@pytest.mark.parametrize(("patch_size", "image_size", "tokenizer_view"), [(16, 224, 112), (16, 64, 32), (8, 64, 64)])
def test_run_cae_tokenizer_view_gives_one_token_per_patch(patch_size, image_size, tokenizer_view):
    """The DALL-E encoder downsamples 8x: its view is (image_size / patch_size) * 8 px (the original's 112 for 224 /
    16), so the token grid equals the patch grid for any patch size; --crop_scale_min reaches both CAE transforms."""
    script = load_script(EXAMPLE)
    data_args = SimpleNamespace(crop_scale_min=None)  # the one DataArguments field the transform reads
    config = CaeConfig.tiny(patch_size=patch_size, image_size=image_size)
    v1 = script.transform(config, data_args, image_size, None)
    assert v1.second_size == tokenizer_view and v1.scale == (0.08, 1.0)
    tokenizer = DalleTokenizer(DalleTokenizerConfig.tiny(vocab_size=config.vocab_size))
    ids = tokenizer.get_codebook_indices(torch.zeros(1, 3, tokenizer_view, tokenizer_view))
    assert ids.shape == (1, (image_size // patch_size) ** 2)
    data_args.crop_scale_min = 0.4
    assert script.transform(config, data_args, image_size, None).scale == (0.4, 1.0)
    config_v2 = CaeConfig.tiny(cae_version=2)
    assert script.transform(config_v2, data_args, 64, None).scale == (0.4, 1.0)


@pytest.mark.parametrize("version", [1, 2])
def test_run_cae_with_target_network_folder(version, tmp_path, caplog):
    """A real (tiny, random) DalleTokenizer / CLIP folder passed by path is loaded, attached and trained against."""
    config = CaeConfig.tiny(cae_version=version)
    target = target_network(version, config)
    folder = tmp_path / ("tokenizer" if version == 1 else "clip")
    (target if version == 1 else target.clip).save_pretrained(folder)
    attached = {}

    class Recording(CaeTrainer):
        def __init__(self, *args, **kwargs):
            attached["target"] = kwargs["model"].target_model
            super().__init__(*args, **kwargs)

    flag = "--tokenizer_name_or_path" if version == 1 else "--teacher_name_or_path"
    argv = ["--output_dir", str(tmp_path / "run"), "--cae_version", str(version), flag, str(folder), *TINY]
    assert run(cae_script(Recording), argv) == 0
    assert "RANDOM" not in caplog.text
    loaded = attached["target"]
    assert type(loaded) is (DalleTokenizer if version == 1 else ClipTeacher)
    reference = target.state_dict()
    for name, tensor in loaded.state_dict().items():  # the folder's weights, unchanged by training
        assert torch.equal(tensor, reference[name]), name
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert all(np.isfinite(e["loss"]) and "prediction_loss" in e for e in state["log_history"] if "loss" in e)
    assert_no_target_keys(tmp_path / "run", CaeForPreTraining(config))


# ------------------------------------------------------------------------------------------------ CaeTrainer
def photo_dataset(n=12):
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 255, (72, 80, 3), dtype=np.uint8)) for _ in range(n)]
    dataset = datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image(decode=False))
    return dataset.with_transform(SafeImageTransform(TwoViewCropTransform.cae_v2(64)))


def make_trainer(output_dir, version=2, **overrides):
    config = CaeConfig.tiny(cae_version=version, drop_path_rate=0.1)  # drop path: the resume must restore RNG too
    torch.manual_seed(0)
    model = CaeForPreTraining(config)
    model.set_target_model(target_network(version, config))
    args = CaeTrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=4, max_steps=overrides.pop("max_steps", 6),
        save_steps=overrides.pop("save_steps", 100), save_strategy="steps", logging_steps=2,
        remove_unused_columns=False, report_to="none", use_cpu=True, dataloader_num_workers=0, seed=0, data_seed=0,
        disable_tqdm=True, **overrides,
    )  # fmt: skip
    collator = TwoViewCollator.for_model(model)
    return CaeTrainer(model=model, args=args, train_dataset=photo_dataset(), data_collator=collator)


@pytest.mark.parametrize("version", [1, 2])
def test_parameter_groups_and_schedule(version, tmp_path):
    trainer = make_trainer(tmp_path, version, max_steps=300)
    model, target = trainer.model, trainer.model.target_model
    optimizer = trainer.create_optimizer()
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["lr"] == no_decay["lr"] == 1.5e-3
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert not decayed & not_decayed
    assert decayed | not_decayed == {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"cae.embeddings.cls_token", "mask_token", "cae.embeddings.patch_embeddings.projection.weight"} <= decayed
    assert all(model.get_parameter(n).ndim > 1 and not n.endswith(".bias") for n in decayed)
    assert all(model.get_parameter(n).ndim == 1 for n in not_decayed)  # biases, norms, layer scales
    assert any(n.endswith(".bias") for n in not_decayed) and any("lambda" in n for n in not_decayed)
    # The fixed sin-cos tables are frozen parameters, the target network is not a parameter of the model at all.
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"cae.embeddings.position_embeddings", "regressor_position_embeddings"}
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in target.parameters()}
    assert not {id(p) for p in model.parameters()} & {id(p) for p in target.parameters()}
    assert not any(p.requires_grad for p in target.parameters())

    args = trainer.args
    assert args.max_grad_norm == 3.0 and args.adam_beta1 == 0.9 and args.adam_beta2 == 0.999
    scheduler = trainer.create_scheduler(300, optimizer)
    lr = [scheduler.lr_lambdas[0](step) * args.learning_rate for step in range(301)]
    assert lr[0] == 0.0 and lr[10] == pytest.approx(1.5e-3)  # 10 of 300 epochs of linear warmup
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))  # then a cosine down
    assert lr[299] == pytest.approx(1e-5, rel=0.05) and lr[300] == pytest.approx(1e-5, rel=1e-6)


def test_resume_reproduces_uninterrupted_run(tmp_path):
    """CAE v2 with its (random) CLIP teacher attached: stopped after the checkpoint at step 3 and resumed from it,
    the run ends bit-identical to an uninterrupted one (data order, crops, masks and drop path restored)."""
    full = make_trainer(tmp_path / "full", max_steps=6)
    full.train()
    interrupted = make_trainer(tmp_path / "part", max_steps=6, save_steps=3)
    interrupted.add_callback(StopAfter(3))
    interrupted.train()
    assert interrupted.state.global_step == 3
    assert_no_target_keys(tmp_path / "part", interrupted.model)
    resumed = make_trainer(tmp_path / "part", max_steps=6, save_steps=3)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-3"))
    assert resumed.state.global_step == 6
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    assert any(not torch.equal(full_state[n], t) for n, t in interrupted.model.state_dict().items())
    for name in full_state:
        assert torch.equal(full_state[name], resumed_state[name]), name
    teacher = target_network(2, full.model.config).state_dict()
    for name, tensor in full.model.target_model.state_dict().items():
        assert torch.equal(tensor, teacher[name]), name


# ------------------------------------------------------------------------------------------------ 2-process DDP
@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    train_loop = load_script(TRAIN_LOOP)
    saved = run_layouts(TRAIN_LOOP, train_loop.LAYOUTS, tmp_path_factory.mktemp("cae_dist"), DDP_STEPS)
    return train_loop, saved


def version_part(state: dict, prefix: str) -> dict:
    return {name.removeprefix(prefix): t for name, t in weights(state).items() if name.startswith(prefix)}


def test_ddp_matches_single_process(layouts):
    train_loop, saved = layouts
    single, ddp = saved["single"], saved["ddp"]
    assert single["__world_size__"].item() == 1 and ddp["__world_size__"].item() == 2
    # float64 rounding (gradient sums in another order) amplified by Adam: measured v1 2.2e-12, v2 below 1e-12
    for version, bound in ((2, 1e-12), (1, 1e-10)):
        reference, other = version_part(single, f"v{version}."), version_part(ddp, f"v{version}.")
        initial = train_loop.build_model(version, torch.float64).state_dict()
        assert reference.keys() == other.keys() == initial.keys()
        assert all(t.dtype == torch.float64 for t in other.values())
        # Training moved the weights (AdamW at lr 1e-3: ~3e-3 after 3 steps).
        assert max_diff(reference, initial) > 1e-3
        for name in reference:
            torch.testing.assert_close(other[name], reference[name], atol=1e-8, rtol=1e-6, msg=name)
        # measured max |diff|: see the closing note; a wrong gradient average would differ by ~1e-3.
        assert max_diff(other, reference) < bound, (version, max_diff(other, reference))


def test_target_networks_untouched_by_ddp_training(layouts):
    train_loop, saved = layouts
    for state in saved.values():
        assert state["__target_in_ddp__"].item() == 0  # not among DDP's (broadcast, averaged) parameters
        assert state["__target_max_change__"].item() == 0.0  # unchanged on every rank
        for version in (1, 2):
            fresh = train_loop.build_target(version, torch.float64).state_dict()
            target = version_part(state, f"v{version}_target.")
            assert target.keys() == fresh.keys()
            assert all(torch.equal(target[name], fresh[name]) for name in fresh)


# ------------------------------------------------------------------------------------------------ ZeRO-3
@pytest.fixture(scope="module")
def zero3(tmp_path_factory):
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed")
    out = tmp_path_factory.mktemp("cae_zero3") / "facts.json"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_ports(1)[0]),
        str(REPO / ZERO3_SCRIPT), "--out", str(out), "--steps", "3",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out, json.loads(out.read_text())


def test_zero3_trains_with_a_full_frozen_teacher(zero3):
    out, facts = zero3
    assert facts["world_size"] == 2
    assert facts["student_partitioned"]  # really ZeRO-3 sharded
    assert not facts["teacher_partitioned"] and not facts["teacher_has_ds_id"]  # left whole, outside the engine
    assert facts["teacher_max_change"] == 0.0  # unchanged on both ranks
    assert len(facts["losses"]) == 3 and all(np.isfinite(facts["losses"]))
    model, info = AutoModelForPreTraining.from_pretrained(out.parent / "facts.json.model", output_loading_info=True)
    assert type(model) is CaeForPreTraining and model.config.cae_version == 2
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert_no_target_keys(out.parent / "facts.json.model", model)
    torch.manual_seed(0)
    initial = CaeForPreTraining(CaeConfig.tiny(cae_version=2, drop_path_rate=0.0)).state_dict()
    assert max_diff(model.state_dict(), initial) > 1e-4  # the consolidated weights are the trained ones


def test_zero3_target_network_loaded_after_the_training_arguments(zero3):
    """`load_target_model` (what run_cae.py's --teacher_name_or_path uses) loads the teacher whole even though the
    ZeRO-3 training arguments already exist (hf_mim.zero3.without_zero3_init)."""
    _, facts = zero3
    assert facts["target_loaded_after_arguments"] == "full", facts["target_loaded_after_arguments"]
