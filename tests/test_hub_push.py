"""Every `--push_to_hub` fails the same way (issue 27): `error: pushing to <repo> failed: <cause>` on one line, a
non-zero exit status and the local folder complete - a converter, and a pretraining run both when the Trainer creates
its repo (before training) and when it uploads at the end. Offline (HF_HUB_OFFLINE=1, tests/conftest.py)."""

import dataclasses

import httpx2
import numpy as np
import PIL.Image
import pytest
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from hf_mim.hub.push import HubPushError, exit_status, pushing_to
from hf_mim.models.capi.convert_capi import main as convert_capi_main
from hf_mim.trainers.run_pretraining import run

from .helpers import FIXTURES, load_script

OFFLINE = "offline mode is on (HF_HUB_OFFLINE is set); unset it to upload"


def _raised_in(repo_id, error):
    with pytest.raises(HubPushError) as caught, pushing_to(repo_id):
        raise error
    return str(caught.value)


def test_hub_failures_become_one_line_naming_the_cause():
    assert _raised_in("me/m", OfflineModeIsEnabled("Cannot reach https://huggingface.co/api/repos/create: offline")) \
        == f"pushing to me/m failed: {OFFLINE}"  # fmt: skip
    unauthorized = httpx2.Response(401, request=httpx2.Request("POST", "https://huggingface.co/api/repos/create"))
    assert "not logged in to the Hub (HTTP 401); run `hf auth login` or set HF_TOKEN" in _raised_in(
        "me/m", HfHubHTTPError("401 Client Error: Unauthorized\nmore lines", response=unauthorized)
    )
    unreachable = _raised_in("me/m", httpx2.ConnectError("[Errno -2] Name or service not known"))
    assert unreachable == "pushing to me/m failed: the Hub could not be reached (ConnectError: [Errno -2] Name or " \
        "service not known); check the network"  # fmt: skip
    assert "\n" not in _raised_in("me/m", ConnectionError("line one\nline two"))


def test_other_errors_are_not_called_push_failures():
    with pytest.raises(ValueError, match="a bug"), pushing_to("me/m"):
        raise ValueError("a bug")


def test_converter_push_offline_keeps_the_folder(tmp_path, capsys):
    out = tmp_path / "capi"
    argv = ["--checkpoint_path", str(FIXTURES / "capi" / "checkpoint.pth"), "--output_dir", str(out),
            "--push_to_hub", "me/capi-test"]  # fmt: skip
    assert convert_capi_main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1] == f"error: pushing to me/capi-test failed: {OFFLINE}"
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()  # the conversion itself stands


def _run_argv(images, output, *extra):
    return ["--train_dir", str(images), "--config_name", "capi-tiny", "--output_dir", str(output),
            "--per_device_train_batch_size", "4", "--max_steps", "1", "--learning_report", "False",
            "--report_to", "none", "--save_strategy", "no", "--dataloader_num_workers", "0", "--disable_tqdm", "True",
            "--push_to_hub", "--hub_model_id", "me/capi-run", *extra]  # fmt: skip


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images" / "a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        PIL.Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder.parent


def test_pretraining_push_offline_fails_before_training(images, tmp_path, capsys):
    recipe = load_script("examples/pytorch/pretraining/run_capi.py").CAPI
    assert run(recipe, _run_argv(images, tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1] == f"error: pushing to me/capi-run failed: {OFFLINE}"
    assert not (tmp_path / "run" / "model.safetensors").exists()  # nothing trained, nothing half-written


def test_pretraining_upload_failure_at_the_end_keeps_the_run(images, tmp_path, capsys):
    """The network goes away during training: the repo was created, the final upload fails."""
    base = load_script("examples/pytorch/pretraining/run_capi.py").CAPI

    class LosesTheNetwork(base.trainer_class):
        def init_hf_repo(self, token=None):
            self.hub_model_id = self.args.hub_model_id

        def push_to_hub(self, *args, **kwargs):
            raise httpx2.ConnectError("[Errno 101] Network is unreachable")

    recipe = dataclasses.replace(base, trainer_class=LosesTheNetwork)
    assert run(recipe, _run_argv(images, tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == (
        "error: pushing to me/capi-run failed: the Hub could not be reached (ConnectError: [Errno 101] Network is "
        "unreachable); check the network"
    )
    for name in ("model.safetensors", "config.json", "train_results.json", "backbone/model.safetensors"):
        assert (tmp_path / "run" / name).is_file(), name


def test_finetuning_push_offline_is_one_line(tmp_path, capsys):
    """run_image_classification.py (and run_semantic_segmentation.py, built alike) through `exit_status`."""
    script = load_script("examples/pytorch/image-classification/run_image_classification.py")
    argv = ["--output_dir", str(tmp_path / "ft"), "--max_steps", "1", "--max_train_samples", "16",
            "--max_eval_samples", "16", "--per_device_train_batch_size", "8", "--save_strategy", "no",
            "--dataloader_num_workers", "0", "--use_cpu", "true",
            "--push_to_hub", "--hub_model_id", "me/ft"]  # fmt: skip
    assert exit_status(script.main, argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1] == f"error: pushing to me/ft failed: {OFFLINE}"
