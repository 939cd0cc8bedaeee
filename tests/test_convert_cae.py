"""hf_mim.models.cae.convert_cae and its command line scripts/convert/convert_cae_to_hf.py: fixture parity with the
original Atten4Vis/CAE code (released v1 encoder file, v1 full training save, v2 full training save and v2
encoder-only file; float32 and float64), the lxtGH / MMPretrain / `module.` / `state_dict` layouts, strict key
accounting, the Auto classes and the model card."""

import argparse
import contextlib
import io
import json
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForImageClassification, AutoModelForPreTraining, pipeline

from hf_mim import CaeConfig, CaeForImageClassification, CaeForPreTraining, CaeImageProcessor, CaeModel
from hf_mim.models.cae import convert_cae

from .helpers import FIXTURES, run_script
from .model_test_mixin import ModelTesterMixin

SCRIPT = "scripts/convert/convert_cae_to_hf.py"  # the command line of convert_cae
HEADS = {"cae_v1": 8, "cae_v1_pretrain": 4, "cae_v2": 4}  # original_config.json: num_heads / decoder_num_heads
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}  # x max|expected| (fixtures README)
DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])


class ForeignArgs:
    """A pickled global other than argparse.Namespace: weights_only loading must refuse it."""


@pytest.fixture(scope="module")
def converter():
    return convert_cae


def fixture_checkpoint(name: str, file: str = "checkpoint.pth") -> dict:
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(FIXTURES / name / file, map_location="cpu", weights_only=True)


def cli_args(name: str, output, file: str = "checkpoint.pth") -> list[str]:
    heads = str(HEADS[name])
    return ["--checkpoint_path", str(FIXTURES / name / file), "--output_dir", str(output),
            "--num_attention_heads", heads, "--decoder_num_attention_heads", heads]  # fmt: skip


@pytest.fixture(scope="module")
def converted(tmp_path_factory, converter):
    """name -> (folder, printed report). cae_v1_pretrain goes through a subprocess; the others through the same
    command line in-process (`main(argv)`), which saves an interpreter start-up each."""
    root = tmp_path_factory.mktemp("cae")
    result = run_script(SCRIPT, *cli_args("cae_v1_pretrain", root / "cae_v1_pretrain"))
    assert result.returncode == 0, result.stderr
    out = {"cae_v1_pretrain": (root / "cae_v1_pretrain", result.stdout)}
    for key, name, file in (("cae_v1", "cae_v1", "checkpoint.pth"), ("cae_v2", "cae_v2", "checkpoint.pth"),
                            ("cae_v2_encoder", "cae_v2", "checkpoint_encoder_only.pth")):  # fmt: skip
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            assert converter.main(cli_args(name, root / key, file)) == 0
        out[key] = (root / key, stdout.getvalue())
    return out


def fixture_io(name: str, dtype: torch.dtype):
    inputs = load_file(FIXTURES / name / "inputs.safetensors")
    expected = load_file(
        FIXTURES / name / ("expected.safetensors" if dtype == torch.float32 else "expected_fp64.safetensors")
    )
    return inputs["pixel_values"].to(dtype), inputs["bool_masked_pos"], expected


def check(actual: torch.Tensor, expected: torch.Tensor, name: str):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
    atol = TOLERANCE[expected.dtype] * expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol, msg=name)


def converted_state(converter, checkpoint, heads=4) -> dict[str, torch.Tensor]:
    return converter.convert_checkpoint(checkpoint, num_heads=heads, decoder_num_heads=heads)[1]


