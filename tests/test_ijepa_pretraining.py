import math

import pytest
import torch
from transformers import AutoModel

from hf_mim import IJepaConfig, IJepaForPreTraining, IJepaModel
from hf_mim.data import PretrainingCollator, SafeImageTransform, pretraining_transform
from hf_mim.masking import MultiBlockMasking
from hf_mim.trainers import IJepaTrainer, IJepaTrainingArguments

from .helpers import run_script
from .test_capi_pretraining import photo_dataset


# --------------------------------------------------------------------------------- multi-block masking
def draw(masking, grid, n, batch=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [masking(batch, grid, generator) for _ in range(n)]


@pytest.mark.parametrize("sampler", ["uniform", "original"])
def test_multiblock_shapes_and_disjointness(sampler):
    masking = MultiBlockMasking(sampler=sampler)
    for masks in draw(masking, (16, 16), 10):
        # batch-first: (batch, num_masks, K)
        assert masks.context_indices.shape[:2] == (4, 1) and masks.target_indices.shape[:2] == (4, 4)
        assert masks.context_indices.shape[2] > 10 and masks.target_indices.shape[2] > 10
        for b in range(4):
            context = set(masks.context_indices[b, 0].tolist())
            targets = set(masks.target_indices[b].flatten().tolist())
            assert not context & targets  # allow_overlap=False
            assert len(context) == masks.context_indices.shape[2]  # no duplicates


def test_release_block_sizes_on_16x16():
    masking = MultiBlockMasking(sampler="original")
    generator = torch.Generator().manual_seed(0)
    sizes = {masking.block_size((16, 16), (0.15, 0.2), (0.75, 1.5), generator) for _ in range(200)}
    areas = [h * w for h, w in sizes]
    assert min(areas) >= 35 and max(areas) <= 54  # 15-20 % of 256 patches
    assert masking.block_size((16, 16), (0.85, 1.0), (1.0, 1.0), generator) == (15, 15)  # clamped below the grid


@pytest.mark.parametrize("sampler,reaches_edge", [("uniform", True), ("original", False)])
def test_last_row_and_column(sampler, reaches_edge):
    """The released sampler never covers the last patch row/column; the default one does."""
    masking = MultiBlockMasking(sampler=sampler)
    covered = torch.zeros(256, dtype=torch.bool)
    for masks in draw(masking, (16, 16), 40):
        covered[masks.context_indices.flatten()] = True
        covered[masks.target_indices.flatten()] = True
    edge = torch.cat([torch.arange(240, 256), torch.arange(15, 256, 16)])
    assert bool(covered[edge].any()) == reaches_edge
    if reaches_edge:
        assert covered.all()


def test_impossible_blocks_fail_fast():
    with pytest.raises(ValueError, match="min_keep"):
        MultiBlockMasking(min_keep=10)(2, (4, 4))


def test_multiblock_seeded():
    a = draw(MultiBlockMasking(), (14, 14), 3, seed=5)
    b = draw(MultiBlockMasking(), (14, 14), 3, seed=5)
    assert all(torch.equal(x.context_indices, y.context_indices) for x, y in zip(a, b))
    assert all(torch.equal(x.target_indices, y.target_indices) for x, y in zip(a, b))


# --------------------------------------------------------------------------------- trainer
def make_trainer(tmp_path, max_steps=4):
    config = IJepaConfig.tiny()
    torch.manual_seed(0)
    model = IJepaForPreTraining(config)
    args = IJepaTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=max_steps,
        warmup_steps=0.5,
        logging_steps=2,
        save_strategy="no",
        remove_unused_columns=False,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    dataset = photo_dataset(8).with_transform(
        SafeImageTransform(pretraining_transform(56, (0.3, 1.0), hflip=False, interpolation="bilinear"))
    )
    collator = PretrainingCollator.for_model(model)
    return IJepaTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)


def test_ijepa_parameter_groups_and_schedules(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=10)
    optimizer = trainer.create_optimizer()
    trainer.create_scheduler(10, optimizer)
    model = trainer.model
    by_param = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert by_param[id(model.predictor.mask_token)]["weight_decay"] == 0.04  # as the original init_opt
    assert by_param[id(model.ijepa.layers[0].attention.q_proj.bias)]["weight_decay"] == 0.0
    assert by_param[id(model.ijepa.layers[0].layernorm_before.weight)]["weight_decay"] == 0.0
    assert id(model.ijepa.embeddings.position_embeddings) not in by_param  # frozen sin-cos
    assert not any(id(p) in by_param for p in model.target_encoder.parameters())
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    # lr: warmup from 0.2 * peak (2e-4 -> 1e-3), cosine to 1e-6. The original advances its schedulers before each
    # optimizer step, so optimizer step k uses schedule step k + 1 (tests/test_trajectory_ijepa.py checks every step)
    warmup = trainer.args.get_warmup_steps(10)
    assert trainer.args.schedule_step_offset == 1 and warmup >= 1
    assert math.isclose(optimizer.param_groups[0]["lr"], 2e-4 + 8e-4 / warmup, rel_tol=1e-9)
    # weight decay: cosine *increasing* 0.04 -> 0.4 (the last step uses the final value); momentum linear 0.996 -> 1
    assert 0.04 < trainer.weight_decay_at(0) < trainer.weight_decay_at(5) and math.isclose(
        trainer.weight_decay_at(9), 0.4
    )
    assert math.isclose(trainer.teacher_momentum_at(0), 0.996)
    assert math.isclose(trainer.teacher_momentum_at(5), 0.998)
    assert math.isclose(trainer.teacher_momentum_at(10), 1.0)


def test_ijepa_training_moves_target_and_keeps_tables(tmp_path):
    trainer = make_trainer(tmp_path)
    model = trainer.model
    table = model.ijepa.embeddings.position_embeddings.clone()
    target_before = {n: p.clone() for n, p in model.target_encoder.named_parameters()}
    trainer.train()
    assert torch.equal(model.ijepa.embeddings.position_embeddings, table)
    moved = max((p - target_before[n]).abs().max().item() for n, p in model.target_encoder.named_parameters())
    assert moved > 0
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert {"prediction_loss", "teacher_momentum", "effective_rank", "feature_std"} <= logs[-1].keys()
    assert trainer.optimizer.param_groups[0]["weight_decay"] > 0.04  # the schedule was applied


def test_run_ijepa_embedded_default(tmp_path):
    result = run_script(
        "examples/pytorch/pretraining/run_ijepa.py",
        "--output_dir", str(tmp_path), "--max_steps", "3", "--per_device_train_batch_size", "4",
        "--report_to", "none", "--disable_tqdm", "true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    backbone = AutoModel.from_pretrained(tmp_path / "backbone")
    full = IJepaForPreTraining.from_pretrained(tmp_path)
    assert isinstance(backbone, IJepaModel)
    for name, tensor in backbone.state_dict().items():
        assert torch.equal(tensor, full.target_encoder.state_dict()[name]), name


def test_block_sizes_vary_across_loader_workers():
    """Sizes come from the RNG (seeded differently per worker and restored on resume), not a per-copy counter."""
    sizes = set()
    for seed in range(6):
        torch.manual_seed(seed)
        masks = MultiBlockMasking()(2, (16, 16))
        sizes.add(masks.target_indices.shape[-1])
    assert len(sizes) > 1
    a, b = MultiBlockMasking(sampler="original"), MultiBlockMasking(sampler="original")
    torch.manual_seed(0)
    first = a(2, (16, 16)).target_indices.shape
    torch.manual_seed(1)
    assert b(2, (16, 16)).target_indices.shape == first  # the original's counter: same size sequence
