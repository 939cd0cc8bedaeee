"""hf_mim.hub.releases (the one release table), hf_mim.hub.model_cards (huggingface_hub cards for conversions and trained
runs) and scripts/convert/publish_releases.py (convert every release found in a download folder, check it against
its expected architecture, dry run or upload): table consistency, cards that round-trip through `ModelCard.load`,
a publish dry run over tiny fixture checkpoints laid out like the real downloads, refusal of a wrong architecture,
and `--push` against a mocked `HfApi`. Offline."""

import io
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers.trainer
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from hf_mim import CaeConfig, CapiConfig, CapiForPreTraining, IJepaConfig, VicreglConfig
from hf_mim.data import PretrainingCollator
from hf_mim.hub.model_cards import conversion_card, resolve_base_model, training_card
from hf_mim.hub.releases import (
    HUB_LICENSES,
    METHODS,
    RELEASES,
    architecture_mismatches,
    release_for_file,
    release_named,
    releases_for,
)
from hf_mim.models.cae import convert_cae, convert_dalle_tokenizer
from hf_mim.models.cae.tokenizer_dalle import DalleTokenizerConfig
from hf_mim.models.capi import convert_capi
from hf_mim.models.ijepa import convert_ijepa
from hf_mim.models.vicregl import convert_vicregl
from hf_mim.trainers import CapiTrainer, CapiTrainingArguments

from .helpers import FIXTURES, REPO, load_script
from .test_capi_pretraining import photo_dataset
from .test_convert_vicregl import fixture_backbone, full_checkpoint
from .test_dalle_tokenizer import Encoder, save_whole_module

PUBLISH = "scripts/convert/publish_releases.py"
CONVERTERS = {"capi": convert_capi, "ijepa": convert_ijepa, "cae": convert_cae, "vicregl": convert_vicregl,
              "dalle_tokenizer": convert_dalle_tokenizer}  # fmt: skip

# The fixtures' architectures (tests/fixtures/*/original_config.json), as the expected architecture of the releases
# whose download names the fixture directory uses.
TINY = {
    "capi-vitl14-lvd": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256,
                        "patch_size": 14, "num_register_tokens": 4, "decoder_hidden_size": 64,
                        "decoder_num_hidden_layers": 2, "decoder_num_attention_heads": 4, "image_size": 224},
    "ijepa-vith14-in1k": {"hidden_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4, "patch_size": 14,
                          "image_size": 84, "predictor_hidden_size": 32, "predictor_num_hidden_layers": 2,
                          "predictor_num_attention_heads": 4},
    "cae-base-1600ep": {"cae_version": 1, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
                        "intermediate_size": 256, "patch_size": 16, "image_size": 80},
    "caev2-large": {"cae_version": 2, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "intermediate_size": 128, "patch_size": 16, "image_size": 64},
    "vicregl-convnext-small-alpha0.75": {"backbone_type": "convnext", "depths": (1, 1, 1, 1),
                                         "hidden_sizes": (16, 32, 64, 128)},
    "vicregl-convnext-base-alpha0.9": {"backbone_type": "convnext", "depths": (1, 1, 1, 1),
                                       "hidden_sizes": (16, 32, 64, 128)},
    "dalle-tokenizer": {"hidden_size": 16, "vocab_size": 64, "num_blocks_per_group": 2, "group_count": 4,
                        "image_size": 32},
}  # fmt: skip
TINY_RELEASES = tuple(replace(r, architecture=TINY[r.name]) if r.name in TINY else r for r in RELEASES)


class NoNetwork:
    """Stands in for huggingface_hub.HfApi in a dry run: creating one is already an error."""

    def __init__(self, *args, **kwargs):
        raise AssertionError("a dry run must not create an HfApi")


class RecordingApi:
    calls: list = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return f"https://huggingface.co/{kwargs['repo_id']}/commit/0"


