"""Every code block of README.md runs (issue 27 item 5). The README is parsed when the tests run, so a block added or
changed there is tested as it is written.

- ```python blocks run, each in a fresh namespace. A `"path/to/<name>"` string stands for a saved model: the table
  `PLACEHOLDER_FOLDERS` saves a tiny one of the same method in its place. A placeholder that the table does not map
  fails the test, so a new snippet cannot be skipped silently. Free names the README leaves to the reader (`image`,
  `pixel_values`, `mask`) come from `preamble()`.
- Each command of a ```bash block is checked. Cheap ones run for real, in README order, in one scratch folder (so
  `outputs/capi-pretraining/backbone`, written by the first command, is there for the later ones), with
  `SHORT_RUN`'s arguments appended to make them tiny, the files and folders they name made from the fixtures
  (`STAND_IN_FILES`, `STAND_IN_IMAGE_FOLDERS`) and their `<placeholders>` filled (`COMMAND_PLACEHOLDERS`). Those that need ImageNet-size data, GPUs, several processes or
  a download are listed in `PARSE_ONLY` with the reason: their argument lists go through the script's own parser
  (HfArgumentParser / argparse; accelerate's for `accelerate launch`), so a renamed or removed flag, or an unknown
  preset, fails. Optional arguments written `[--flag VALUE]` are parsed too (the first of `a|b`), and left out of
  real runs. Entries of the tables that no command uses fail, so the tables cannot go stale silently.
- The model cards' usage snippets run too, and cards, remote-code headers and README name one install command
  (`hf_mim.hub.install`): hf_mim is not on the package index.
"""

import argparse
import dataclasses
import logging
import os
import re
import runpy
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
import torch
import transformers
import transformers.training_args
from safetensors.torch import load_file
from transformers import HfArgumentParser

from hf_mim import (
    CaeConfig,
    CaeImageProcessor,
    CaeModel,
    CapiConfig,
    CapiImageProcessor,
    CapiModel,
    IJepaConfig,
    IJepaImageProcessor,
    IJepaModel,
    VicreglConfig,
    VicreglImageProcessor,
    VicreglModel,
)
from hf_mim.data import bundled_photos
from hf_mim.hub.install import INSTALL_COMMAND, INSTALL_SENTENCE
from hf_mim.hub.model_cards import CARD_TEXTS, conversion_card, usage_section
from hf_mim.hub.remote_code import bundle_sources
from hf_mim.image_processing_utils import image_processor_at
from hf_mim.models.cae.tokenizer_dalle import DalleTokenizer, DalleTokenizerConfig
from hf_mim.presets import CONFIG_PRESETS

from .helpers import FIXTURES, REPO
from .readme_blocks import Command, bash_commands, fenced_blocks

README = REPO / "README.md"


# ------------------------------------------------------------------------------------------------ python blocks
def _save(model, processor, folder: Path) -> Path:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# "path/to/<name>" in a ```python block -> how its tiny stand-in is saved (same method and outputs, tiny widths).
PLACEHOLDER_FOLDERS = {
    "path/to/capi-vitl14-lvd": lambda folder: _save(
        CapiModel(CapiConfig.tiny()), image_processor_at(CapiImageProcessor, 56), folder
    ),
    "path/to/vicregl-convnext-small-alpha0.9": lambda folder: _save(
        VicreglModel(VicreglConfig.tiny()), image_processor_at(VicreglImageProcessor, 64), folder
    ),
    # 12 blocks: the dense-tasks snippet picks blocks 4, 6, 8 and 12, as for CAE-B
    "path/to/cae-base-1600ep": lambda folder: _save(
        CaeModel(CaeConfig.tiny(num_hidden_layers=12)), image_processor_at(CaeImageProcessor, 64), folder
    ),
}


