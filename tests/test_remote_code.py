"""Remote-code export (`hf_mim.hub.remote_code`): a folder saved with `remote_code=True` loads in a Python where hf_mim
cannot be imported (`trust_remote_code=True`) and reproduces hf_mim's outputs exactly, for every method; without
`trust_remote_code` transformers raises its usual error; with hf_mim installed the same folder loads natively."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    pipeline,
)

import hf_mim
from hf_mim import (
    CaeConfig,
    CaeForImageClassification,
    CaeForPreTraining,
    CaeImageProcessor,
    CapiConfig,
    CapiForImageClassification,
    CapiForPreTraining,
    CapiImageProcessor,
    IJepaConfig,
    IJepaForImageClassification,
    IJepaForPreTraining,
    IJepaImageProcessor,
    VicreglConfig,
    VicreglForImageClassification,
    VicreglForPreTraining,
    VicreglImageProcessor,
)
from hf_mim.hub.remote_code import ALLOWED_THIRD_PARTY, bundle_sources, export_remote_code, third_party_imports
from hf_mim.image_processing_utils import image_processor_at
from hf_mim.trainers.run_pretraining import run

from .helpers import load_script

CHILD = Path(__file__).with_name("remote_code_child.py")

# name: (config, pretraining class, classification class, processor class)
METHODS = {
    "capi": (lambda: CapiConfig.tiny(drop_path_rate=0.0), CapiForPreTraining, CapiForImageClassification,
             CapiImageProcessor),
    "ijepa": (IJepaConfig.tiny, IJepaForPreTraining, IJepaForImageClassification, IJepaImageProcessor),
    "cae": (CaeConfig.tiny, CaeForPreTraining, CaeForImageClassification, CaeImageProcessor),
    "vicregl_convnext": (VicreglConfig.tiny, VicreglForPreTraining, VicreglForImageClassification,
                         VicreglImageProcessor),
    "vicregl_resnet": (VicreglConfig.tiny_resnet, VicreglForPreTraining, VicreglForImageClassification,
                       VicreglImageProcessor),
}  # fmt: skip


def _export(root: Path, name: str):
    make_config, pretraining_class, classification_class, processor_class = METHODS[name]
    torch.manual_seed(0)
    config = make_config()
    folder, cls_folder = root / name, root / f"{name}-classification"
    image_processor_at(processor_class, config.image_size).save_pretrained(folder)
    pretraining_class(config).save_pretrained(folder, remote_code=True)
    config.num_labels = 3
    image_processor_at(processor_class, config.image_size).save_pretrained(cls_folder)
    classification_class(config).save_pretrained(cls_folder, remote_code=True)
    return folder, cls_folder


# A run's top-level folder (the full *ForPreTraining model the Trainer saved) of every method: one step, tiny preset.
RUNS = {"capi": "capi-tiny", "ijepa": "ijepa-tiny", "cae": "cae-tiny", "vicregl": "vicregl-tiny-resnet"}


def _train_run(root: Path, method: str, images: Path) -> Path:
    recipe = getattr(load_script(f"examples/pytorch/pretraining/run_{method}.py"), method.upper())
    output = root / f"run-{method}"
    argv = ["--train_dir", str(images), "--config_name", RUNS[method], "--output_dir", str(output),
            "--per_device_train_batch_size", "4", "--max_steps", "1", "--learning_report", "False",
            "--report_to", "none", "--save_strategy", "no", "--dataloader_num_workers", "0",
            "--disable_tqdm", "True"]  # fmt: skip
    assert run(recipe, argv) == 0
    return output


def _expected(folder, cls_folder, image):
    """What hf_mim computes natively (no remote code) for the child's checks."""
    processor = AutoImageProcessor.from_pretrained(folder)
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
    model = AutoModel.from_pretrained(folder).eval()
    classifier = AutoModelForImageClassification.from_pretrained(cls_folder).eval()
    with torch.no_grad():
        outputs = model(pixel_values)
        logits = classifier(pixel_values).logits
    pretraining = AutoModelForPreTraining.from_pretrained(folder)
    extractor = pipeline("image-feature-extraction", model=str(folder))
    return {
        "model_class": type(model),
        "pixel_values": pixel_values,
        "last_hidden_state": outputs.last_hidden_state,
        "pooler_output": outputs.pooler_output,
        "logits": logits,
        "pretraining_state": pretraining.state_dict(),
        "pipeline": torch.tensor(np.array(extractor(image))),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote_code")
    image_path = root / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(image_path)
    folders = {name: _export(root, name) for name in METHODS}
    (root / "images" / "a").mkdir(parents=True)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / "images" / "a" / f"{i}.png")
    runs = {method: _train_run(root, method, root / "images") for method in RUNS}
    cases = {
        "image": str(image_path),
        "models": {n: {"folder": str(f), "classification_folder": str(c)} for n, (f, c) in folders.items()},
        "runs": {method: str(folder) for method, folder in runs.items()},
    }
    (root / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "HF_MODULES_CACHE": str(root / "modules"), "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, str(CHILD), str(root / "cases.json"), str(root / "child.pt")],
        env=env, cwd=root, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    child = torch.load(root / "child.pt", weights_only=False)
    return folders, child, Image.open(image_path), runs


@pytest.mark.parametrize("name", list(METHODS))
def test_remote_code_reproduces_hf_mim_without_hf_mim(exported, name):
    folders, child, image, _ = exported
    expected, got = _expected(*folders[name], image), child[name]
    # Every class came from the folder's files, not from an installed hf_mim.
    for key in ("config_class", "processor_class", "model_class"):
        assert got[key].startswith("transformers_modules."), (key, got[key])
    for key in ("pixel_values", "last_hidden_state", "pooler_output", "logits", "pipeline"):
        assert torch.equal(got[key], expected[key]), key
    assert got["pretraining_state"].keys() == expected["pretraining_state"].keys()
    for key, tensor in expected["pretraining_state"].items():
        assert torch.equal(got["pretraining_state"][key], tensor), key
    # Without trust_remote_code: transformers' own refusal, naming the option.
    assert "trust_remote_code=True" in got["without_trust"]


@pytest.mark.parametrize("method", list(RUNS))
def test_a_runs_top_level_folder_loads_without_hf_mim(exported, method):
    """The full pretraining model a run_<method>.py run saves (not only its backbone/) carries the remote code."""
    _, child, _, runs = exported
    got = child["runs"][method]
    assert got["pretraining_class"].startswith("transformers_modules.") and got["pretraining_class_name"].endswith(
        "ForPreTraining"
    )
    assert got["model_class"].startswith("transformers_modules.")
    expected = AutoModelForPreTraining.from_pretrained(runs[method]).state_dict()  # native, with hf_mim
    assert got["pretraining_state"].keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(got["pretraining_state"][key], tensor), key
    processor = json.loads((runs[method] / "preprocessor_config.json").read_text())
    assert "AutoImageProcessor" in processor["auto_map"]


@pytest.mark.parametrize("name", list(METHODS))
def test_exported_folder_loads_natively_with_hf_mim(exported, name):
    folders, _, _, _ = exported
    folder, _ = folders[name]
    model = AutoModel.from_pretrained(folder)  # no trust_remote_code: the registered hf_mim class wins
    assert type(model).__module__.startswith("hf_mim.models.")
    assert type(AutoImageProcessor.from_pretrained(folder)).__module__.startswith("hf_mim.models.")
    assert type(AutoConfig.from_pretrained(folder)).__module__.startswith("hf_mim.models.")


def test_bundle_holds_only_what_the_classes_need(exported):
    folders, _, _, _ = exported
    for name, (folder, _) in folders.items():
        files = {p.name for p in folder.glob("*.py")}
        # Every single-dot import names a file of the bundle, and nothing imports hf_mim outside a try block.
        for path in folder.glob("*.py"):
            source = path.read_text()
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.ImportFrom) and node.level:
                    assert node.level == 1 and f"{node.module}.py" in files, (path.name, node.module)
            assert third_party_imports(source) <= ALLOWED_THIRD_PARTY, path.name
        assert "hf_mim_trainers_run_pretraining.py" not in files and "hf_mim_data_bundled.py" not in files
        if name.startswith("vicregl"):  # no ViT pieces, no EMA teacher or masking in a ConvNet model
            assert not any(f.startswith(("hf_mim_teacher", "hf_mim_masking")) for f in files), files
    # CAE has no EMA teacher: only I-JEPA and CAPI bundle it.
    cae_files = {p.name for p in folders["cae"][0].glob("*.py")}
    assert "hf_mim_teacher_ema.py" not in cae_files
    assert "hf_mim_teacher_ema.py" in {p.name for p in folders["capi"][0].glob("*.py")}
    config = json.loads((folders["capi"][0] / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_capi.CapiModel"
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_capi.CapiForImageClassification"
    processor = json.loads((folders["capi"][0] / "preprocessor_config.json").read_text())
    assert processor["auto_map"] == {"AutoImageProcessor": "image_processing_capi.CapiImageProcessor"}


def test_bundle_is_generated_from_the_package_source():
    files = bundle_sources(["hf_mim.layers.blocks"])
    source = files["hf_mim_layers_blocks.py"]
    assert "from hf_mim/layers/blocks.py" in source.splitlines()[0]
    # The package-relative imports became sibling imports of the defining modules.
    assert "from .hf_mim_layers_attention import" in source and "from ..attention" not in source
    original = Path(hf_mim.__file__).parent.joinpath("layers", "blocks.py").read_text()
    body = source.split("\n", 2)[2]
    kept = [line for line in original.splitlines() if not line.lstrip().startswith(("from .", "import ."))]
    assert all(line in body for line in kept if line.strip() and not line.startswith((" ", ")")))


def test_save_modes_keep_the_folder_consistent(tmp_path, exported):
    folders, _, _, _ = exported
    folder, _ = folders["ijepa"]
    model = AutoModel.from_pretrained(folder)  # config carries the exported auto_map
    model.save_pretrained(tmp_path / "again")  # default: re-export what was loaded
    assert (tmp_path / "again" / "modeling_ijepa.py").is_file()
    assert "auto_map" in json.loads((tmp_path / "again" / "config.json").read_text())
    model.save_pretrained(tmp_path / "plain", remote_code=False)
    assert "auto_map" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    assert not list((tmp_path / "plain").glob("*.py"))
    AutoModel.from_pretrained(tmp_path / "plain")


def test_export_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="save the model"):
        export_remote_code(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not an hf_mim model"):
        export_remote_code(tmp_path)


def test_dalle_tokenizer_bundle_is_two_files():
    # The tokenizer needs only its own module and the save mixin (its Auto registration lives in the package).
    from hf_mim.models.cae.tokenizer_dalle import DalleTokenizer

    assert sorted(bundle_sources([DalleTokenizer.__module__])) == ["hf_mim_modeling_utils.py", "tokenizer_dalle.py"]