@pytest.fixture(scope="module")
def publish_script():
    return load_script(PUBLISH)


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """A download folder laid out like the real one (file names exactly as released, some in sub-folders), holding
    the tiny fixture checkpoints; plus files that are no release's."""
    root = tmp_path_factory.mktemp("originals")
    (root / "ijepa").mkdir()
    (root / "vicregl").mkdir()
    (root / "dall_e").mkdir()
    shutil.copy(FIXTURES / "capi" / "checkpoint.pth", root / "capi_vitl14_lvd.pth")
    shutil.copy(FIXTURES / "ijepa" / "checkpoint.pth.tar", root / "ijepa" / "IN1K-vit.h.14-300e.pth.tar")
    shutil.copy(FIXTURES / "cae_v1" / "checkpoint.pth", root / "cae_base_1600ep.pth")  # released v1 layout
    shutil.copy(FIXTURES / "cae_v2" / "checkpoint_encoder_only.pth", root / "caev2_large.pth")  # v2: encoder only
    torch.save(full_checkpoint()[0], root / "vicregl" / "convnext_small_alpha0.75_fullckpt.pth")
    torch.save(fixture_backbone(), root / "vicregl" / "convnext_small_alpha0.75.pth")  # found, full one preferred
    torch.save(fixture_backbone(), root / "convnext_base_alpha0.9.pth")
    torch.manual_seed(1)
    save_whole_module(Encoder(), root / "dall_e" / "encoder.pkl")
    torch.save({"x": torch.zeros(1)}, root / "something_else.pth")
    (root / "notes.txt").write_text("not a checkpoint")
    return root


@pytest.fixture(scope="module")
def published(publish_script, originals, tmp_path_factory):
    """The dry run over the fixture folder, with the fixtures' architectures as the expected ones."""
    output = tmp_path_factory.mktemp("hub")
    buffer = io.StringIO()
    original_api, publish_script.HfApi = publish_script.HfApi, NoNetwork
    try:
        outcomes = publish_script.publish(originals, output, releases=TINY_RELEASES, out=buffer)
    finally:
        publish_script.HfApi = original_api
    return output, outcomes, buffer.getvalue()


# ------------------------------------------------------------------------------------------------ the table
def test_table_is_consistent():
    names = [r.name for r in RELEASES]
    assert len(names) == len(set(names)) == 21
    assert len({r.key for r in RELEASES}) == len({r.repo_id for r in RELEASES}) == 21
    files = [f for r in RELEASES for f in r.files]
    assert len(files) == len(set(files))
    for release in RELEASES:
        assert release.method in METHODS and release.license in HUB_LICENSES
        assert release.repo_id == f"hf-mim/{release.name}" and release.repo_id_for("me") == f"me/{release.name}"
        assert all(url.startswith("https://") for url in release.urls) and release.license_url.startswith("https://")
        if release.license == "other":  # the Hub needs a name (lowercase, dashes) and a link
            assert release.license_name and release.license_name.replace("-", "").isalnum()
            assert release.license_name == release.license_name.lower()
        assert (
            release.paper.arxiv
            and release.paper.bibtex.startswith("@")
            and release.paper.title
            in (release.paper.bibtex.replace("{", "").replace("}", "").replace("Latents", "Latent"))
        )
        for file in release.files:
            assert release_for_file(f"/downloads/sub/{file}") is release
        assert release_named(release.name) is release and release_named(release.repo_id) is release
        for metric in release.metrics:
            assert metric.task_type in {"image-classification", "image-segmentation"}
            assert metric.source and metric.source_url.startswith("https://")
    assert [r.name for r in releases_for("capi")] == [
        "capi-vitl14-p205", "capi-vitl14-lvd", "capi-vitl14-in22k", "capi-vitl14-in1k"
    ]  # fmt: skip
    assert release_for_file("capi_vitl14_i22k.pth") is release_for_file("capi_vitl14_in22k.pth")
    assert release_for_file("checkpoint.pth") is None and release_named("capi-vitl14-in21k") is None
    # the only numbers the notes mark as recalled (not verified) are I-JEPA's paper numbers
    assert {r.method for r in RELEASES for m in r.metrics if not m.verified} == {"ijepa"}
    assert {r.license for r in RELEASES} == {"apache-2.0", "cc-by-nc-4.0", "other"}


def test_expected_architectures_are_hf_mims_presets():
    presets = {
        "capi-vitl14-lvd": CapiConfig(),
        "ijepa-vith14-in1k": IJepaConfig.vith14(),
        "ijepa-vith16-448-in1k": IJepaConfig.vith16_448(),
        "ijepa-vith14-in22k": IJepaConfig.vith14(),
        "ijepa-vitg16-in22k": IJepaConfig.vitg16(),
        "cae-base-300ep": CaeConfig.base(),
        "cae-large-1600ep": CaeConfig.large(),
        "caev2-large": CaeConfig.v2_large(),
        "vicregl-resnet50-alpha0.9": VicreglConfig.resnet50(),
        "vicregl-convnext-small-alpha0.9": VicreglConfig.convnext_small(),
        "vicregl-convnext-base-alpha0.75": VicreglConfig.convnext_base(),
        "vicregl-convnext-xlarge-alpha0.75": VicreglConfig.convnext_xlarge(),
        "dalle-tokenizer": DalleTokenizerConfig(),
    }
    for name, config in presets.items():
        assert architecture_mismatches(release_named(name), config) == [], name
    problems = architecture_mismatches(release_named("caev2-large"), CaeConfig.large())
    assert problems == ["cae_version: expected 2, got 1"]
    assert architecture_mismatches({"depths": (1, 2)}, {"depths": [1, 2]}) == []
    assert architecture_mismatches({"x": 1}, {}) == ["x: expected 1, missing from the config"]