def preamble() -> dict:
    """What the README's snippets take as given."""
    return {
        "image": bundled_photos()[0],  # a PIL photo (scikit-image's astronaut)
        "pixel_values": torch.randn(2, 3, 32, 32),  # a batch of two 32-px images (ConvNeXt's smallest input)
        # CAE's (B, N) masked positions for the stand-in's 2 x 2 patch grid at 32 px (patch 16): half of them
        "mask": torch.tensor([[True, False, False, True], [False, True, True, False]]),
    }


def python_blocks():
    return [block for block in fenced_blocks(README) if block.language == "python"]


def placeholders_in(code: str) -> list[str]:
    return sorted(set(re.findall(r'"(path/to/[^"]+)"', code)))


@pytest.fixture(scope="module")
def placeholder_folders(tmp_path_factory):
    """name -> folder, each saved the first time a block asks for it."""
    folders = {}

    def folder_for(placeholder: str) -> Path:
        if placeholder not in folders:
            folder = tmp_path_factory.mktemp("placeholder") / Path(placeholder).name
            folders[placeholder] = PLACEHOLDER_FOLDERS[placeholder](folder)
        return folders[placeholder]

    return folder_for


def check_upernet_uses_the_loaded_backbone(namespace: dict, folders: dict[str, Path]):
    """The UperNet snippet must segment with the weights it loaded, not with the random backbone UperNet builds."""
    saved = load_file(folders["path/to/cae-base-1600ep"] / "model.safetensors")
    used = namespace["model"].backbone.state_dict()  # the saved names under the backbone's prefix ("cae.")
    for name, tensor in saved.items():
        matches = [key for key in used if key == name or key.endswith("." + name)]
        assert matches, f"{name} is not in model.backbone"
        torch.testing.assert_close(used[matches[0]], tensor, rtol=0, atol=0, msg=f"{name} is not the loaded one")
    batch, _, height, width = namespace["pixel_values"].shape
    assert namespace["logits"].shape == (batch, 150, height, width)  # the snippet's comment


def check_capi_output_shapes(namespace: dict, folders: dict[str, Path]):
    """The shapes the CAPI loading snippet's comments give, for the stand-in's config."""
    config, outputs = namespace["model"].config, namespace["outputs"]
    batch, width, registers = 1, config.hidden_size, config.num_register_tokens
    rows, columns = outputs.feature_map.shape[1:3]
    assert outputs.pooler_output.shape == (batch, width)
    assert outputs.feature_map.shape == (batch, rows, columns, width) and rows * config.patch_size <= 56 < 64
    assert outputs.register_tokens.shape == (batch, registers, width)
    assert outputs.last_hidden_state.shape == (batch, registers + rows * columns, width)
    torch.testing.assert_close(outputs.register_tokens, outputs.last_hidden_state[:, :registers])  # registers first


def check_pipeline_outputs(namespace: dict, folders: dict[str, Path]):
    """`pool=True` gives the pooler_output, the default every token of last_hidden_state (the pipeline snippet)."""
    extractor = namespace["extractor"]
    with torch.no_grad():
        outputs = extractor.model(**extractor.image_processor(images=namespace["image"], return_tensors="pt"))
    pooled, tokens = torch.tensor(namespace["global_repr"]), torch.tensor(namespace["tokens"])
    torch.testing.assert_close(pooled.reshape(outputs.pooler_output.shape), outputs.pooler_output)
    torch.testing.assert_close(tokens.reshape(outputs.last_hidden_state.shape), outputs.last_hidden_state)


def check_vicregl_output_shapes(namespace: dict, folders: dict[str, Path]):
    """The VICRegL snippet's comments for the ConvNeXt stand-in: (B, h, w, C) maps after the final norm, the
    representation their mean (the per-token final LayerNorm, averaged), last_hidden_state (B, C, h, w)."""
    out = namespace["out"]
    assert out.pooler_output.shape == (2, namespace["model"].config.hidden_sizes[-1])
    assert out.feature_map.shape == out.last_hidden_state.permute(0, 2, 3, 1).shape
    torch.testing.assert_close(out.pooler_output, out.feature_map.mean(dim=(1, 2)))


