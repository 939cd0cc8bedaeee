"""I-JEPA under 2-process CPU training (gloo): DDP and FSDP2 give the same EMA target encoder as one process on the
same global batch (float64, fixed equal-length masks per image); and the real example script trains under 2-process
DDP through `accelerate launch` and writes an AutoModel-loadable backbone.

Startup (imports) dominates every subprocess here.
"""

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from .distributed_launch import ENV, assert_same_teacher, free_ports, run_layouts, start, wait, weights
from .helpers import REPO, load_script

SCRIPT = "tests/distributed/ijepa_train_loop.py"
EXAMPLE = "examples/pytorch/pretraining/run_ijepa.py"
ACCELERATE_CONFIG = "examples/pytorch/pretraining/accelerate_configs/cpu_ddp_2proc.yaml"
STEPS = 3
# No gradient reaches these: the position table is frozen, and a key bias shifts every logit of a softmax row equally.
NOT_TRAINED = ("embeddings.position_embeddings", "layers.0.attention.k_proj.bias", "layers.1.attention.k_proj.bias")


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return run_layouts(SCRIPT, {"single": 1, "ddp": 2, "fsdp2": 2}, tmp_path_factory.mktemp("ijepa_dist"), STEPS)


@pytest.fixture(scope="module")
def initial_teacher():
    model = load_script(SCRIPT).build_model(torch.float64)
    return {name: tensor.detach().clone() for name, tensor in model.target_encoder.state_dict().items()}


def test_teacher_moves(teachers, initial_teacher):
    single = weights(teachers["single"])
    assert initial_teacher.keys() == single.keys()
    assert set(NOT_TRAINED) <= single.keys()
    moved = {name: (single[name] - initial_teacher[name]).abs().max().item() for name in initial_teacher}
    # Every trained teacher parameter moved (measured: 2.7e-4 to 5.9e-4 per tensor after 3 steps at momentum 0.9).
    trained = {name: value for name, value in moved.items() if name not in NOT_TRAINED}
    assert min(trained.values()) > 1e-4, {name: value for name, value in trained.items() if value <= 1e-4}
    assert moved["embeddings.position_embeddings"] == 0.0
    assert all(moved[name] < 1e-12 for name in NOT_TRAINED)  # measured ~1e-19 for the key biases


def test_ddp_teacher_matches_single_process(teachers):
    assert teachers["ddp"]["__world_size__"].item() == 2
    assert teachers["single"]["__world_size__"].item() == 1
    assert_same_teacher(teachers["ddp"], teachers["single"], 1e-12)  # measured max |diff|: 1.4e-17


def test_fsdp2_teacher_matches_single_process(teachers):
    assert teachers["fsdp2"]["__world_size__"].item() == 2
    assert teachers["fsdp2"]["__teacher_sharded__"].item() == 1, "FSDP2 encoder parameters were not sharded DTensors"
    assert_same_teacher(teachers["fsdp2"], teachers["single"], 1e-12)  # measured max |diff|: 1.4e-17


def test_example_script_trains_under_accelerate_ddp(tmp_path):
    import transformers

    import hf_mim  # noqa: F401  (registers the hf_mim model types with the Auto classes)

    output_dir = tmp_path / "ijepa"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / ACCELERATE_CONFIG),
        "--main_process_port", str(free_ports(1)[0]),
        str(REPO / EXAMPLE), "--output_dir", str(output_dir), "--max_steps", str(STEPS),
        "--per_device_train_batch_size", "4", "--logging_steps", "1", "--disable_tqdm", "true", "--report_to", "none",
        "--learning_report", "false",  # tests/test_learning_report.py covers the report
    ]  # fmt: skip
    log = wait("accelerate launch run_ijepa.py", start(command, {**ENV, "ACCELERATE_USE_CPU": "1"}))
    assert "ijepa pretraining; world size 2" in log, log[-6000:]
    assert json.loads((output_dir / "trainer_state.json").read_text())["global_step"] == STEPS

    backbone = transformers.AutoModel.from_pretrained(output_dir / "backbone")
    assert isinstance(backbone, hf_mim.IJepaModel)
    # The backbone is the EMA target encoder of the saved pretraining model.
    full = load_file(output_dir / "model.safetensors")
    target = {
        name.removeprefix("target_encoder."): t for name, t in full.items() if name.startswith("target_encoder.")
    }
    state = backbone.state_dict()
    assert state.keys() == target.keys()
    assert all(torch.equal(state[name], target[name]) for name in state)
    with torch.no_grad():
        tokens = backbone(torch.randn(1, 3, 56, 56)).last_hidden_state
    # the embedded default trains with the CPU recipe's patch size (hf_mim.presets.CPU_RECIPES), so ask the config
    grid = 56 // backbone.config.patch_size
    assert tokens.shape == (1, grid * grid, backbone.config.hidden_size)
