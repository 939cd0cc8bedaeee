"""`hf_mim.optim.LARS` against a plain transcription of VICRegL's LARS (shared/reference/vicregl.md §3.3;
facebookresearch/VICRegL `optimizers.py`), the difference from timm's trust ratio, and `VicreglTrainer`'s optimizer
choice, parameter groups and batch-scaled learning rate."""

import math

import pytest
import torch
from torch import nn

from hf_mim import VicreglConfig, VicreglForPreTraining
from hf_mim.optim import LARS
from hf_mim.trainers import VicreglTrainer, VicreglTrainingArguments

DTYPE = torch.float64
ETA, MOMENTUM, LARS_WD = 1e-3, 0.9, 1e-6


# ====================================================================================== the reference, transcribed
def ref_norm(t: torch.Tensor) -> float:
    return math.sqrt(sum(v * v for v in t.flatten().tolist()))


def ref_lars_run(params, grads, lrs, weight_decay=LARS_WD, momentum=MOMENTUM, eta=ETA, trust="vicregl"):
    """Parameters after len(lrs) steps. Parameters with more than one dimension: update u = g + wd * p scaled by
    the trust ratio; 1-D parameters: u = g (no decay, no adaptation). mu = momentum * mu + u; p -= lr * mu.

    trust="vicregl" (the original): eta * ||p|| / ||g + wd p||, 1 when either norm is 0.
    trust="timm" (timm.optim.Lars): eta * ||p|| / (||g|| + wd ||p|| + 1e-8), 1 when ||p|| or ||g|| is 0."""
    params = [p.detach().clone() for p in params]
    buffers = [torch.zeros_like(p) for p in params]
    for step, lr in enumerate(lrs):
        for index, p in enumerate(params):
            g = grads[step][index]
            if g is None:
                continue
            if p.ndim > 1:
                update = g + weight_decay * p
                p_norm = ref_norm(p)
                if trust == "vicregl":
                    u_norm = ref_norm(update)
                    ratio = eta * p_norm / u_norm if p_norm > 0 and u_norm > 0 else 1.0
                else:
                    g_norm = ref_norm(g)
                    ratio = (
                        eta * p_norm / (g_norm + weight_decay * p_norm + 1e-8) if p_norm > 0 and g_norm > 0 else 1.0
                    )
                update = update * ratio
            else:
                update = g
            buffers[index] = momentum * buffers[index] + update
            params[index] = p - lr * buffers[index]
    return params


# ====================================================================================== helpers
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)  # 4-D weight, 1-D bias
        self.norm = nn.BatchNorm2d(3)  # 1-D weight and bias
        self.fc = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2, bias=False)


def lars_for(model: nn.Module, lr: float, weight_decay: float = LARS_WD) -> LARS:
    """LARS on `VicreglTrainer.parameter_groups`, built as `VicreglTrainer.create_optimizer` builds it."""
    groups = VicreglTrainer.parameter_groups(None, model)
    groups = [{**g, "lr": lr, "weight_decay": weight_decay * g["weight_decay_multiplier"]} for g in groups]
    return LARS(groups, lr=lr, momentum=MOMENTUM, eta=ETA)