def test_converters_read_the_table():
    assert CONVERTERS.keys() == METHODS.keys()
    for method, converter in CONVERTERS.items():
        table = {r.key: r for r in releases_for(method)}
        assert {r.key for r in converter.RELEASES.values()} == set(table), method
        assert all(r.method == method for r in converter.RELEASES.values())
        assert hasattr(converter, "convert_release") and not hasattr(converter, "FILE_TO_NAME")
    cae, vicregl = CONVERTERS["cae"], CONVERTERS["vicregl"]
    for release in releases_for("cae"):
        for file in release.files:
            assert cae.release_of(file.removesuffix(".pth")) == release.key, file
    for release in releases_for("vicregl"):
        for file in release.files:
            assert vicregl.release_of(None, vicregl.default_model_name(REPO / file)) == release.key, file
    capi, ijepa = CONVERTERS["capi"], CONVERTERS["ijepa"]
    assert capi.identify_release(REPO / "capi_vitl14_i22k.pth", None).name == "capi-vitl14-in22k"
    assert capi.identify_release(REPO / "checkpoint.pth", "capi-vitl14-p205").name == "capi-vitl14-p205"
    assert capi.identify_release(REPO / "checkpoint.pth", "ijepa-vith14-in1k") is None  # another method's
    assert ijepa.identify_release(REPO / "IN22K-vit.g.16-600e.pth.tar", None).name == "ijepa-vitg16-in22k"


# ------------------------------------------------------------------------------------------------ cards
def check_card_round_trip(folder, release, repo_id):
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["license"] == release.license and data["library_name"] == "transformers"
    assert data.get("pipeline_tag") == release.info.pipeline_tag
    assert "hf_mim" in data["tags"] and all(tag in data["tags"] for tag in release.info.tags)
    assert data.get("datasets") == (list(release.datasets) or None)
    assert "base_model" not in data  # the original weights
    if release.license == "other":
        assert data["license_name"] == release.license_name and data["license_link"] == release.license_url
    verified = [m for m in release.metrics if m.verified]
    if verified:
        name, results = model_index_to_eval_results(data["model-index"])
        assert name == repo_id
        assert [(r.task_type, r.dataset_type, r.metric_type, r.metric_value, r.metric_name) for r in results] == [
            (m.task_type, m.dataset_type, m.metric_type, m.value, m.name) for m in verified
        ]
        assert [r.metric_value for r in card.data.eval_results] == [m.value for m in verified]
    else:
        assert "model-index" not in data and card.data.eval_results is None
    text = card.text
    assert f"# {release.name}" in text and release.paper.bibtex.strip() in text
    assert "import hf_mim" in text and f'from_pretrained("{repo_id}"' in text
    assert f'from_pretrained("{repo_id}", trust_remote_code=True)' in text
    assert release.license_url in text and "## Conversion and parity" in text
    assert release.info.parity in text.replace("\n", " ") or release.info.parity in text
    for metric in release.metrics:
        assert str(metric.value) in text
    # saving the loaded card again gives the same card
    again = folder / "README.again.md"
    card.save(again)
    assert ModelCard.load(again).data.to_dict() == data
    again.unlink()
    return card


