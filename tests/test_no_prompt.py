"""With hf_mim imported, a folder exported with remote code (`auto_map`) loads through the Auto classes and pipelines
with hf_mim's registered classes and no question asked (issue 23, item 7).

transformers asks "Do you wish to run the custom code? [y/N]" (`dynamic_module_utils.resolve_trust_remote_code`)
whenever `trust_remote_code` is None, the files name remote code and no local class covers the model; it reads the
answer with `input()` under a 15 s alarm, so in a terminal every call blocks. The loads run in a child process whose
stdin, stdout and stderr are a pseudo-terminal, as in an interactive shell; the parent watches the terminal and stops
at the first prompt. A control run without hf_mim shows that the watcher sees transformers' prompt.
"""

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_mim import (
    CaeConfig,
    CaeForPreTraining,
    CaeImageProcessor,
    CapiConfig,
    CapiForImageClassification,
    CapiForPreTraining,
    CapiImageProcessor,
    IJepaConfig,
    IJepaForPreTraining,
    IJepaImageProcessor,
    VicreglConfig,
    VicreglForImageClassification,
    VicreglForPreTraining,
    VicreglImageProcessor,
)
from hf_mim.image_processing_utils import image_processor_at

CHILD = Path(__file__).with_name("no_prompt_child.py")
PROMPT = b"Do you wish to run the custom code?"

PRETRAINING = {
    "capi": (CapiConfig.tiny, CapiForPreTraining, CapiImageProcessor),
    "ijepa": (IJepaConfig.tiny, IJepaForPreTraining, IJepaImageProcessor),
    "cae": (CaeConfig.tiny, CaeForPreTraining, CaeImageProcessor),
    "vicregl": (VicreglConfig.tiny, VicreglForPreTraining, VicreglImageProcessor),
}
CLASSIFICATION = {
    "capi": (CapiConfig.tiny, CapiForImageClassification, CapiImageProcessor),
    "vicregl": (VicreglConfig.tiny, VicreglForImageClassification, VicreglImageProcessor),
}


def run_in_terminal(argv: list[str], env: dict, timeout: float) -> tuple[str, int, bool]:
    """Run `argv` with a pseudo-terminal as stdin/stdout/stderr; return (output, returncode, prompted).

    The child is killed as soon as transformers' trust_remote_code prompt appears (prompted=True) or at `timeout`."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    output, prompted, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not chunk:
                break
            output += chunk
            if PROMPT in output:
                prompted = True
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    return output.decode(errors="replace"), proc.returncode, prompted


def _save(folder: Path, make_config, model_class, processor_class, **overrides) -> str:
    config = make_config()
    for key, value in overrides.items():
        setattr(config, key, value)
    image_processor_at(processor_class, config.image_size).save_pretrained(folder)
    model_class(config).save_pretrained(folder, remote_code=True)
    return str(folder)


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("no_prompt")
    torch.manual_seed(0)
    folders = {name: _save(root / name, *spec) for name, spec in PRETRAINING.items()}
    classification = {
        name: _save(root / f"{name}-classification", *spec, num_labels=3) for name, spec in CLASSIFICATION.items()
    }
    for folder in (*folders.values(), *classification.values()):
        assert "auto_map" in json.loads(Path(folder, "config.json").read_text())
        assert "auto_map" in json.loads(Path(folder, "preprocessor_config.json").read_text())
    image = root / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(image)
    path = root / "cases.json"
    path.write_text(json.dumps({"image": str(image), "folders": folders, "classification_folders": classification}))
    modules = root / "modules"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(modules), "TRANSFORMERS_VERBOSITY": "info"}
    return root, path, env, modules


def test_terminal_watcher_sees_the_prompt_without_hf_mim(cases):
    """Control: in plain transformers the same folder asks before running its code, and the watcher catches it."""
    root, path, env, _ = cases
    folder = json.loads(path.read_text())["folders"]["capi"]
    code = (
        "import sys; sys.modules['hf_mim'] = None\n"
        "from transformers import AutoModel\n"
        f"AutoModel.from_pretrained({folder!r})\n"
    )
    output, _, prompted = run_in_terminal([sys.executable, "-c", code], env, timeout=60)
    assert prompted, output[-3000:]


def test_auto_classes_and_pipelines_load_natively_without_a_prompt(cases):
    root, path, env, modules = cases
    result_path = root / "result.json"
    start = time.monotonic()
    output, returncode, prompted = run_in_terminal(
        [sys.executable, str(CHILD), str(path), str(result_path)], env, timeout=120
    )
    elapsed = time.monotonic() - start
    assert not prompted, f"transformers asked to run the remote code:\n{output[-3000:]}"
    assert returncode == 0, output[-3000:]
    result = json.loads(result_path.read_text())
    loaded = result["loaded"]
    expected = {f"{name}/{auto}" for name in PRETRAINING for auto in (
        "AutoConfig", "AutoImageProcessor", "AutoModel", "AutoModelForPreTraining", "AutoBackbone",
        "pipeline(image-feature-extraction):model", "pipeline(image-feature-extraction):image_processor",
    )} | {f"{name}/{auto}" for name in CLASSIFICATION for auto in (
        "AutoModelForImageClassification",
        "pipeline(image-classification):model", "pipeline(image-classification):image_processor",
    )}  # fmt: skip
    assert set(loaded) == expected
    not_native = {key: module for key, module in loaded.items() if not module.startswith("hf_mim.")}
    assert not not_native, not_native
    # No remote code ran: nothing imported from, or copied into, transformers' dynamic-module cache.
    assert result["remote_modules"] == []
    assert not list(modules.rglob("*.py")) or {p.name for p in modules.rglob("*.py")} == {"__init__.py"}
    # Nothing was said about remote code either (the terminal shows everything, logging at info level included).
    lowered = output.lower()
    for phrase in ("custom code", "trust_remote_code", "remote code", "hf.co/"):
        assert phrase not in lowered, (phrase, output[-3000:])
    # Nothing waited on a 15 s timer (every load of a tiny model takes well under a second or two).
    assert max(result["seconds"].values()) < 10, result["seconds"]
    assert elapsed < 120