def assert_same_state(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


# --------------------------------------------------------------------------------- folders and reports
def test_converted_folders(converted):
    folder, stdout = converted["cae_v1_pretrain"]
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= {
        p.name for p in folder.iterdir()
    }
    config = CaeConfig.from_pretrained(folder)
    assert config.architectures == ["CaeForPreTraining"] and config.cae_version == 1
    assert (config.image_size, config.patch_size, config.hidden_size, config.num_hidden_layers) == (64, 16, 32, 2)
    assert (config.decoder_hidden_size, config.regressor_num_layers, config.decoder_num_layers) == (32, 2, 2)
    assert (config.vocab_size, config.num_masking_patches, config.layer_norm_eps) == (64, 8, 1e-6)
    assert "saved_architecture: CaeForPreTraining" in stdout and "kept_keys: 116" in stdout
    assert "alignment_encoder.* (36 keys" in stdout and "top-level 'optimizer'" in stdout
    assert "top-level 'args'" in stdout and "ignored_keys: 40" in stdout  # 36 + optimizer, epoch, scaler, args
    assert "twin_check: alignment_encoder.* (36 tensors) equal to encoder.*" in stdout
    assert float(re.search(r"sincos_table_max_deviation: (\S+)", stdout).group(1)) < 1e-6
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 64, "width": 64} and processor["size"] == {"shortest_edge": 73}

    folder, stdout = converted["cae_v1"]
    config = CaeConfig.from_pretrained(folder)
    assert config.architectures == ["CaeModel"] and (config.image_size, config.num_attention_heads) == (80, 8)
    assert "mask_token (1 key: regressor query token" in stdout and "kept_keys: 36" in stdout
    assert "cae_version_source: encoder + mask_token" in stdout

    folder, stdout = converted["cae_v2"]
    config = CaeConfig.from_pretrained(folder)
    assert config.cae_version == 2 and config.architectures == ["CaeForPreTraining"]
    assert (config.decoder_hidden_size, config.target_hidden_size, config.decoder_num_layers) == (16, 24, 0)
    assert "regresser.norm.* (2 keys: CAE v2 regressor norm" in stdout and "twin_check" not in stdout

    folder, stdout = converted["cae_v2_encoder"]
    config = CaeConfig.from_pretrained(folder)
    assert config.cae_version == 2 and config.architectures == ["CaeModel"] and "ignored: none" in stdout
    card = (folder / "README.md").read_text()
    assert "license: other" in card and "import hf_mim" in card and 'pooling="mean"' in card
    assert "model-index" not in card  # not a release


# --------------------------------------------------------------------------------- parity with the original code
@DTYPES
def test_cae_v1_released_encoder_parity(converted, dtype):
    pixel_values, mask, expected = fixture_io("cae_v1", dtype)
    model = AutoModel.from_pretrained(converted["cae_v1"][0]).to(dtype).eval()
    assert type(model) is CaeModel and model.config.pooling == "cls"
    with torch.no_grad():
        out = model(pixel_values)
        check(out.last_hidden_state, expected["last_hidden_state"], "last_hidden_state")
        check(out.pooler_output, expected["linear_probe_feature"], "linear_probe_feature")
        check(model(pixel_values, bool_masked_pos=mask).last_hidden_state, expected["encoder_visible_tokens"], "vis")
        model.config.pooling = "mean"
        check(model(pixel_values).pooler_output, expected["finetune_pooled_feature"], "finetune_pooled_feature")


@DTYPES
def test_cae_v1_pretraining_parity(converted, dtype):
    pixel_values, mask, expected = fixture_io("cae_v1_pretrain", dtype)
    folder = converted["cae_v1_pretrain"][0]
    pretraining = AutoModelForPreTraining.from_pretrained(folder).to(dtype).eval()
    encoder = AutoModel.from_pretrained(folder).to(dtype).eval()
    assert type(pretraining) is CaeForPreTraining and type(encoder) is CaeModel
    with torch.no_grad():
        out = pretraining(pixel_values, bool_masked_pos=mask)
        check(out.logits, expected["logits"], "logits")
        check(out.latent_predictions, expected["latent_predict"], "latent_predict")
        check(out.latent_targets, expected["latent_target"], "latent_target")
        check(encoder(pixel_values, bool_masked_pos=mask).last_hidden_state, expected["encoder_visible_tokens"], "vis")
        check(encoder(pixel_values).last_hidden_state, expected["last_hidden_state"], "last_hidden_state")