def run_steps(model, optimizer, grads, lrs):
    params = list(model.parameters())
    for step, lr in enumerate(lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr  # the schedule sets the lr per step, as the original does
        for p, g in zip(params, grads[step]):
            p.grad = None if g is None else g.clone()
        optimizer.step()
    return [p.detach().clone() for p in params]


def random_grads(gen, params, steps, scale=1.0):
    return [[scale * torch.randn(p.shape, generator=gen, dtype=DTYPE) for p in params] for _ in range(steps)]


def max_abs_diff(a_list, b_list) -> float:
    return max((a - b).abs().max().item() for a, b in zip(a_list, b_list, strict=True))


# ====================================================================================== LARS vs the transcription
def test_parameter_groups_split_by_ndim():
    model = Tiny()
    matrices, vectors = VicreglTrainer.parameter_groups(None, model)
    assert {id(p) for p in matrices["params"]} == {id(model.conv.weight), id(model.fc.weight), id(model.head.weight)}
    assert {id(p) for p in vectors["params"]} == {
        id(model.conv.bias),
        id(model.norm.weight),
        id(model.norm.bias),
        id(model.fc.bias),
    }
    assert matrices["weight_decay_multiplier"] == 1.0 and matrices["lars_adaptation"] is True
    assert vectors["weight_decay_multiplier"] == 0.0 and vectors["lars_adaptation"] is False


@pytest.mark.parametrize("weight_decay", [LARS_WD, 0.1])
def test_lars_matches_reference_five_steps(weight_decay):
    torch.manual_seed(0)
    model = Tiny().double()
    with torch.no_grad():
        model.norm.weight.normal_(1.0, 0.2)
        model.norm.bias.normal_(0.0, 0.2)
    initial = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(1)
    grads = random_grads(gen, initial, 5, scale=0.3)
    lrs = [0.2, 0.3, 0.25, 0.1, 0.05]
    actual = run_steps(model, lars_for(model, lrs[0], weight_decay), grads, lrs)
    expected = ref_lars_run(initial, grads, lrs, weight_decay=weight_decay)
    assert max_abs_diff(actual, expected) <= 1e-12
    # every parameter moved (1-D ones by plain momentum SGD, the others by the adapted step)
    assert all((a - b).abs().max() > 1e-6 for a, b in zip(actual, initial))


def test_one_dimensional_parameters_are_plain_momentum_sgd():
    torch.manual_seed(0)
    model = Tiny().double()
    initial = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(2)
    grads = random_grads(gen, initial, 2)
    actual = run_steps(model, lars_for(model, 0.5), grads, [0.5, 0.5])
    for p0, p1, g0, g1 in zip(initial, actual, grads[0], grads[1]):
        if p0.ndim == 1:  # mu1 = g0, mu2 = 0.9 g0 + g1
            torch.testing.assert_close(p1, p0 - 0.5 * g0 - 0.5 * (0.9 * g0 + g1), rtol=0, atol=1e-14)


def _single(param: torch.Tensor, grad: torch.Tensor | None, weight_decay: float, lr: float = 0.5):
    p = nn.Parameter(param.clone())
    p.grad = None if grad is None else grad.clone()
    optimizer = LARS([{"params": [p], "lars_adaptation": True}], lr=lr, weight_decay=weight_decay, eta=ETA)
    optimizer.step()
    expected = ref_lars_run([param], [[grad]], [lr], weight_decay=weight_decay)[0]
    return p.detach(), expected, optimizer


def test_zero_norm_parameter_trust_ratio_one():
    grad = torch.randn(3, 4, dtype=DTYPE)
    p, expected, _ = _single(torch.zeros(3, 4, dtype=DTYPE), grad, LARS_WD)
    torch.testing.assert_close(p, -0.5 * grad, rtol=0, atol=1e-15)  # ||p|| = 0: trust 1, u = g
    torch.testing.assert_close(p, expected, rtol=0, atol=1e-15)


def test_zero_gradient_edge_cases():
    param = torch.randn(3, 4, dtype=DTYPE)
    zero = torch.zeros(3, 4, dtype=DTYPE)
    # no weight decay: ||u|| = 0 -> trust 1, no NaN, nothing moves
    p, expected, _ = _single(param, zero, 0.0)
    assert torch.equal(p, param) and torch.equal(expected, param)
    # parameter and gradient both zero: stays zero
    p, _, _ = _single(zero, zero, LARS_WD)
    assert torch.equal(p, zero)
    # zero gradient with weight decay: u = wd p, trust = eta / wd -> the step is eta * p
    p, expected, _ = _single(param, zero, LARS_WD)
    torch.testing.assert_close(p, param - 0.5 * ETA * param, rtol=0, atol=1e-14)
    torch.testing.assert_close(p, expected, rtol=0, atol=1e-14)
    # no gradient at all: skipped, no state
    p, _, optimizer = _single(param, None, LARS_WD)
    assert torch.equal(p, param) and len(optimizer.state) == 0


def test_differs_from_timm_trust_ratio():
    """timm's Lars: trust = eta ||w|| / (||g|| + wd ||w|| + eps); VICRegL's: eta ||w|| / ||g + wd w||. Equal only
    when g and w are parallel (or wd = 0); with wd = 0.1 the trajectories separate measurably."""
    torch.manual_seed(0)
    model = Tiny().double()
    initial = [p.detach().clone() for p in model.parameters()]
    gen = torch.Generator().manual_seed(3)
    grads = random_grads(gen, initial, 5, scale=0.3)
    lrs = [0.3] * 5
    actual = run_steps(model, lars_for(model, 0.3, 0.1), grads, lrs)
    vicregl = ref_lars_run(initial, grads, lrs, weight_decay=0.1)
    timm = ref_lars_run(initial, grads, lrs, weight_decay=0.1, trust="timm")
    assert max_abs_diff(actual, vicregl) <= 1e-12
    # the two trust ratios on one step, one matrix
    w, g = initial[0], grads[0][0]
    ours = ETA * ref_norm(w) / ref_norm(g + 0.1 * w)
    theirs = ETA * ref_norm(w) / (ref_norm(g) + 0.1 * ref_norm(w) + 1e-8)
    assert abs(ours - theirs) / ours > 1e-3
    moved = [(a - i).abs().max().item() for a, i in zip(actual, initial) if a.ndim > 1]
    gaps = [(a - t).abs().max().item() for a, t in zip(actual, timm) if a.ndim > 1]
    assert all(gap > 1e-3 * step for gap, step in zip(gaps, moved)), (gaps, moved)


# ====================================================================================== VicreglTrainer's optimizer
def _trainer(tmp_path, config, **overrides):
    args = VicreglTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=4,
        use_cpu=True,
        report_to="none",
        **overrides,
    )
    return VicreglTrainer(model=VicreglForPreTraining(config), args=args)