def check_cae_masked_tokens(namespace: dict, folders: dict[str, Path]):
    """With `bool_masked_pos` the encoder returns cls + the visible patches only (the CAE snippet's comment)."""
    visible = (~namespace["mask"]).sum(dim=1)
    assert namespace["out"].last_hidden_state.shape[1] == 1 + visible[0] == 1 + visible[1]


# A distinctive line of a block -> what else is checked after it ran.
BLOCK_CHECKS = {
    "outputs.register_tokens": check_capi_output_shapes,
    "extractor(image, pool=True)": check_pipeline_outputs,
    "out.feature_map": check_vicregl_output_shapes,
    "bool_masked_pos=mask": check_cae_masked_tokens,
    "model.backbone = backbone": check_upernet_uses_the_loaded_backbone,
}


# Fence languages: ```python and ```bash are run here; a block without a language is printed output or a file
# tree. Any other language fails until this test says how to check it.
LANGUAGES = {"python": "run", "bash": "run or parsed", "": "output or a file tree, not code"}


def test_every_block_is_a_kind_this_test_knows():
    unknown = [block.name for block in fenced_blocks(README) if block.language not in LANGUAGES]
    assert not unknown, f"code blocks in a language this test does not run: {unknown}"


def test_python_block_checks_are_used():
    code = "".join(block.code for block in python_blocks())
    assert [key for key in BLOCK_CHECKS if key not in code] == [], "a check whose README block is gone"
    used = {p for block in python_blocks() for p in placeholders_in(block.code)}
    assert sorted(set(PLACEHOLDER_FOLDERS) - used) == [], "placeholders no README block uses any more"


def run_block(block, placeholder_folders) -> tuple[dict, dict[str, Path]]:
    """Runs `block` with its placeholders replaced by their stand-ins: (its namespace, placeholder -> folder)."""
    unmapped = [p for p in placeholders_in(block.code) if p not in PLACEHOLDER_FOLDERS]
    assert not unmapped, f"{block.name}: add a stand-in to PLACEHOLDER_FOLDERS for {unmapped}"
    code, folders = block.code, {}
    for placeholder in placeholders_in(block.code):
        folders[placeholder] = placeholder_folders(placeholder)
        code = code.replace(f'"{placeholder}"', repr(str(folders[placeholder])))
    namespace = preamble()
    exec(compile(code, block.name, "exec"), namespace)  # the README's own code
    return namespace, folders


@pytest.mark.parametrize("block", python_blocks(), ids=lambda block: f"line{block.line}")
def test_python_block_runs(block, placeholder_folders):
    namespace, folders = run_block(block, placeholder_folders)
    for marker, check in BLOCK_CHECKS.items():
        if marker in block.code:
            check(namespace, folders)


def test_upernet_check_catches_the_random_backbone(placeholder_folders):
    """Without its `model.backbone = backbone` line the snippet segments with UperNet's random backbone: caught."""
    marker = "model.backbone = backbone"
    (block,) = [block for block in python_blocks() if marker in block.code]
    namespace, folders = run_block(
        dataclasses.replace(block, code=block.code.replace(marker, "pass")), placeholder_folders
    )
    with pytest.raises(AssertionError, match="not the loaded one"):
        check_upernet_uses_the_loaded_backbone(namespace, folders)


# -------------------------------------------------------------------------------------------------- bash blocks
# One optimizer step of batch 4, no loader worker process and no learning report (its two digit probes take longer
# than the rest of the file; tests/test_learning_report.py covers it).
PRETRAINING_SHORT = (
    "--max_steps", "1", "--per_device_train_batch_size", "4", "--dataloader_num_workers", "0",
    "--learning_report", "False",
)  # fmt: skip

