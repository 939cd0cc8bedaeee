"""Issue 15, items 3 and 4: `--seed` decides a pretraining run (initial weights, data order, crops, masks), a bad
`--config_overrides` fails at start-up, and every folder a run or a converter writes holds an image processor at the
resolution the model was trained at.

The scripts run in-process (`run(recipe, argv)`, as `python run_<method>.py ...` does) so each tiny run takes a few
seconds; before each one torch's global RNG is put in a different arbitrary state, as a fresh process would be."""

import dataclasses
import json

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoImageProcessor

import hf_mim  # noqa: F401  (registers the Auto classes)
from hf_mim import CapiConfig, CapiImageProcessor, IJepaConfig, IJepaImageProcessor
from hf_mim.models.capi import convert_capi
from hf_mim.models.ijepa import convert_ijepa

from .helpers import FIXTURES, load_script

SCRIPTS = {"capi": ("examples/pytorch/pretraining/run_capi.py", "CAPI"),
           "ijepa": ("examples/pytorch/pretraining/run_ijepa.py", "IJEPA")}  # fmt: skip
# no before / after learning report (tests/test_learning_report.py covers it): it probes the digits twice per run
TINY = ["--max_steps", "3", "--per_device_train_batch_size", "4", "--logging_steps", "1", "--report_to", "none",
        "--disable_tqdm", "true", "--learning_report", "false"]  # fmt: skip


def recipe(method: str):
    path, name = SCRIPTS[method]
    return getattr(load_script(path), name)


def pretrain(method: str, output_dir, seed: int, outer_seed: int, extra=()) -> dict:
    """One tiny run of run_<method>.py; returns the weights the trainer received, the final weights of the folder
    and of backbone/, and the per-step log entries."""
    from hf_mim.trainers.run_pretraining import run

    base = recipe(method)
    initial = {}

    class RecordingTrainer(base.trainer_class):
        def __init__(self, *args, **kwargs):
            initial.update({k: v.detach().clone() for k, v in kwargs["model"].state_dict().items()})
            super().__init__(*args, **kwargs)

    torch.manual_seed(outer_seed)  # whatever state the process starts in must not matter
    argv = ["--output_dir", str(output_dir), "--seed", str(seed), *TINY, *extra]
    assert run(dataclasses.replace(base, trainer_class=RecordingTrainer), argv) == 0
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return {
        "initial": initial,
        "final": load_file(output_dir / "model.safetensors"),
        "backbone": load_file(output_dir / "backbone" / "model.safetensors"),
        "steps": [entry for entry in history if "loss" in entry],
    }


def same_tensors(a: dict, b: dict) -> bool:
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


# CAPI loads its crops and masks in a DataLoader worker (seeded through the Trainer's `seed_worker`), I-JEPA in the
# main process: both paths must follow the seed.
EXTRA = {"capi": ("--dataloader_num_workers", "1"), "ijepa": ()}


@pytest.fixture(scope="module", params=["capi", "ijepa"])
def runs(request, tmp_path_factory):
    method = request.param
    root = tmp_path_factory.mktemp(f"seeds_{method}")
    results = {
        "a": pretrain(method, root / "a", 7, outer_seed=1, extra=EXTRA[method]),
        "b": pretrain(method, root / "b", 7, outer_seed=2, extra=EXTRA[method]),
        "c": pretrain(method, root / "c", 8, outer_seed=1, extra=EXTRA[method]),
    }
    return method, root, results


def test_same_seed_gives_identical_runs(runs):
    _, _, r = runs
    assert same_tensors(r["a"]["initial"], r["b"]["initial"]), "initial weights differ under the same --seed"
    assert same_tensors(r["a"]["final"], r["b"]["final"]), "model.safetensors differs under the same --seed"
    assert same_tensors(r["a"]["backbone"], r["b"]["backbone"])
    assert len(r["a"]["steps"]) == 3
    assert [e["loss"] for e in r["a"]["steps"]] == [e["loss"] for e in r["b"]["steps"]]
    assert r["a"]["steps"] == r["b"]["steps"]  # every logged metric, not just the loss


def test_other_seed_gives_other_weights_and_trajectory(runs):
    _, _, r = runs
    assert not same_tensors(r["a"]["initial"], r["c"]["initial"]), "--seed does not change the initial weights"
    assert not same_tensors(r["a"]["final"], r["c"]["final"])
    assert [e["loss"] for e in r["a"]["steps"]] != [e["loss"] for e in r["c"]["steps"]]


