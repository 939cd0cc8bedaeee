"""The CAPI step's hot path (Sinkhorn, soft cross-entropy, target gather) gives the numbers of the plain
whole-tensor formulas it replaces; the glibc allocator switch applies and the trainer flag reaches it."""

import platform

import pytest
import torch
import torch.distributed as dist

from hf_mim import CapiConfig, CapiForPreTraining, allocator, losses
from hf_mim.losses import sinkhorn_knopp, soft_cross_entropy
from hf_mim.trainers import CapiTrainingArguments, MimPretrainingTrainer
from hf_mim.trainers import pretraining_trainer as pretraining_trainer_module


# ------------------------------------------------------------------------------------------------ references
@torch.no_grad()
def reference_sinkhorn(scores, num_iterations=3, eps=1e-8):
    """The out-of-place implementation this replaces, literally (hf_mim before the in-place version)."""
    scores = scores.clone()
    shift = scores.max(dim=-2, keepdim=True).values
    losses.all_reduce_(shift, dist.ReduceOp.MAX)
    scores += losses._EXP_OFFSET[scores.dtype] - shift
    assignments = scores.exp()
    for _ in range(num_iterations):
        assignments /= losses.all_reduce_(assignments.sum(dim=-2, keepdim=True)) + eps
        assignments /= assignments.sum(dim=-1, keepdim=True) + eps
    return assignments


def reference_soft_cross_entropy(targets, logits, temperature):
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return -(targets.to(logits.dtype) * torch.log_softmax(logits / temperature, dim=-1)).sum(dim=-1)


def reference_gather(assignments, predict):
    return assignments.transpose(0, 1).flatten(0, 1)[predict]


def direct_gather(assignments, predict):  # as CapiForPreTraining.forward gathers the targets
    positions, batch_size = assignments.shape[:2]
    return assignments.flatten(0, 1).index_select(0, (predict % positions) * batch_size + predict // positions)


TOLERANCE = {torch.float32: {"rtol": 1e-6, "atol": 0.0}, torch.float64: {"rtol": 1e-13, "atol": 0.0}}
# positionwise (positions, batch, K), several leading dims, and flat (samples, K)
SHAPES = [(16, 64, 512), (5, 7, 33), (3, 2, 4, 10), (100, 64), (64, 16)]


def random_scores(shape, dtype, scale=1 / 0.06):
    generator = torch.Generator().manual_seed(sum(shape))
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype)


# ------------------------------------------------------------------------------------------------ Sinkhorn
@pytest.mark.parametrize("chunk_bytes", [1, 1 << 20, 1 << 30])  # one problem per group, default, all in one group
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_sinkhorn_matches_the_out_of_place_reference(shape, dtype, chunk_bytes, monkeypatch):
    monkeypatch.setattr(losses, "_CHUNK_BYTES", chunk_bytes)
    scores = random_scores(shape, dtype)
    expected = reference_sinkhorn(scores)
    kept = scores.clone()
    torch.testing.assert_close(sinkhorn_knopp(scores), expected, **TOLERANCE[dtype])
    assert torch.equal(scores, kept)  # not in place: the input is untouched
    torch.testing.assert_close(sinkhorn_knopp(scores.clone(), inplace=True), expected, **TOLERANCE[dtype])
    for iterations in (1, 5):
        torch.testing.assert_close(
            sinkhorn_knopp(scores.clone(), iterations, inplace=True), reference_sinkhorn(scores, iterations)
        )


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_sinkhorn_temperature_divides_first(shape, inplace):
    logits = random_scores(shape, torch.float32, scale=1.0)
    expected = reference_sinkhorn(logits / 0.06)
    torch.testing.assert_close(sinkhorn_knopp(logits.clone(), temperature=0.06, inplace=inplace), expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_sinkhorn_in_place_allocates_no_copy(shape):
    scores = random_scores(shape, torch.float32)
    expected = reference_sinkhorn(scores)
    for temperature in (1.0, 0.5):
        owned = scores * temperature
        result = sinkhorn_knopp(owned, inplace=True, temperature=temperature)
        assert result.data_ptr() == owned.data_ptr() and result.shape == owned.shape
        torch.testing.assert_close(result, expected, rtol=1e-6, atol=1e-12)
        assert torch.equal(owned, result)  # consumed: the input now holds the assignments


def test_sinkhorn_non_contiguous_and_bfloat16():
    scores = random_scores((8, 6, 40), torch.float32).transpose(0, 1)  # (6, 8, 40), not contiguous
    torch.testing.assert_close(sinkhorn_knopp(scores), reference_sinkhorn(scores), rtol=1e-6, atol=0)
    half = random_scores((4, 8, 64), torch.bfloat16)  # runs in float32 on the exact up-cast (tests/test_bf16.py)
    result = sinkhorn_knopp(half.clone(), inplace=True)
    torch.testing.assert_close(result, reference_sinkhorn(half.float()), rtol=1e-6, atol=0)


@pytest.mark.parametrize("shape", [(16, 64, 512), (3, 2, 4, 10), (100, 64)])
def test_sinkhorn_distributed_path_all_reduces_as_before(shape, monkeypatch):
    """Across ranks the column sums and the max are all-reduced exactly as before: one MAX, then one SUM per
    iteration (a one-rank 'world' whose all-reduce is the identity), with the same numbers."""
    calls = []
    monkeypatch.setattr(losses, "_distributed", lambda: True)
    monkeypatch.setattr(losses.dist, "all_reduce", lambda tensor, op=None: calls.append((op, tuple(tensor.shape))))
    monkeypatch.setattr(losses, "_CHUNK_BYTES", 1)  # several groups
    scores = random_scores(shape, torch.float32)
    expected = reference_sinkhorn(scores)
    reference_calls, calls[:] = list(calls), []
    result = sinkhorn_knopp(scores.clone(), inplace=True)
    torch.testing.assert_close(result, expected, rtol=1e-6, atol=0)
    assert calls == reference_calls and len(calls) == 4 and calls[0][0] == dist.ReduceOp.MAX


# ------------------------------------------------------------------------------------------------ cross-entropy
@pytest.mark.parametrize("chunk_bytes", [1, 1 << 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1024, 512), (5, 7, 33), (3, 16)])
def test_soft_cross_entropy_matches_the_plain_formula(shape, dtype, chunk_bytes, monkeypatch):
    monkeypatch.setattr(losses, "_CHUNK_BYTES", chunk_bytes)
    logits = random_scores(shape, dtype, scale=3.0).requires_grad_()
    targets = reference_sinkhorn(random_scores(shape, torch.float32))
    loss = soft_cross_entropy(targets, logits, 0.12)
    expected = reference_soft_cross_entropy(targets, logits, 0.12)
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(loss.mean(), logits)
    (expected_grad,) = torch.autograd.grad(expected.mean(), logits)
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    tolerance = {"rtol": 2e-2, "atol": 1e-2 * expected_grad.abs().max().item()} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(grad.float(), expected_grad.float(), **tolerance)