# Script -> arguments appended when one of its commands runs for real (argparse keeps the last occurrence).
SHORT_RUN = {
    "examples/pytorch/pretraining/run_capi.py": PRETRAINING_SHORT,
    "examples/pytorch/pretraining/run_ijepa.py": PRETRAINING_SHORT,
    "examples/pytorch/pretraining/run_vicregl.py": PRETRAINING_SHORT,
    "examples/pytorch/pretraining/run_cae.py": PRETRAINING_SHORT,
    "examples/pytorch/pretraining/train_dalle_tokenizer.py": (
        "--steps", "1", "--batch_size", "4", "--views_per_image", "1", "--max_views", "8",
    ),
    "examples/pytorch/image-classification/run_image_classification.py": (
        "--max_steps", "1", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
        "--max_train_samples", "8", "--max_eval_samples", "8", "--dataloader_num_workers", "0",
    ),
    "examples/pytorch/image-classification/run_knn.py": ("--train_dir", "{images}", "--validation_dir", "{images}"),
    "examples/pytorch/feature-extraction/pca_features.py": ("--resolution", "56"),
    "examples/pytorch/semantic-segmentation/run_semantic_segmentation.py": (
        "--synthetic_train_images", "8", "--synthetic_validation_images", "4", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--dataloader_num_workers", "0",
    ),
    "scripts/convert/convert_capi_to_hf.py": (),
    # the fixture's width (40) is no released ViT's, so its head count must be given (README "I-JEPA")
    "scripts/convert/convert_ijepa_to_hf.py": ("--num_attention_heads", "4"),
    "scripts/convert/convert_vicregl_to_hf.py": (),
}  # fmt: skip

# Files the README's real commands read, linked into the scratch folder under the README's names: the original
# code's tiny fixture checkpoints stand in for the released files.
STAND_IN_FILES = {
    "capi_vitl14_lvd.pth": FIXTURES / "capi" / "checkpoint.pth",
    "IN1K-vit.h.14-300e.pth.tar": FIXTURES / "ijepa" / "checkpoint.pth.tar",
    "convnext_small_alpha0.9_fullckpt.pth": FIXTURES / "vicregl_convnext" / "checkpoint.pth",
}

# Folders the README's real commands read, made in the scratch folder: a tiny image folder (two classes of three
# bundled photos each) under each name.
STAND_IN_IMAGE_FOLDERS = ("data/train", "data/val")

# A <placeholder> of a command -> what a real run gets in its place ({dataset}: the scratch fixture's tiny `datasets`
# folder). A command that runs with a placeholder missing here fails.
COMMAND_PLACEHOLDERS = {
    "<backbone>": "outputs/capi-pretraining/backbone",  # the main job's, written by the README's first command
    "<name or folder>": "{dataset}",  # `--dataset_name` takes a local folder with train/ and validation/ splits
}

# SHORT_RUN's data arguments give way to a command's own: `--dataset_name` and `--train_dir` exclude each other.
DATA_FLAGS = {"--train_dir", "--validation_dir", "--dataset_name"}

# A part of a command -> why the command is only parsed, not run.
PARSE_ONLY = {
    "pip install": "installs packages (needs the package index); the extras it names are checked in pyproject.toml",
    "python -m pytest": "the test suite itself",
    "multi_gpu_ddp.yaml": "ImageNet on several GPUs",
    "cpu_ddp_2proc.yaml": "two processes; tests/test_distributed_capi.py runs 2-process DDP on CPU",
    "--train_dir /data/imagenet/train": "ImageNet-size data at the released size",
    "encoder.pkl": "OpenAI's DALL-E encoder.pkl (a download); tests/test_dalle_tokenizer.py converts a stand-in",
    "transformers/examples/pytorch": "transformers' example script is not shipped with the transformers wheel; "
    "tests/test_transformers_example_flow.py runs its flow step by step",
    "publish_releases.py": "needs the released files; tests/test_releases_and_cards.py runs it on fixtures",
}

# The flags of transformers' run_image_classification.py that are its own (not TrainingArguments'): that script is
# not installed, so its own dataclasses cannot be imported (README "Or with transformers' own example script").
TRANSFORMERS_EXAMPLE_OWN_FLAGS = {
    "--model_name_or_path",
    "--train_dir",
    "--validation_dir",
    "--ignore_mismatched_sizes",
}