def test_release_card_fields(tmp_path):
    release = release_named("capi-vitl14-lvd")
    report = {"converted": 36, "ignored": ["head.last_layer.weight_g"], "rope_tables_checked_and_dropped": 36,
              "rope_max_deviation": 0.0, "release": release.name}  # fmt: skip
    capi = CONVERTERS["capi"]
    card = capi.model_card(release.name, CapiConfig(), release, report, "org/capi", True, release.file_name)
    folder = tmp_path / "capi"
    folder.mkdir()
    card.save(folder / "README.md")
    release_org = replace(release, repo_id="org/capi-vitl14-lvd")
    check_card_round_trip(folder, release_org, "org/capi")
    assert "LVD-142M" in card.text and "(1, 1024) CAPI's global representation" in card.text
    assert (
        "capi_vitl14_lvd.pth" in card.text and "https://dl.fbaipublicfiles.com/capi/capi_vitl14_lvd.pth" in card.text
    )
    # unverified numbers: printed with the caveat, not in the metadata (unless asked for)
    ijepa = release_named("ijepa-vith14-in1k")
    card = conversion_card("ijepa", config=IJepaConfig.vith14(), model_name=ijepa.name, release=ijepa)
    assert card.data.eval_results is None and "79.3 †" in card.text and "not verified" in card.text
    card = conversion_card("ijepa", config=None, model_name=ijepa.name, release=ijepa, include_unverified_metrics=True)
    assert [r.metric_value for r in card.data.eval_results] == [79.3, 73.3]
    # no release: no numbers, no datasets, the method's paper and license all the same
    card = conversion_card("vicregl", config=VicreglConfig.tiny(), model_name="mine", remote_code=False)
    assert card.data.eval_results is None and card.data.datasets is None and card.data.license == "cc-by-nc-4.0"
    assert "VICRegL: Self-Supervised Learning of Local Visual Features" in card.text
    assert "saved without the remote-code bundle" in card.text and "trust_remote_code=True)" not in card.text


# ------------------------------------------------------------------------------------------------ publish: dry run
def test_publish_dry_run_writes_every_folder(published):
    output, outcomes, printed = published
    assert [o.release.name for o in outcomes if not o.ok] == [], [o.error for o in outcomes]
    assert {o.release.name for o in outcomes} == set(TINY)
    for outcome in outcomes:
        folder, release = outcome.folder, outcome.release
        assert folder == output / release.name and outcome.repo_id == release.repo_id and outcome.uploaded is None
        names = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors", "README.md"} <= names
        config = json.loads((folder / "config.json").read_text())
        assert architecture_mismatches(release, config) == []
        # the modeling module (the DALL-E tokenizer's is tokenizer_dalle.py) and every auto_map target ship alongside
        assert config["auto_map"] and all(v.split(".")[0] + ".py" in names for v in config["auto_map"].values())
        if release.method != "dalle_tokenizer":
            processor = json.loads((folder / "preprocessor_config.json").read_text())
            assert processor["auto_map"]["AutoImageProcessor"].split(".")[0] + ".py" in names
        check_card_round_trip(folder, release, release.repo_id)
    by_name = {o.release.name: o for o in outcomes}
    vicregl = by_name["vicregl-convnext-small-alpha0.75"]
    assert vicregl.source.name == "convnext_small_alpha0.75_fullckpt.pth"
    assert [p.name for p in vicregl.also_found] == ["convnext_small_alpha0.75.pth"]
    assert json.loads((vicregl.folder / "config.json").read_text())["architectures"] == ["VicreglForPreTraining"]
    assert vicregl.report["alpha"] == 0.75 and vicregl.report["release"] == "convnext_small_alpha0.75"
    assert by_name["caev2-large"].report["cae_version"] == 2
    # the plan: every repo id with its license, source file and files; what was not found or not recognised
    assert "dry run, nothing uploaded (7 repo(s) would be created" in printed
    for outcome in outcomes:
        line = next(line for line in printed.splitlines() if line.strip().startswith(outcome.repo_id + " "))
        assert outcome.release.license in line and outcome.source.name in line
    assert "model.safetensors (" in printed and "remote code: " in printed and "README.md (" in printed
    assert "also found, not used: convnext_small_alpha0.75.pth" in printed
    assert "Not in the originals folder (14): capi-vitl14-p205," in printed
    assert "Not a release file, skipped (1):" in printed and "something_else.pth" in printed
    print(printed)  # the plan, for the record (pytest -s)