def test_soft_cross_entropy_targets_with_grad_take_the_plain_formula():
    logits = random_scores((6, 10), torch.float32, scale=1.0).requires_grad_()
    targets = torch.softmax(random_scores((6, 10), torch.float32, scale=1.0), -1).requires_grad_()
    soft_cross_entropy(targets, logits, 0.5).sum().backward()
    assert targets.grad is not None and logits.grad is not None


# ------------------------------------------------------------------------------------------------ the model
@pytest.mark.parametrize("positions,batch", [(16, 8), (4, 3), (49, 2)])
def test_direct_target_gather_equals_transpose_gather(positions, batch):
    assignments = torch.rand(positions, batch, 12)
    predict = torch.randperm(positions * batch)[: positions * batch // 2]  # flat absolute b * N + n
    assert torch.equal(direct_gather(assignments, predict), reference_gather(assignments, predict))


def tiny(**overrides):
    return CapiConfig.tiny(**{"drop_path_rate": 0.0, "num_prototypes": 32, **overrides})


@pytest.mark.parametrize("positionwise", [True, False])
def test_clustering_head_and_targets_match_the_previous_computation(positionwise):
    torch.manual_seed(0)
    model = CapiForPreTraining(tiny(positionwise_sinkhorn=positionwise)).eval()
    x = torch.randn(3, 3, 56, 56)
    visible = torch.tensor([[0, 1, 4, 5, 8, 9], [5, 6, 9, 10, 13, 14], [0, 2, 4, 6, 8, 10]])
    predict = torch.tensor([[15, 2], [0, 3], [1, 7]])
    out = model(x, visible_indices=visible, predict_indices=predict)
    head, cfg = model.clustering_head, model.config
    with torch.no_grad():
        tokens = model.teacher.encode(x).tokens[:, cfg.num_register_tokens :].transpose(0, 1)
    logits = torch.nn.functional.linear(
        torch.nn.functional.normalize(tokens, dim=-1, eps=1e-7), head.weight, head.bias
    )
    scores = logits.detach() / cfg.target_temp
    if positionwise:
        assignments = reference_sinkhorn(scores, cfg.sinkhorn_iterations)
    else:
        assignments = reference_sinkhorn(scores.flatten(0, -2), cfg.sinkhorn_iterations).unflatten(
            0, scores.shape[:-1]
        )
    loss = reference_soft_cross_entropy(
        assignments.flatten(0, -2), logits.flatten(0, -2), cfg.clustering_pred_temp
    ).mean()
    predict_abs = predict + torch.arange(3)[:, None] * tokens.shape[0]
    torch.testing.assert_close(out.targets, reference_gather(assignments, predict_abs.flatten()), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.clustering_loss, loss, rtol=1e-6, atol=0)
    new_assignments, new_loss = head(tokens)
    (grad,) = torch.autograd.grad(new_loss, head.weight)
    (expected_grad,) = torch.autograd.grad(loss, head.weight)
    torch.testing.assert_close(new_assignments, assignments, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------------ allocator
needs_glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only"
)


@needs_glibc
def test_tune_glibc_malloc_applies_and_is_idempotent():
    assert allocator.tune_glibc_malloc() is True
    assert allocator.tune_glibc_malloc() is True  # again: nothing more to do, still in effect
    assert allocator._applied
    big = torch.empty(64 * 2**20 // 4)  # an allocation above the old mmap threshold still works
    big.fill_(1.0)
    assert big.sum().item() == big.numel()


def test_tune_glibc_malloc_is_a_no_op_off_glibc(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", False)
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.tune_glibc_malloc() is False
    assert not allocator._applied


def test_trainer_argument_applies_the_allocator_setting(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(pretraining_trainer_module, "tune_glibc_malloc", lambda: calls.append(1) or True)
    for flag, expected in ((False, []), (True, [1])):
        calls.clear()
        args = CapiTrainingArguments(
            output_dir=str(tmp_path), use_cpu=True, report_to="none", tune_malloc=flag, max_steps=1
        )
        MimPretrainingTrainer(model=CapiForPreTraining(tiny()), args=args)
        assert calls == expected
    assert CapiTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none").tune_malloc is False