class _Parsed(Exception):
    """Raised in place of running a script once its parser has read the arguments."""

    def __init__(self, parsed):
        self.parsed = parsed


def run_as_main(script: Path, argv, monkeypatch):
    """`python script argv` in this process; a non-zero exit fails."""
    with monkeypatch.context() as patch:
        patch.setattr(sys, "argv", [str(script), *argv])
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exit:
            assert exit.code in (0, None), f"{script.name} exited with {exit.code}"


def parse_only(script: Path, argv, monkeypatch) -> list:
    """Runs `script` as __main__ until its parser has read `argv`, then stops it: what the parser returned."""
    hf_parse, plain_parse = HfArgumentParser.parse_args_into_dataclasses, argparse.ArgumentParser.parse_args

    def stop_after_hf(self, *args, **kwargs):
        raise _Parsed(list(hf_parse(self, *args, **kwargs)))

    def stop_after_plain(self, *args, **kwargs):
        raise _Parsed([plain_parse(self, *args, **kwargs)])

    with monkeypatch.context() as patch:
        # Parsed as on the GPU machine the command is written for: TrainingArguments refuses --bf16 without one.
        patch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: True)
        patch.setattr(HfArgumentParser, "parse_args_into_dataclasses", stop_after_hf)
        patch.setattr(argparse.ArgumentParser, "parse_args", stop_after_plain)
        try:
            run_as_main(script, argv, patch)
        except _Parsed as parsed:
            return parsed.parsed
    raise AssertionError(f"{script.name} finished without parsing its arguments")


def check_presets(parsed: list):
    for arguments in parsed:
        name = getattr(arguments, "config_name", None)
        if name and "/" not in name and not Path(name).exists():
            assert name in CONFIG_PRESETS, f"--config_name {name} is not a preset ({', '.join(CONFIG_PRESETS)})"


def repo_path(token: str) -> str:
    """Scripts and config files are named from the repository root; the commands run elsewhere."""
    return str(REPO / token) if token.split("/")[0] in {"examples", "scripts", "benchmarks"} else token


def script_and_arguments(command: Command, argv: tuple[str, ...], in_process: bool = False) -> tuple[Path, list[str]]:
    """(script, its arguments) of `python SCRIPT ...` or `accelerate launch [launcher flags] SCRIPT ...`; the
    launcher's flags go through accelerate's own parser. `in_process`: the command is about to run here, as one
    process, which is what `accelerate launch` without a config file or process count starts."""
    argv = [repo_path(token) for token in argv]
    if argv[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser

        launch = launch_command_parser().parse_args(argv[2:])
        if launch.config_file:
            assert Path(launch.config_file).is_file(), f"{command.name}: no {launch.config_file}"
        if in_process:
            single = not launch.config_file and launch.num_processes in (None, 1) and not launch.multi_gpu
            assert single, f"{command.name}: several processes; say in PARSE_ONLY why it is not run"
        return Path(launch.training_script), list(launch.training_script_args)
    assert argv[0] == "python" and argv[1].endswith(".py"), f"{command.name}: not a command this test knows"
    return Path(argv[1]), argv[2:]


def check_pip_install(command: Command):
    assert command.argv[:3] == ("pip", "install", "-e"), command.name
    target = command.argv[3]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == "hf_mim" and target.split("[")[0] == "."
    extras = target.partition("[")[2].rstrip("]")
    for extra in filter(None, extras.split(",")):
        assert extra in project["optional-dependencies"], f"{command.name}: no extra {extra!r} in pyproject.toml"


def check_transformers_example(command: Command):
    code, script, *arguments = command.argv[2:]
    compile(code, command.name, "exec")
    assert script.startswith("transformers/examples/pytorch/") and script.endswith(".py")
    from transformers import TrainingArguments

    (_, remaining) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        args=arguments, return_remaining_strings=True
    )
    own = {token for token in remaining if token.startswith("--")}
    assert own <= TRANSFORMERS_EXAMPLE_OWN_FLAGS, (
        f"{command.name}: unknown flags {own - TRANSFORMERS_EXAMPLE_OWN_FLAGS}"
    )


