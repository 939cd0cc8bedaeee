"""Presets you can discover (issue 27, item 4): every script's --help lists its presets with their sizes, an unknown
preset fails at once (no network) with the list and the closest name, former names warn, and the shipped sizes are
the configs' models."""

import socket
import warnings

import pytest
import transformers

from hf_mim.presets import CONFIG_PRESETS, PRESET_ALIASES, PRESET_DESCRIPTIONS, presets_for
from hf_mim.presets.lookup import UnknownPresetError, resolve_config_name
from hf_mim.presets.measured import PRESET_SIZES
from hf_mim.presets.sizes import MODEL_CLASSES, count_parameters, preset_parameters

from .helpers import load_script

PRETRAINING = {
    method: f"examples/pytorch/pretraining/run_{method}.py" for method in ("capi", "ijepa", "cae", "vicregl")
}
RECIPES = {"capi": "CAPI", "ijepa": "IJEPA", "cae": "CAE", "vicregl": "VICREGL"}
ALL_PRESETS_SCRIPTS = [
    "examples/pytorch/image-classification/run_image_classification.py",
    "examples/pytorch/image-classification/run_knn.py",
    "examples/pytorch/semantic-segmentation/run_semantic_segmentation.py",
]


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection (a Hub lookup) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)


# ------------------------------------------------------------------------------------------------- the table
def test_every_preset_is_described_and_measured_and_named_by_its_kind():
    assert PRESET_DESCRIPTIONS.keys() == CONFIG_PRESETS.keys() == PRESET_SIZES.keys()
    for name, (kind, _) in PRESET_DESCRIPTIONS.items():
        assert kind in {"paper", "reduced", "demo"}, name
        # "-tiny" is a toy and only a toy: the paper's ViT-Tiny is "vitt16", never "tiny"
        assert ("-tiny" in name) == (kind == "demo"), name
        size = PRESET_SIZES[name]
        assert size.seconds_per_step is not None or size.note.startswith("not measured"), name
    for old, new in PRESET_ALIASES.items():
        assert old not in CONFIG_PRESETS and new in CONFIG_PRESETS


@pytest.mark.parametrize("name", list(CONFIG_PRESETS))
def test_shipped_parameter_counts_and_image_size_are_the_configs(name):
    size = PRESET_SIZES[name]
    assert preset_parameters(name) == (size.backbone_parameters, size.pretraining_parameters)
    config = CONFIG_PRESETS[name]()
    assert size.image_size == config.image_size
    if PRESET_DESCRIPTIONS[name][0] == "demo":  # small enough to build for real: the meta count is the real one
        backbone_class, pretraining_class = MODEL_CLASSES[type(config)]
        assert count_parameters(backbone_class(config)) == size.backbone_parameters
        assert count_parameters(pretraining_class(config)) == size.pretraining_parameters


# ----------------------------------------------------------------------------------------- unknown and former names
def test_unknown_preset_fails_at_once_with_the_list_and_the_closest_name(no_network):
    with pytest.raises(UnknownPresetError) as error:
        resolve_config_name("capi-tinny", presets_for("capi"), "run_capi.py")
    message = str(error.value)
    assert "Did you mean 'capi-tiny'?" in message
    assert all(name in message for name in presets_for("capi"))
    # another method's preset is named as such
    with pytest.raises(UnknownPresetError, match="'cae-vitb16' is a preset of run_cae.py"):
        resolve_config_name("cae-vitb16", presets_for("capi"))


def test_hub_ids_and_folders_still_go_to_from_pretrained(tmp_path, monkeypatch):
    presets = presets_for("ijepa")
    assert resolve_config_name("facebook/ijepa_vith14_1k", presets) == "facebook/ijepa_vith14_1k"
    assert resolve_config_name(str(tmp_path), presets) == str(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-config").mkdir()
    assert resolve_config_name("my-config", presets) == "my-config"
    # a single word that looks like no preset may be a legacy Hub id online; offline it cannot be anything
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    assert resolve_config_name("gpt2", presets) == "gpt2"
    with pytest.raises(UnknownPresetError):
        resolve_config_name("ijepa-base", presets)  # the method's prefix: a preset typo even online
    with pytest.raises(UnknownPresetError):
        resolve_config_name("gpt2", presets, external=False)  # run_knn.py builds presets only
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownPresetError):
        resolve_config_name("gpt2", presets)


def test_former_names_warn_and_resolve():
    with pytest.warns(FutureWarning, match="'cae-v2-tiny' is a former name of the preset 'cae-v2-vitt16'"):
        assert resolve_config_name("cae-v2-tiny", presets_for("cae")) == "cae-v2-vitt16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_config_name("cae-tiny", presets_for("cae")) == "cae-tiny"


def test_pretraining_script_rejects_a_typo_before_any_work(tmp_path, monkeypatch, capsys, no_network):
    monkeypatch.chdir(tmp_path)
    script = load_script(PRETRAINING["capi"])
    with pytest.raises(SystemExit) as exit_:
        script.run(script.CAPI, ["--config_name", "capi-base", "--output_dir", str(tmp_path / "run")])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "run_capi.py: error: --config_name 'capi-base' is not a preset" in error and "Did you mean" in error
    assert not (tmp_path / "run").exists()


def test_knn_rejects_a_typo_and_accepts_a_former_name(monkeypatch, capsys, no_network):
    script = load_script(ALL_PRESETS_SCRIPTS[1])
    with pytest.raises(SystemExit) as exit_:
        script.main(["--config_name", "vicregl-tiny-resent"])
    assert exit_.value.code == 2
    assert "Did you mean 'vicregl-tiny-resnet'?" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------ --help
def _help(script_path: str, method: str | None, tmp_path, monkeypatch, capsys) -> str:
    monkeypatch.chdir(tmp_path)
    script = load_script(script_path)
    with pytest.raises(SystemExit) as exit_:
        script.run(getattr(script, RECIPES[method]), ["--help"]) if method else script.main(["--help"])
    assert exit_.value.code == 0
    assert not any(tmp_path.iterdir())  # no output folder: --help did no work
    return capsys.readouterr().out


@pytest.mark.parametrize("method", list(PRETRAINING))
def test_pretraining_help_lists_the_methods_presets_with_sizes(method, tmp_path, monkeypatch, capsys):
    text = _help(PRETRAINING[method], method, tmp_path, monkeypatch, capsys)
    table = text[text.index("Presets (--config_name):") :]
    for name in CONFIG_PRESETS:
        assert (f"\n  {name} " in table) == (name in presets_for(method)), name
    for name in presets_for(method):
        size = PRESET_SIZES[name]
        row = next(line for line in table.splitlines() if line.startswith(f"  {name} "))
        assert f"{size.image_size} px" in row and PRESET_DESCRIPTIONS[name][0] in row
        assert (f"{size.seconds_per_step:.3g} ({size.batch_size})" if size.seconds_per_step else "not measured") in row


@pytest.mark.parametrize("script_path", ALL_PRESETS_SCRIPTS)
def test_evaluation_help_lists_every_preset(script_path, tmp_path, monkeypatch, capsys):
    text = _help(script_path, None, tmp_path, monkeypatch, capsys)
    table = text[text.index("Presets (--config_name):") :]
    assert all(f"\n  {name} " in table for name in CONFIG_PRESETS)


def test_help_table_marks_the_former_names():
    from hf_mim.presets.help import presets_table

    table = presets_table(presets_for("cae"), default="cae-tiny")
    assert "cae-tiny *" in table and "cae-v2-tiny -> cae-v2-vitt16" in table