@DTYPES
def test_cae_v2_parity(converted, dtype):
    pixel_values, mask, expected = fixture_io("cae_v2", dtype)
    folder = converted["cae_v2"][0]
    pretraining = AutoModelForPreTraining.from_pretrained(folder).to(dtype).eval()
    with torch.no_grad():
        out = pretraining(pixel_values, bool_masked_pos=mask)
        assert out.logits.shape == (2, 17, 24) and out.latent_targets is None
        check(out.logits, expected["logits"], "logits")
        check(out.latent_predictions, expected["latent_predict"], "latent_predict")
        for source in (folder, converted["cae_v2_encoder"][0]):  # full save and encoder-only file
            encoder = AutoModel.from_pretrained(source).to(dtype).eval()
            check(encoder(pixel_values, bool_masked_pos=mask).last_hidden_state, expected["encoder_visible_tokens"],
                  f"encoder_visible_tokens ({source.name})")  # fmt: skip
            check(encoder(pixel_values).last_hidden_state, expected["last_hidden_state"], f"lhs ({source.name})")


# --------------------------------------------------------------------------------- other layouts
_LXT = (("regresser.regressor_blocks.", "pretext_neck.regressor_blocks."),
        ("decoder.decoder_blocks.", "pretext_neck.decoder_blocks."), ("regresser.norm.", "pretext_neck.norm."),
        ("decoder.norm.", "pretext_neck.norm2."), ("decoder.head.", "pretext_neck.head."),
        ("alignment_encoder.", "teacher."))  # fmt: skip
_MMP_BLOCK = (("norm1.", "ln1."), ("norm2.", "ln2."), ("mlp.fc1.", "ffn.layers.0.0."), ("mlp.fc2.", "ffn.layers.1."))
_MMP_REGRESSOR = (("norm1_q.", "norm1_q_cross."), ("norm1_k.", "norm1_k_cross."), ("norm1_v.", "norm1_v_cross."),
                  ("mlp_cross.fc1.", "ffn.layers.0.0."), ("mlp_cross.fc2.", "ffn.layers.1."))  # fmt: skip
_MMP_ENCODER = {"cls_token": "cls_token", "pos_embed": "pos_embed", "norm.weight": "ln1.weight",
                "norm.bias": "ln1.bias", "patch_embed.proj.weight": "patch_embed.projection.weight",
                "patch_embed.proj.bias": "patch_embed.projection.bias"}  # fmt: skip
_MMP_TOP = {"regresser.norm.": "neck.norm_regressor.", "decoder.norm.": "neck.norm_decoder.",
            "decoder.head.": "neck.head.", "mask_token": "neck.mask_token"}  # fmt: skip


def _replace_prefix(text: str, pairs) -> str:
    return next((new + text[len(old) :] for old, new in pairs if text.startswith(old)), text)


def to_lxt(model: dict) -> dict:
    """An A4V v1 state dict in lxtGH/CAE's layout: `pretext_neck.*`, `teacher.*`, no stored regressor table."""
    return {_replace_prefix(k, _LXT): v for k, v in model.items() if k != "rd_pos_embed"}


def to_mmpretrain(model: dict) -> dict:
    """An A4V v1 state dict in MMPretrain's layout (its `backbone.` / `neck.` keys), plus a DALL-E target generator."""
    out = {
        "target_generator.blocks.input.w": torch.zeros(8, 3, 7, 7),
        "target_generator.blocks.input.b": torch.zeros(8),
    }
    for key, value in model.items():
        if key == "rd_pos_embed":  # MMPretrain's neck uses the backbone's table
            continue
        if match := re.match(r"^(encoder|alignment_encoder)\.(.+)$", key):
            prefix, rest = "backbone." if match.group(1) == "encoder" else "teacher.", match.group(2)
            if block := re.match(r"^blocks\.(\d+)\.(.+)$", rest):
                rest = f"layers.{block.group(1)}.{_replace_prefix(block.group(2), _MMP_BLOCK)}"
            key = prefix + _MMP_ENCODER.get(rest, rest)
        elif match := re.match(r"^regresser\.regressor_blocks\.(\d+)\.(.+)$", key):
            key = f"neck.regressors.{match.group(1)}.{_replace_prefix(match.group(2), _MMP_REGRESSOR)}"
        elif match := re.match(r"^decoder\.decoder_blocks\.(\d+)\.(.+)$", key):
            key = f"neck.decoders.{match.group(1)}.{_replace_prefix(match.group(2), _MMP_BLOCK)}"
        else:
            key = _replace_prefix(key, _MMP_TOP.items())
        out[key] = value
    return out


