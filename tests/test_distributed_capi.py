"""2-process CPU training (gloo) under DDP and FSDP2 gives the same EMA teacher as one process on the same global
batch; and the EMA update is exactly teacher * m + (1 - m) * student.

The subprocess runs use float64. In float32 the layouts differ by up to 2.5e-5 after 3 steps (measured): AdamW
(eps=1e-8) turns a gradient element that is pure summation noise (|g| ~ 7.6e-9 against a row max of 1.9e-2, in
encoder.layer.1.mlp.fc1.weight) into an update of ~0.4 * lr whose size depends on the reduction order. That is
float32 + Adam, not the parallel layout; float64 removes it and lets the test use a tolerance tight enough to see
gradient-scale mistakes that Adam's scale invariance would otherwise hide.
"""

import pytest
import torch

from hf_mim.models.capi.configuration_capi import CapiConfig
from hf_mim.models.capi.modeling_capi import CapiForPreTraining
from hf_mim.teacher import ema_update

from .distributed_launch import assert_same_teacher, run_layouts, weights
from .helpers import load_script

SCRIPT = "tests/distributed/capi_train_loop.py"
STEPS = 3


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return run_layouts(SCRIPT, {"single": 1, "ddp": 2, "fsdp2": 2}, tmp_path_factory.mktemp("capi_dist"), STEPS)


@pytest.fixture(scope="module")
def initial_teacher():
    model = load_script(SCRIPT).build_model(torch.float64)
    return {name: tensor.detach().clone() for name, tensor in model.teacher.state_dict(keep_vars=False).items()}


def test_teacher_moves(teachers, initial_teacher):
    single = weights(teachers["single"])
    assert initial_teacher.keys() <= single.keys()
    # Every teacher parameter moved (measured: 5.6e-4 to 5.9e-4 per tensor after 3 steps at momentum 0.9).
    moved = {name: (single[name] - initial_teacher[name]).abs().max().item() for name in initial_teacher}
    assert min(moved.values()) > 1e-4, {name: value for name, value in moved.items() if value <= 1e-4}


def test_ddp_teacher_matches_single_process(teachers):
    assert teachers["ddp"]["__world_size__"].item() == 2
    assert teachers["single"]["__world_size__"].item() == 1
    assert_same_teacher(teachers["ddp"], teachers["single"], 1e-9)  # measured max |diff|: 7.2e-14


def test_fsdp2_teacher_matches_single_process(teachers):
    assert teachers["fsdp2"]["__world_size__"].item() == 2
    assert teachers["fsdp2"]["__teacher_sharded__"].item() == 1, "FSDP2 teacher parameters were not sharded DTensors"
    assert_same_teacher(teachers["fsdp2"], teachers["single"], 1e-9)  # measured max |diff|: 7.6e-14


def test_ema_update_formula():
    torch.manual_seed(0)
    model = CapiForPreTraining(CapiConfig.tiny(num_hidden_layers=1, decoder_num_hidden_layers=1, num_prototypes=8))
    with torch.no_grad():
        for param in model.capi.parameters():
            param.add_(torch.randn_like(param))  # student != teacher
    momentum = 0.9
    teacher_before = {name: p.detach().clone() for name, p in model.teacher.named_parameters()}
    student = {name: p.detach().clone() for name, p in model.capi.named_parameters()}
    buffers_before = {name: b.clone() for name, b in model.teacher.named_buffers()}

    model.update_teacher(momentum)
    for name, param in model.teacher.named_parameters():
        expected = teacher_before[name] * momentum + (1 - momentum) * student[name]
        torch.testing.assert_close(param, expected, atol=1e-6, rtol=1e-6, msg=name)
        assert not param.requires_grad
    for name, buffer in model.teacher.named_buffers():
        assert torch.equal(buffer, buffers_before[name])
    for name, param in model.capi.named_parameters():
        assert torch.equal(param, student[name])  # the student is untouched

    # The free function on a plain module; momentum 1 is a no-op.
    teacher, source = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, source, 1.0)
    assert all(torch.equal(p, b) for p, b in zip(teacher.parameters(), before))
    ema_update(teacher, source, 0.25)
    for p, b, s in zip(teacher.parameters(), before, source.parameters()):
        torch.testing.assert_close(p, 0.25 * b + 0.75 * s.detach(), atol=1e-7, rtol=1e-6)