def shortened(arguments: list[str], short: tuple[str, ...]) -> list[str]:
    """`arguments` + `short`, less `short`'s data flags (and their values) when `arguments` gives data itself."""
    if not DATA_FLAGS & set(arguments):
        return [*arguments, *short]
    pairs = zip(short[::2], short[1::2])
    return [*arguments, *(token for flag, value in pairs if flag not in DATA_FLAGS for token in (flag, value))]


def with_placeholders_filled(command: Command, argv: list[str], scratch: dict) -> list[str]:
    filled = [COMMAND_PLACEHOLDERS.get(token, token).format(**scratch) for token in argv]
    unmapped = [token for token in filled if token.startswith("<") and token.endswith(">")]
    assert not unmapped, f"{command.name}: add {unmapped} to COMMAND_PLACEHOLDERS (or a PARSE_ONLY reason)"
    return filled


def readme_commands() -> list[Command]:
    return [command for block in fenced_blocks(README) if block.language == "bash" for command in bash_commands(block)]


def reason_not_run(command: Command) -> str | None:
    return next((reason for part, reason in PARSE_ONLY.items() if part in command.text), None)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """The folder the commands run in: the stand-in files and folders under the README's names, a tiny image folder
    and a tiny `datasets` folder with a train and a validation split of it."""
    for name, source in STAND_IN_FILES.items():
        (tmp_path / name).symlink_to(source)
    images = tmp_path / "tiny-images"
    for index, photo in enumerate(bundled_photos()[:6]):
        (images / f"class{index % 2}").mkdir(parents=True, exist_ok=True)
        photo.convert("RGB").resize((64, 64)).save(images / f"class{index % 2}" / f"{index}.png")
    for name in [*STAND_IN_IMAGE_FOLDERS, "tiny-dataset/train", "tiny-dataset/validation"]:
        shutil.copytree(images, tmp_path / name)  # copies: the `datasets` folder builders skip linked folders
    monkeypatch.chdir(tmp_path)
    # The scripts run in this process: what they set for themselves (environment, logging) is undone afterwards.
    environment, root = dict(os.environ), logging.getLogger()
    handlers, level, verbosity = list(root.handlers), root.level, transformers.logging.get_verbosity()
    yield {"images": str(images), "dataset": str(tmp_path / "tiny-dataset")}
    os.environ.clear()
    os.environ.update(environment)
    root.handlers[:], root.level = handlers, level
    transformers.logging.set_verbosity(verbosity)


def test_bash_tables_are_used():
    commands = readme_commands()
    texts = " ".join(command.text for command in commands)
    assert [part for part in PARSE_ONLY if part not in texts] == [], "PARSE_ONLY entries no command matches"
    assert [name for name in STAND_IN_FILES if name not in texts] == [], "stand-in files no command names"
    assert [name for name in STAND_IN_IMAGE_FOLDERS if name not in texts] == [], "stand-in folders no command names"
    assert [name for name in COMMAND_PLACEHOLDERS if name not in texts] == [], "placeholders no command has"
    assert any(command.text == INSTALL_COMMAND for command in commands), "README must install with INSTALL_COMMAND"
    run = " ".join(command.text for command in commands if reason_not_run(command) is None)
    assert [script for script in SHORT_RUN if script not in run] == [], "SHORT_RUN scripts no command runs"


def test_dry_parse_fails_on_a_renamed_flag_or_preset(monkeypatch):
    pca = REPO / "examples/pytorch/feature-extraction/pca_features.py"
    assert parse_only(pca, ["--resolution", "56"], monkeypatch)[0].resolution == 56
    with pytest.raises(AssertionError, match="exited with 2"):  # argparse: unrecognized arguments
        parse_only(pca, ["--side", "56"], monkeypatch)
    capi = REPO / "examples/pytorch/pretraining/run_capi.py"
    check_presets(parse_only(capi, ["--config_name", "capi-tiny", "--bf16"], monkeypatch))
    with pytest.raises(ValueError, match="not used"):  # HfArgumentParser: arguments left over
        parse_only(capi, ["--maximum_steps", "2"], monkeypatch)
    with pytest.raises(AssertionError, match="not a preset"):
        check_presets(parse_only(capi, ["--config_name", "capi-huge"], monkeypatch))