def test_lxt_and_mmpretrain_layouts_give_identical_weights(converter):
    checkpoint = fixture_checkpoint("cae_v1_pretrain")
    reference = converted_state(converter, checkpoint)
    lxt = {"model": to_lxt(checkpoint["model"]), "epoch": 3}
    assert any(k.startswith("pretext_neck.") for k in lxt["model"]) and "rd_pos_embed" not in lxt["model"]
    config, state, is_full, report = converter.convert_checkpoint(lxt, num_heads=4, decoder_num_heads=4)
    assert is_full and config.cae_version == 1 and "lxtGH" in report["layout"]
    assert "rebuilt" in report["regressor_position_table"] and "teacher.* (36 keys" in report["ignored"]
    assert_same_state(state, reference)  # the rebuilt float32 table is bit-identical to the stored one

    mmp = {"meta": {"epoch": 300}, "state_dict": to_mmpretrain(checkpoint["model"])}
    config, state, is_full, report = converter.convert_checkpoint(mmp, num_heads=4, decoder_num_heads=4)
    assert is_full and "MMPretrain" in report["layout"] and "target_generator.* (2 keys" in report["ignored"]
    assert "teacher.* (36 tensors) equal to backbone.*" in report["twin_check"]
    assert_same_state(state, reference)
    # lxtGH's projection when the regressor is narrower than the encoder
    assert converter.rename_key("encoder_to_decoder_norm.bias", "lxt") == "encoder_to_regressor_norm.bias"
    assert converter.rename_key("encoder_to_decoder.weight", "lxt") == "encoder_to_regressor.weight"


def test_module_prefix_and_container_keys(converter):
    checkpoint = fixture_checkpoint("cae_v2")
    reference = converted_state(converter, checkpoint)
    wrapped = {"state_dict": {f"module.{k}": v for k, v in checkpoint["model"].items()}}
    _, state, _, report = converter.convert_checkpoint(wrapped, num_heads=4, decoder_num_heads=4)
    assert "checkpoint['state_dict'], `module.` prefix stripped" in report["layout"]
    assert_same_state(state, reference)
    assert_same_state(converted_state(converter, {"module": checkpoint["model"]}), reference)
    assert_same_state(converted_state(converter, dict(checkpoint["model"])), reference)  # a raw state dict
    # the encoder-only v2 file holds the same encoder
    encoder = converted_state(converter, fixture_checkpoint("cae_v2", "checkpoint_encoder_only.pth"))
    assert_same_state(
        {f"cae.{k}": v for k, v in encoder.items()}, {k: v for k, v in reference.items() if k.startswith("cae.")}
    )


def test_released_v1_file_reads_the_regressor_width_off_mask_token(converter):
    released = fixture_checkpoint("cae_v1")
    released["model"]["mask_token"] = torch.zeros(1, 1, 32)
    config, state, is_full, report = converter.convert_checkpoint(released, num_heads=8)
    assert not is_full and "mask_token" not in state and config.cae_version == 1
    assert (config.decoder_hidden_size, config.decoder_num_attention_heads, config.num_masking_patches) == (32, 8, 12)
    assert "encoder's" in report["decoder_num_attention_heads"]  # 12 does not divide 32: the encoder's 8