def test_published_folders_load_without_hf_mim(published):
    """Every published folder loads in a Python where hf_mim cannot be imported (remote code)."""
    output, outcomes, _ = published
    script = (
        "import json, sys\n"
        "sys.modules['hf_mim'] = None\n"
        "import torch\n"
        "from transformers import AutoImageProcessor, AutoModel\n"
        "out = {}\n"
        "for folder in sys.argv[1:]:\n"
        "    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()\n"
        "    kind = type(model).__name__\n"
        "    try:\n"
        "        AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)\n"
        "    except OSError:\n"
        "        kind += ' (no processor)'\n"
        "    out[folder.rsplit('/', 1)[-1]] = kind\n"
        "print(json.dumps(out))\n"
    )
    folders = [str(o.folder) for o in outcomes]
    result = subprocess.run([sys.executable, "-c", script, *folders], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == {
        "capi-vitl14-lvd": "CapiModel",
        "ijepa-vith14-in1k": "IJepaModel",
        "cae-base-1600ep": "CaeModel",
        "caev2-large": "CaeModel",
        "vicregl-convnext-small-alpha0.75": "VicreglModel",
        "vicregl-convnext-base-alpha0.9": "VicreglModel",
        "dalle-tokenizer": "DalleTokenizer (no processor)",
    }


def test_wrong_architecture_is_refused(publish_script, originals, tmp_path, capsys):
    """With the real table, a tiny file named like a release is refused field by field; the others continue."""
    releases = tuple(r for r in TINY_RELEASES if r.name != "capi-vitl14-lvd") + (release_named("capi-vitl14-lvd"),)
    outcomes = publish_script.publish(originals, tmp_path, releases=releases, only=["capi-vitl14-lvd", "caev2-large"])
    by_name = {o.release.name: o for o in outcomes}
    capi = by_name["capi-vitl14-lvd"]
    assert not capi.ok and not (tmp_path / "capi-vitl14-lvd").exists()
    assert "capi_vitl14_lvd.pth is not the expected architecture of capi-vitl14-lvd" in capi.error
    assert "hidden_size: expected 1024, got 64" in capi.error and "num_hidden_layers: expected 24, got 2" in capi.error
    assert by_name["caev2-large"].ok and (tmp_path / "caev2-large" / "model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "Failed (1):" in printed and "hidden_size: expected 1024, got 64" in printed
    # the command line (the table as it is): exit code 1, the failure printed
    argv = ["--originals_dir", str(originals), "--output_dir", str(tmp_path / "cli"), "--only", "capi-vitl14-lvd"]
    assert publish_script.main(argv) == 1
    assert "hidden_size: expected 1024, got 64" in capsys.readouterr().out
    assert publish_script.main([*argv[:4], "--only", "capi-vitl14-in21k"]) == 2
    assert "no such release" in capsys.readouterr().err


def test_push_uploads_with_huggingface_hub(publish_script, originals, tmp_path, monkeypatch):
    RecordingApi.calls = []
    monkeypatch.setattr(publish_script, "HfApi", RecordingApi)
    outcomes = publish_script.publish(originals, tmp_path, releases=TINY_RELEASES, organization="my-org",
                                      only=["dalle-tokenizer", "capi-vitl14-lvd"], push=True, private=True,
                                      out=io.StringIO())  # fmt: skip
    assert [o.repo_id for o in outcomes] == ["my-org/capi-vitl14-lvd", "my-org/dalle-tokenizer"]
    assert [(c[0], c[1]) for c in RecordingApi.calls] == [
        ("create_repo", "my-org/capi-vitl14-lvd"), ("upload_folder", "my-org/capi-vitl14-lvd"),
        ("create_repo", "my-org/dalle-tokenizer"), ("upload_folder", "my-org/dalle-tokenizer"),
    ]  # fmt: skip
    create, upload = RecordingApi.calls[0][2], RecordingApi.calls[1][2]
    assert create == {"repo_type": "model", "private": True, "exist_ok": True}
    assert upload["folder_path"] == str(tmp_path / "capi-vitl14-lvd") and upload["repo_type"] == "model"
    assert "capi_vitl14_lvd.pth" in upload["commit_message"]
    assert outcomes[0].uploaded == "https://huggingface.co/my-org/capi-vitl14-lvd/commit/0"
    card = ModelCard.load(tmp_path / "capi-vitl14-lvd" / "README.md")
    assert (
        card.data.model_name == "my-org/capi-vitl14-lvd" and 'from_pretrained("my-org/capi-vitl14-lvd")' in card.text
    )
    # the command line's --push reaches the same API
    RecordingApi.calls = []
    argv = ["--originals_dir", str(originals), "--output_dir", str(tmp_path / "cli"), "--only", "caev2-large",
            "--push", "--organization", "other-org"]  # fmt: skip
    monkeypatch.setattr(publish_script, "RELEASES", TINY_RELEASES)
    assert publish_script.main(argv) == 0
    assert [(c[0], c[1]) for c in RecordingApi.calls] == [
        ("create_repo", "other-org/caev2-large"), ("upload_folder", "other-org/caev2-large")
    ]  # fmt: skip


def test_offline_push_is_one_line_and_keeps_the_folders(publish_script, originals, tmp_path, monkeypatch, capsys):
    # the real HfApi, offline (HF_HUB_OFFLINE=1, tests/conftest.py): huggingface_hub refuses before any request
    monkeypatch.setattr(publish_script, "RELEASES", TINY_RELEASES)
    argv = ["--originals_dir", str(originals), "--output_dir", str(tmp_path / "cli"), "--only", "caev2-large",
            "--push", "--organization", "other-org"]  # fmt: skip
    assert publish_script.main(argv) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.err.splitlines()[-1] == (
        "error: pushing to other-org/caev2-large failed: offline mode is on (HF_HUB_OFFLINE is set); unset it to "
        "upload"
    )
    assert "caev2-large" in captured.out  # the plan still shows the converted folder
    assert (tmp_path / "cli" / "caev2-large" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------------------------ trained models
def test_trainer_writes_the_hf_mim_card(published, tmp_path, monkeypatch):
    """A run continuing from a converted release: `create_model_card` (what Trainer.push_to_hub calls) writes the
    hf_mim card with the release as base_model, and the remote-code bundle."""
    output, _, _ = published
    release_folder = output / "capi-vitl14-lvd"
    assert resolve_base_model(str(release_folder))[0] == "hf-mim/capi-vitl14-lvd"
    model = CapiForPreTraining.from_pretrained(release_folder, num_prototypes=32, image_size=56, drop_path_rate=0.0)
    args = CapiTrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=2, logging_steps=1,
        save_strategy="no", remove_unused_columns=False, report_to="none", use_cpu=True, dataloader_num_workers=0,
        seed=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = CapiTrainer(
        model=model, args=args, train_dataset=photo_dataset(8), data_collator=PretrainingCollator.for_model(model)
    )
    trainer.train()
    trainer.save_model()  # as push_to_hub does before creating the card
    trainer.create_model_card(model_name="capi-continued", dataset="bundled photos", tags="demo")
    folder = tmp_path / "run"
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "hf-mim/capi-vitl14-lvd" and data["license"] == "apache-2.0"
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "image-feature-extraction"
    assert {"hf_mim", "capi", "pretraining", "demo"} <= set(data["tags"]) and "model-index" not in data
    loss = next(e["train_loss"] for e in reversed(trainer.state.log_history) if "train_loss" in e)
    assert "# capi-continued" in card.text and "| Optimizer steps | 2" in card.text
    assert f"| Final training loss | {loss:.4f} |" in card.text and "`bundled photos`" in card.text
    assert "import hf_mim" in card.text and "trust_remote_code=True" in card.text
    assert release_named("capi-vitl14-lvd").paper.bibtex.strip() in card.text
    assert "derived from `hf-mim/capi-vitl14-lvd`" in card.text
    config = json.loads((folder / "config.json").read_text())
    assert (folder / "modeling_capi.py").is_file() and config["auto_map"]["AutoModel"] == "modeling_capi.CapiModel"
    # Trainer.push_to_hub (what run_<method>.py --push_to_hub ends with) writes this card before uploading
    uploads = []

    class HubApi:
        def create_repo(self, repo_id, **kwargs):
            return type("RepoUrl", (), {"repo_id": f"me/{repo_id}"})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            card = ModelCard.load(Path(folder_path) / "README.md")
            uploads.append((repo_id, card, (Path(folder_path) / "modeling_capi.py").is_file()))
            return "uploaded"

    monkeypatch.setattr(transformers.trainer, "hf_api", HubApi)
    (folder / "README.md").unlink()
    (folder / "modeling_capi.py").unlink()
    assert trainer.push_to_hub() == "uploaded"
    [(repo_id, pushed, has_code)] = uploads
    assert repo_id == "me/run" and has_code and pushed.data.base_model == "hf-mim/capi-vitl14-lvd"
    assert 'from_pretrained("me/run", trust_remote_code=True)' in pushed.text
    # from scratch and from a Hub id: no / that base model, the method's license; no remote code when asked not to
    scratch = CapiForPreTraining(CapiConfig.tiny(num_prototypes=32))
    card = training_card(scratch, state=trainer.state, args=args, remote_code=False)
    assert card.data.base_model is None and card.data.license == "apache-2.0" and "random initialisation" in card.text
    assert "saved without the remote-code bundle" in card.text
    scratch.config._name_or_path = "someone/capi-run"
    card = training_card(scratch, state=trainer.state, args=args, train_dataset=photo_dataset(2))
    assert card.data.base_model == "someone/capi-run" and card.data.datasets is None