def _check_groups(model, optimizer, matrix_decay):
    groups = optimizer.param_groups
    matrices = {id(p) for p in model.parameters() if p.ndim > 1}
    vectors = {id(p) for p in model.parameters() if p.ndim == 1}
    assert matrices and vectors
    by_set = {frozenset(id(p) for p in g["params"]): g for g in groups}
    assert set(by_set) == {frozenset(matrices), frozenset(vectors)}
    assert by_set[frozenset(matrices)]["weight_decay"] == matrix_decay
    assert by_set[frozenset(vectors)]["weight_decay"] == 0.0
    return by_set[frozenset(matrices)], by_set[frozenset(vectors)]


def test_trainer_uses_lars_for_resnet(tmp_path):
    trainer = _trainer(tmp_path, VicreglConfig.tiny_resnet())
    assert trainer.args.learning_rate == pytest.approx(0.3 * 8 / 256, rel=1e-12)
    optimizer = trainer.create_optimizer()
    assert type(optimizer) is LARS
    matrices, vectors = _check_groups(trainer.model, optimizer, LARS_WD)
    assert matrices["lars_adaptation"] is True and vectors["lars_adaptation"] is False
    for group in optimizer.param_groups:
        assert group["lr"] == trainer.args.learning_rate
        assert group["momentum"] == MOMENTUM and group["eta"] == ETA


def test_trainer_uses_adamw_for_convnext(tmp_path):
    trainer = _trainer(tmp_path, VicreglConfig.tiny())
    assert trainer.args.learning_rate == pytest.approx(7.5e-4 * 8 / 256, rel=1e-12)
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW)
    _check_groups(trainer.model, optimizer, 0.05)
    for group in optimizer.param_groups:
        assert group["lr"] == trainer.args.learning_rate
        assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8
        assert "lars_adaptation" not in group


def test_trainer_learning_rate_rules(tmp_path):
    explicit = _trainer(tmp_path / "a", VicreglConfig.tiny_resnet(), learning_rate=0.01)
    assert explicit.args.learning_rate == 0.01  # an explicit --learning_rate is kept as is
    assert all(g["lr"] == 0.01 for g in explicit.create_optimizer().param_groups)
    base = _trainer(tmp_path / "b", VicreglConfig.tiny(), base_learning_rate=5e-4)
    assert base.args.learning_rate == pytest.approx(5e-4 * 8 / 256, rel=1e-12)
    forced = _trainer(tmp_path / "c", VicreglConfig.tiny(), vicregl_optimizer="lars")
    assert forced.args.learning_rate == pytest.approx(0.3 * 8 / 256, rel=1e-12)
    assert type(forced.create_optimizer()) is LARS