def test_original_sincos_table_and_fused_qkv_rows(converter):
    model = fixture_checkpoint("cae_v1_pretrain")["model"]
    assert torch.equal(converter.original_sincos_table(32, 4), model["rd_pos_embed"])
    state = converted_state(converter, {"model": model})
    qkv = model["encoder.blocks.1.attn.qkv.weight"]
    for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(state[f"cae.layers.1.attention.{name}.weight"], qkv[32 * index : 32 * (index + 1)])
    assert torch.equal(state["cae.layers.1.attention.q_proj.bias"], model["encoder.blocks.1.attn.q_bias"])
    assert torch.equal(state["regressor.0.attention.cross_attention.v_proj.bias"],
                       model["regresser.regressor_blocks.0.cross_attn.v_bias"])  # fmt: skip


# --------------------------------------------------------------------------------- errors
def test_missing_unexpected_and_foreign_keys(converter):
    checkpoint = fixture_checkpoint("cae_v1_pretrain")
    del checkpoint["model"]["encoder.blocks.1.mlp.fc2.bias"]
    checkpoint["model"]["regresser.regressor_blocks.0.cross_attn.k_bias"] = torch.zeros(32)
    with pytest.raises(converter.CheckpointMismatchError) as error:
        converter.convert_checkpoint(checkpoint, "bad.pth", 4, 4)
    message = str(error.value)
    assert "bad.pth" in message and "cae.layers.1.mlp.fc2.bias" in message
    assert "regresser.regressor_blocks.0.cross_attn.k_bias" in message

    checkpoint = fixture_checkpoint("cae_v2")
    checkpoint["lr_scheduler"] = {}
    with pytest.raises(converter.CheckpointMismatchError, match="lr_scheduler"):
        converter.convert_checkpoint(checkpoint, num_heads=4, decoder_num_heads=4)
    del checkpoint["lr_scheduler"]
    checkpoint["model"]["encoder.blocks.0.mlp.fc1.weight"] = torch.zeros(100, 32)
    with pytest.raises(converter.CheckpointMismatchError, match="unexpected shapes"):
        converter.convert_checkpoint(checkpoint, num_heads=4, decoder_num_heads=4)
    with pytest.raises(converter.CheckpointMismatchError, match="Not a CAE checkpoint"):
        converter.convert_checkpoint({"model": {"blocks.0.attn.qkv.weight": torch.zeros(6, 2)}})
    with pytest.raises(ValueError, match="says CAE v2"):  # a v1 save named as a v2 model
        converter.convert_checkpoint(fixture_checkpoint("cae_v1_pretrain"), num_heads=4, names=("caev2_base",))
    with pytest.raises(ValueError, match="width 32 is no CAE recipe's width"):  # no silent default head count
        converter.convert_checkpoint(fixture_checkpoint("cae_v1_pretrain"))