def photos(count=2):
    rng = np.random.default_rng(0)
    sizes = [(90, 120), (130, 70)]
    return [PIL.Image.fromarray(rng.integers(0, 256, (*sizes[i % 2], 3), dtype=np.uint8)) for i in range(count)]


def check_processor(folder, size: int):
    """The folder's processor turns any images into (B, 3, size, size)."""
    assert (folder / "preprocessor_config.json").is_file(), folder
    processor = AutoImageProcessor.from_pretrained(folder)
    pixel_values = processor(images=photos(), return_tensors="pt")["pixel_values"]
    assert tuple(pixel_values.shape) == (2, 3, size, size), folder


def test_helper_keeps_the_release_ratio():
    from hf_mim.image_processing_utils import image_processor_at

    for cls in (CapiImageProcessor, IJepaImageProcessor):
        for crop, resize in ((224, 256), (56, 64), (448, 512), (84, 96), (42, 48)):
            processor = image_processor_at(cls, crop)
            assert isinstance(processor, cls)
            assert processor.size.shortest_edge == resize
            assert (processor.crop_size.height, processor.crop_size.width) == (crop, crop)
    with pytest.raises(ValueError, match="image_size"):
        image_processor_at(CapiImageProcessor, 0)


def test_run_folders_hold_the_training_size_processor(runs):
    method, root, _ = runs
    size = (CapiConfig if method == "capi" else IJepaConfig).from_pretrained(root / "a").image_size
    assert size == 56  # the tiny presets
    for folder in (root / "a", root / "a" / "backbone"):
        check_processor(folder, 56)


def test_run_at_another_image_size_writes_that_size(tmp_path):
    """`--image_size` (the crop the run trains at) wins over config.image_size in every folder written."""
    from hf_mim.trainers.run_pretraining import run

    argv = ["--output_dir", str(tmp_path), "--image_size", "42", *TINY]
    argv[argv.index("--max_steps") + 1] = "1"
    assert run(recipe("capi"), argv) == 0
    for folder in (tmp_path, tmp_path / "backbone"):
        check_processor(folder, 42)


def test_converted_capi_fixture_processor(tmp_path):
    checkpoint = str(FIXTURES / "capi" / "checkpoint.pth")
    argv = ["--checkpoint_path", checkpoint, "--output_dir", str(tmp_path / "56"), "--image_size", "56"]
    assert convert_capi.main(argv) == 0
    assert CapiConfig.from_pretrained(tmp_path / "56").image_size == 56  # the fixture's resolution
    check_processor(tmp_path / "56", 56)
    # without the flag: the releases' 224, and config and processor agree
    assert convert_capi.main(["--checkpoint_path", checkpoint, "--output_dir", str(tmp_path / "224")]) == 0
    assert CapiConfig.from_pretrained(tmp_path / "224").image_size == 224
    check_processor(tmp_path / "224", 224)
    # a size the model cannot be fed fails cleanly
    bad = ["--checkpoint_path", checkpoint, "--output_dir", str(tmp_path / "bad"), "--image_size", "50"]
    assert convert_capi.main(bad) == 2


def test_converted_ijepa_fixture_processor(tmp_path):
    checkpoint = str(FIXTURES / "ijepa" / "checkpoint.pth.tar")
    argv = ["--checkpoint_path", checkpoint, "--output_dir", str(tmp_path), "--num_attention_heads", "4"]
    assert convert_ijepa.main(argv) == 0
    size = IJepaConfig.from_pretrained(tmp_path).image_size
    assert size == 84  # 6 x 6 position table x 14 px patches (the fixture's img_size)
    check_processor(tmp_path, size)


@pytest.mark.parametrize(
    "method, override, message",
    [
        ("capi", "mask_ratio=1.5", "CapiConfig: mask_ratio must lie in"),
        ("capi", "num_register_tokens=3", "CapiConfig: num_register_tokens=3"),
        ("ijepa", "predictor_hidden_size=30", "IJepaConfig: predictor_hidden_size=30 must be divisible"),
    ],
)
def test_bad_config_override_fails_at_start_up(tmp_path, monkeypatch, method, override, message):
    from hf_mim.trainers import run_pretraining

    reached = []
    monkeypatch.setattr(run_pretraining, "load_training_data", lambda *args: reached.append(args))
    with pytest.raises(ValueError, match=message):
        run_pretraining.run(recipe(method), ["--output_dir", str(tmp_path), "--config_overrides", override, *TINY])
    assert not reached  # it failed before loading any data (or building a trainer)
    assert not (tmp_path / "trainer_state.json").exists()