def test_bash_commands(scratch, monkeypatch):
    """Every command in README order; failures are collected, so one broken command does not hide the next."""
    failures, ran = [], []
    for command in readme_commands():
        reason = reason_not_run(command)
        try:
            if command.argv[:2] == ("pip", "install"):
                check_pip_install(command)
            elif command.argv[:3] == ("python", "-m", "pytest"):
                assert (REPO / command.argv[-1]).is_dir(), command.name
            elif command.argv[:2] == ("python", "-c"):
                assert reason, f"{command.name}: a `python -c` command must say in PARSE_ONLY why it is not run"
                check_transformers_example(command)
            else:
                script, arguments = script_and_arguments(command, command.argv)
                check_presets(parse_only(script, arguments, monkeypatch))
                if reason is None:
                    script, arguments = script_and_arguments(command, command.required_argv, in_process=True)
                    name = str(script.relative_to(REPO))
                    assert name in SHORT_RUN, f"{name}: say in SHORT_RUN how it runs tiny, or in PARSE_ONLY why not"
                    arguments = with_placeholders_filled(command, shortened(arguments, SHORT_RUN[name]), scratch)
                    run_as_main(script, arguments, monkeypatch)
            if reason is None:
                ran.append(command.name)
        except (Exception, SystemExit) as error:  # reported below, with the command
            failures.append(f"{command.name}\n    {type(error).__name__}: {error}")
    assert not failures, "README commands that fail:\n" + "\n".join(failures)
    assert ran, "no README command ran for real"


# ----------------------------------------------------------------------------------------------- model cards
# A card's method -> a tiny folder of it (image processor first, then the model with its remote-code bundle).
CARD_FOLDERS = {
    "capi": lambda: (CapiModel(CapiConfig.tiny()), image_processor_at(CapiImageProcessor, 56)),
    "ijepa": lambda: (IJepaModel(IJepaConfig.tiny()), image_processor_at(IJepaImageProcessor, 56)),
    "cae": lambda: (CaeModel(CaeConfig.tiny()), image_processor_at(CaeImageProcessor, 64)),
    "vicregl": lambda: (VicreglModel(VicreglConfig.tiny()), image_processor_at(VicreglImageProcessor, 64)),
    "dalle_tokenizer": lambda: (DalleTokenizer(DalleTokenizerConfig.tiny()), None),
}


@pytest.mark.parametrize("method", sorted({card.method for card in CARD_TEXTS.values()}))
def test_card_usage_runs(method, tmp_path):
    """The '## Usage' section of the cards: the hf_mim snippet runs on a tiny folder of the method; the remote-code
    one compiles (tests/test_remote_code.py loads such folders in a Python without hf_mim)."""
    model, processor = CARD_FOLDERS[method]()
    if processor is not None:
        processor.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path, remote_code=True)
    section = usage_section(method, str(tmp_path), model.config)
    assert INSTALL_SENTENCE in section and "pip install hf_mim" not in section
    native, remote = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    exec(compile(native, f"{method} card", "exec"), {"image": bundled_photos()[0]})
    compile(remote, f"{method} card, remote code", "exec")


def test_install_command_is_the_cards_and_the_readmes():
    """The cards and the remote-code headers tell the reader the install command that works from a clone."""
    card = str(conversion_card("capi", config=CapiConfig.tiny(), model_name="mine"))
    assert INSTALL_SENTENCE in card and "pip install hf_mim" not in card
    header = next(iter(bundle_sources(["hf_mim.models.capi.configuration_capi"]).values())).splitlines()[1]
    assert f"`{INSTALL_COMMAND}`" in header and "pip install hf_mim" not in header