def test_unreadable_and_refused_files(tmp_path, converter, capsys):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((FIXTURES / "cae_v1" / "checkpoint.pth").read_bytes()[:4000])
    assert converter.main(["--checkpoint_path", str(truncated), "--output_dir", str(tmp_path / "o")]) == 2
    assert "Could not read" in capsys.readouterr().err

    foreign = tmp_path / "foreign.pth"
    torch.save({"model": fixture_checkpoint("cae_v1")["model"], "args": ForeignArgs()}, foreign)
    assert converter.main(["--checkpoint_path", str(foreign), "--output_dir", str(tmp_path / "o"),
                           "--num_attention_heads", "8"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "Could not read" in err and "ForeignArgs" in err and not (tmp_path / "o").exists()
    # argparse.Namespace is allowed only while loading (torch may register its own globals lazily meanwhile)
    assert argparse.Namespace not in torch.serialization.get_safe_globals()


# --------------------------------------------------------------------------------- Auto classes and pipeline
def test_auto_classes_from_converted_folders(converted):
    folder = converted["cae_v1_pretrain"][0]
    encoder, info, report = ModelTesterMixin.load_quietly(AutoModel, folder)
    assert type(encoder) is CaeModel and not info["missing_keys"] and not info["unexpected_keys"], info
    assert "UNEXPECTED" not in report and "MISSING" not in report, report
    reference = encoder.state_dict()
    for source in (folder, converted["cae_v1"][0]):
        for kind in ("finetune", "linear", "attentive"):
            model, info, report = ModelTesterMixin.load_quietly(
                AutoModelForImageClassification, source, num_labels=3, classifier_type=kind
            )
            assert type(model) is CaeForImageClassification and model.config.classifier_type == kind
            assert not info["unexpected_keys"] and "UNEXPECTED" not in report, (kind, info)
            assert info["missing_keys"] and all(k.startswith(("classifier.", "pooler.")) for k in info["missing_keys"])
    released = AutoModel.from_pretrained(converted["cae_v1"][0]).state_dict()
    for key, value in model.cae.state_dict().items():  # the last one: attentive head on the released v1 encoder
        assert torch.equal(value, released[key]), key
    assert all(torch.equal(v, reference[k]) for k, v in encoder.state_dict().items())


def test_pipeline_pool_gives_the_linear_probe_feature(converted):
    import numpy as np
    import PIL.Image

    folder = converted["cae_v1"][0]
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    pooled = torch.tensor(pipeline("image-feature-extraction", model=str(folder))(image, pool=True))
    pixels = CaeImageProcessor.from_pretrained(folder)(images=image, return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 80, 80)
    with torch.no_grad():
        reference = CaeModel.from_pretrained(folder).eval()(pixels).pooler_output
    torch.testing.assert_close(pooled.reshape(1, -1), reference, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------- releases and model card
def test_releases_heads_and_model_card(converter):
    assert converter.release_of("cae_base_1600ep") == "cae_base_1600ep"
    assert converter.release_of("hf-user/cae-large-1600ep") == "cae_large_1600ep"
    assert converter.release_of(None, "cae_dvae_base_800ep") == "cae_base_800ep"
    assert converter.release_of("CAEv2-Large") == converter.release_of("cae_v2_large") == "caev2_large"
    assert converter.release_of("cae_base_400ep") is None and converter.release_of("caev2_tiny") is None
    assert (converter.default_heads(192), converter.default_heads(768), converter.default_heads(1024)) == (12, 12, 16)
    assert converter.matches_release(CaeConfig.base(), "cae_base_300ep")
    assert converter.matches_release(CaeConfig.v2_large(), "caev2_large")
    assert not converter.matches_release(CaeConfig.large(), "caev2_large")

    card = converter.model_card("cae_base_1600ep", CaeConfig.base(), "cae_base_1600ep", False)
    front, body = card.data.to_dict(), card.text  # a huggingface_hub.ModelCard
    assert front["license"] == "other" and front["datasets"] == ["imagenet-1k"]
    assert front["pipeline_tag"] == "image-feature-extraction"
    values = [m["value"] for r in front["model-index"][0]["results"] for m in r["metrics"]]
    assert values == [70.3, 77.2, 83.9, 50.3]
    assert "no LICENSE file" in body and "pooler_output" in body and 'pooling="mean"' in body
    card = converter.model_card("caev2_large", CaeConfig.v2_large(), "caev2_large", True)
    front, body = card.data.to_dict(), card.text
    assert [m["value"] for r in front["model-index"][0]["results"] for m in r["metrics"]] == [81.7, 86.7, 55.9]
    assert "CAE v2" in body and "AutoModelForPreTraining" in body
    front = converter.model_card("mine", CaeConfig.tiny(), None, False).data.to_dict()
    assert "model-index" not in front and "datasets" not in front


def test_named_release_with_another_architecture(tmp_path, converter):
    report = converter.convert(FIXTURES / "cae_v1" / "checkpoint.pth", tmp_path / "o", "cae_base_1600ep", None, 8, 8)
    assert "cae_base_1600ep named, but the weights are not its architecture" in report["release"]
    card = (tmp_path / "o" / "README.md").read_text()
    assert "model-index" not in card and "# cae_base_1600ep" in card and "Atten4Vis/CAE layout" in card
