import importlib.util
import subprocess
import sys
from pathlib import Path

from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def load_script(relative_path: str):
    """Import a script from the repository (scripts/, examples/) as a module."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def run_script(relative_path: str, *args: str, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / relative_path), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def fixture_tolerance(expected):
    """The fixtures README's float32 rule: max|a - e| <= 1e-5 * max|e|."""
    return 1e-5 * expected.abs().max().item()


def convert_capi_fixture(output_dir, *extra_args: str) -> subprocess.CompletedProcess:
    """Run the CAPI converter's command line on the bundled fixture checkpoint; it must succeed."""
    result = run_script(
        "scripts/convert/convert_capi_to_hf.py",
        "--checkpoint_path", str(FIXTURES / "capi" / "checkpoint.pth"),
        "--output_dir", str(output_dir), *extra_args,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


class StopAfter(TrainerCallback):
    """Stops training after `step` optimizer steps (a run killed right after a checkpoint, for resume tests)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control
