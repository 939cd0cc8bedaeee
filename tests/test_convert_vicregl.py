"""hf_mim.models.vicregl.convert_vicregl and its command line scripts/convert/convert_vicregl_to_hf.py: fixture parity
(original VICRegL ConvNeXt code, fp32 and fp64), full checkpoints with projectors, torchvision-layout ResNet-50
backbones, layer scale, and strict key accounting."""

import json
import sys
import types

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForPreTraining, pipeline

from hf_mim import VicreglConfig, VicreglForPreTraining, VicreglImageProcessor, VicreglModel
from hf_mim.models.vicregl import VicreglProjector, convert_vicregl

from .helpers import FIXTURES, fixture_tolerance, run_script
from .model_test_mixin import ModelTesterMixin

VICREGL_FIXTURE = FIXTURES / "vicregl_convnext"
SCRIPT = "scripts/convert/convert_vicregl_to_hf.py"  # the command line of convert_vicregl
SIZES = ("64x64", "96x64")


@pytest.fixture(scope="module")
def converter():
    return convert_vicregl


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The fixture's backbone file through the command line."""
    output = tmp_path_factory.mktemp("vicregl_convnext")
    result = run_script(
        SCRIPT, "--checkpoint_path", str(VICREGL_FIXTURE / "checkpoint.pth"), "--output_dir", str(output)
    )
    assert result.returncode == 0, result.stderr
    return output, result.stdout


def fixture_backbone() -> dict[str, torch.Tensor]:
    return torch.load(VICREGL_FIXTURE / "checkpoint.pth", map_location="cpu", weights_only=True)


def check(actual, expected, name):
    torch.testing.assert_close(actual, expected, rtol=0, atol=fixture_tolerance(expected), msg=name)


def full_checkpoint(drop=()):
    """A `_fullckpt.pth` in the released layout: DDP `module.` keys (fixture backbone, tiny projectors, online
    probe), optimizer state and epoch. Returns (checkpoint, the model the projectors come from)."""
    heads = VicreglForPreTraining(VicreglConfig.tiny())
    model = {f"module.backbone.{k}": v for k, v in fixture_backbone().items()}
    for name in ("projector", "maps_projector"):
        if name not in drop:
            model.update({f"module.{name}.{k}": v for k, v in getattr(heads, name).state_dict().items()})
    model["module.classifier.weight"] = torch.randn(1000, 128) * 0.01
    model["module.classifier.bias"] = torch.zeros(1000)
    optimizer = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(16, 3, 4, 4)}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "weight_decay": 0.05, "params": [0]}],
    }
    return {"epoch": 7, "model": model, "optimizer": optimizer}, heads


# --------------------------------------------------------------------------------- backbone file (fixture)
def test_converted_backbone_folder(converted):
    output, stdout = converted
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= {
        p.name for p in output.iterdir()
    }
    config = VicreglConfig.from_pretrained(output)
    assert config.backbone_type == "convnext" and config.architectures == ["VicreglModel"]
    assert (config.depths, config.hidden_sizes, config.patch_size) == ([1, 1, 1, 1], [16, 32, 64, 128], 4)
    assert config.layer_norm_eps == 1e-6 and config.layer_scale_init_value == 0.0
    assert "kept_keys: 50" in stdout and "ignored_keys: 0" in stdout
    assert "alpha_source: not stored in a backbone file" in stdout and "alpha: 0.75" in stdout
    assert "saved_architecture: VicreglModel" in stdout
    difference = float(stdout.split("reference_max_abs_diff: ")[1].split()[0])
    assert difference < 1e-5
    processor = json.loads((output / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": 224, "width": 224} and processor["size"] == {"shortest_edge": 256}
    card = (output / "README.md").read_text()
    assert "cc-by-nc-4.0" in card and "image-feature-extraction" in card and "import hf_mim" in card
    assert "model-index" not in card  # not one of the releases


@pytest.mark.parametrize("size", SIZES)
def test_fixture_parity_float32(converted, size):
    inputs, expected = (
        load_file(VICREGL_FIXTURE / "inputs.safetensors"),
        load_file(VICREGL_FIXTURE / "expected.safetensors"),
    )
    model = AutoModel.from_pretrained(converted[0]).eval()
    assert type(model) is VicreglModel
    with torch.no_grad():
        out = model(inputs[f"pixel_values_{size}"])
    check(out.feature_map.flatten(1, 2), expected[f"maps_{size}"], f"maps_{size}")
    check(out.pooler_output, expected[f"representation_{size}"], f"representation_{size}")


def test_fixture_parity_float64(converted):
    inputs = load_file(VICREGL_FIXTURE / "inputs.safetensors")
    expected = load_file(VICREGL_FIXTURE / "expected_fp64.safetensors")
    model = AutoModel.from_pretrained(converted[0]).double().eval()
    for size in SIZES:
        with torch.no_grad():
            out = model(inputs[f"pixel_values_{size}"].double())
        for name, actual in (
            (f"maps_{size}", out.feature_map.flatten(1, 2)),
            (f"representation_{size}", out.pooler_output),
        ):
            reference = expected[name]
            assert actual.dtype == reference.dtype == torch.float64
            torch.testing.assert_close(actual, reference, rtol=0, atol=1e-9 * reference.abs().max().item(), msg=name)


def test_reference_forward_reproduces_original(converter):
    """The converter's functional re-implementation (its self-check) matches the original code's outputs."""
    inputs, expected = (
        load_file(VICREGL_FIXTURE / "inputs.safetensors"),
        load_file(VICREGL_FIXTURE / "expected.safetensors"),
    )
    for size in SIZES:
        maps, representation = converter.reference_forward(
            "convnext", fixture_backbone(), inputs[f"pixel_values_{size}"]
        )
        check(maps, expected[f"maps_{size}"], f"maps_{size}")
        check(representation, expected[f"representation_{size}"], f"representation_{size}")


def test_pipeline_pool_gives_the_representation(converted):
    import numpy as np
    import PIL.Image

    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    extractor = pipeline("image-feature-extraction", model=str(converted[0]))
    pooled = torch.tensor(extractor(image, pool=True))
    model = VicreglModel.from_pretrained(converted[0]).eval()
    pixels = VicreglImageProcessor.from_pretrained(converted[0])(images=image, return_tensors="pt").pixel_values
    assert pixels.shape == (1, 3, 224, 224)
    with torch.no_grad():
        reference = model(pixels).pooler_output
    torch.testing.assert_close(pooled.reshape(1, -1), reference, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------- full checkpoints
def test_full_checkpoint(tmp_path, converter, capsys):
    checkpoint, heads = full_checkpoint()
    path = tmp_path / "vicregl_tiny_alpha0.9_fullckpt.pth"
    torch.save(checkpoint, path)
    output = tmp_path / "out"
    assert converter.main(["--checkpoint_path", str(path), "--output_dir", str(output)]) == 0
    stdout = capsys.readouterr().out
    assert "layout: full checkpoint (epoch 7)" in stdout and "saved_architecture: VicreglForPreTraining" in stdout
    assert "alpha: 0.9" in stdout and "model_name: vicregl_tiny_alpha0.9" in stdout
    assert "kept_keys: 68" in stdout and "ignored_keys: 4" in stdout  # classifier.{weight,bias}, epoch, optimizer
    assert "classifier.weight, classifier.bias (online linear probe" in stdout
    config = VicreglConfig.from_pretrained(output)
    assert (config.alpha, config.projector, config.maps_projector) == (0.9, "128-128-128", "64-64-64")

    pretraining, info, _ = ModelTesterMixin.load_quietly(AutoModelForPreTraining, output)
    assert type(pretraining) is VicreglForPreTraining
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    for name in ("projector", "maps_projector"):
        expected = getattr(heads, name).state_dict()
        for key, value in getattr(pretraining, name).state_dict().items():
            assert torch.equal(value, expected[key]), f"{name}.{key}"

    backbone, info, report = ModelTesterMixin.load_quietly(AutoModel, output)
    assert type(backbone) is VicreglModel
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert "UNEXPECTED" not in report and "MISSING" not in report, report
    inputs, expected = (
        load_file(VICREGL_FIXTURE / "inputs.safetensors"),
        load_file(VICREGL_FIXTURE / "expected.safetensors"),
    )
    with torch.no_grad():
        check(backbone.eval()(inputs["pixel_values_64x64"]).pooler_output, expected["representation_64x64"], "rep")


def test_lars_optimizer_state_loads(tmp_path, converter, monkeypatch, capsys):
    """The ResNet-50 runs used LARS, whose param_groups hold `optimizers.exclude_bias_and_norm`: a plain
    weights_only load refuses that global; the converter resolves it to a stand-in (the optimizer is ignored)."""
    optimizers = types.ModuleType("optimizers")

    def exclude_bias_and_norm(p):
        return p.ndim == 1

    exclude_bias_and_norm.__module__, exclude_bias_and_norm.__qualname__ = "optimizers", "exclude_bias_and_norm"
    optimizers.exclude_bias_and_norm = exclude_bias_and_norm
    monkeypatch.setitem(sys.modules, "optimizers", optimizers)
    checkpoint, _ = full_checkpoint()
    group = {"lr": 0.3, "weight_decay": 1e-6, "momentum": 0.9, "eta": 1e-3, "params": [0]}
    group.update(weight_decay_filter=exclude_bias_and_norm, lars_adaptation_filter=exclude_bias_and_norm)
    checkpoint["optimizer"] = {"state": {0: {"mu": torch.zeros(3)}}, "param_groups": [group]}
    path = tmp_path / "lars_fullckpt.pth"
    torch.save(checkpoint, path)
    monkeypatch.delitem(sys.modules, "optimizers")
    with pytest.raises(Exception, match="exclude_bias_and_norm"):
        torch.load(path, weights_only=True)
    allowed_before = list(torch.serialization.get_safe_globals())
    assert converter.main(["--checkpoint_path", str(path), "--output_dir", str(tmp_path / "out")]) == 0
    assert "top-level 'optimizer'" in capsys.readouterr().out
    assert (
        list(torch.serialization.get_safe_globals()) == allowed_before
    )  # the stand-in was allowed only while loading


def test_alpha_inference(converter):
    checkpoint, _ = full_checkpoint()
    config, _, is_full, report = converter.convert_checkpoint(checkpoint)
    assert is_full and config.alpha == 0.75 and "config default" in report["alpha_source"]

    only_global, _ = full_checkpoint(drop=("maps_projector",))
    config, state, _, report = converter.convert_checkpoint(only_global, names=("tiny",))
    assert config.alpha == 1.0 and "projectors in the checkpoint" in report["alpha_source"]
    assert not any(k.startswith("maps_projector.") for k in state)
    only_local, _ = full_checkpoint(drop=("projector",))
    config, state, _, _ = converter.convert_checkpoint(only_local)
    assert config.alpha == 0.0 and config.maps_projector == "64-64-64"
    assert not any(k.startswith("projector.") for k in state)
    with pytest.raises(ValueError, match="contradicts"):
        converter.convert_checkpoint(only_local, names=("convnext_small_alpha0.9",))

    # backbone files: the model name first, then the file name (hub-entry spelling accepted)
    config, _, is_full, report = converter.convert_checkpoint(fixture_backbone(), names=("vicregl-tiny-alpha0p9", "x"))
    assert not is_full and config.alpha == 0.9 and "vicregl-tiny-alpha0p9" in report["alpha_source"]
    config, _, _, _ = converter.convert_checkpoint(fixture_backbone(), names=("tiny", "convnext_small_alpha0.75"))
    assert config.alpha == 0.75


def test_release_identification_and_model_card(converter):
    assert converter.release_of("vicregl-convnext-small-alpha0p75") == "convnext_small_alpha0.75"
    assert converter.release_of("convnext_small_alpha0.9") == "convnext_small_alpha0.9"
    assert converter.release_of(None, "resnet50_alpha0.9") == "resnet50_alpha0.9"
    assert converter.release_of("convnext_tiny_alpha0.9") is None
    assert converter.matches_release(VicreglConfig.convnext_base(), "convnext_base_alpha0.9")
    assert not converter.matches_release(VicreglConfig.tiny(), "convnext_small_alpha0.9")
    config = VicreglConfig.convnext_xlarge(alpha=0.75)
    card = converter.model_card("convnext_xlarge_alpha0.75", config, "convnext_xlarge_alpha0.75", True)
    front, body = card.data.to_dict(), card.text  # a huggingface_hub.ModelCard
    assert front["license"] == "cc-by-nc-4.0" and front["pipeline_tag"] == "image-feature-extraction"
    metrics = [r["metrics"][0]["value"] for r in front["model-index"][0]["results"]]
    assert metrics == [79.4, 78.7]
    assert "ImageNet-22k" in body and "AutoModelForPreTraining" in body and "pooler_output" in body


# --------------------------------------------------------------------------------- ResNet-50 (torchvision layout)
def test_resnet50_backbone_matches_torchvision(tmp_path, converter):
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet50().eval()
    generator = torch.Generator().manual_seed(0)
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    for key, value in state.items():  # randomised BN statistics and affine parameters
        if key.endswith("running_mean"):
            state[key] = 0.1 * torch.randn(value.shape, generator=generator)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=generator)
        elif value.ndim == 1 and key.endswith("weight"):
            state[key] = 1 + 0.1 * torch.randn(value.shape, generator=generator)
        elif value.ndim == 1 and key.endswith("bias"):
            state[key] = 0.1 * torch.randn(value.shape, generator=generator)
    assert len(state) == 318
    reference.load_state_dict(state, strict=False)
    path = tmp_path / "resnet50_alpha0.75.pth"
    torch.save(state, path)
    report = converter.convert(path, tmp_path / "out")
    assert report["kept_keys"] == 318 and report["release"] == "resnet50_alpha0.75"
    assert report["alpha"] == 0.75 and "resnet50_alpha0.75" in report["alpha_source"]
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    config = model.config
    assert (config.backbone_type, config.depths, config.hidden_sizes, config.embedding_size) == (
        "resnet",
        [3, 4, 6, 3],
        [256, 512, 1024, 2048],
        64,
    )
    pixel_values = torch.randn(2, 3, 96, 64, generator=generator)
    with torch.no_grad():
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(pixel_values))))
        layer4 = reference.layer4(reference.layer3(reference.layer2(reference.layer1(x))))
        pooled = reference.avgpool(layer4).flatten(1)
        out = model(pixel_values)
    scale = layer4.abs().max().item()
    torch.testing.assert_close(out.last_hidden_state, layer4, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(out.feature_map, layer4.permute(0, 2, 3, 1), rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(out.pooler_output, pooled, rtol=0, atol=1e-5 * pooled.abs().max().item())
    card = (tmp_path / "out" / "README.md").read_text()
    assert "model-index" in card and "71.2" not in card and "70.4" in card and "55.9" in card

    # the same backbone in a full checkpoint with a BatchNorm1d global projector only (alpha 1)
    projector = VicreglProjector(2048, "64-64-64", "batch_norm")
    model_state = {f"module.backbone.{k}": v for k, v in state.items()}
    model_state.update({f"module.projector.{k}": v for k, v in projector.state_dict().items()})
    model_state.update(
        {"module.classifier.weight": torch.zeros(1000, 2048), "module.classifier.bias": torch.zeros(1000)}
    )
    config, converted_state, is_full, report = converter.convert_checkpoint({"epoch": 1, "model": model_state})
    assert is_full and config.alpha == 1.0 and config.projector == "64-64-64"
    assert report["kept_keys"] == 318 + 15 and report["ignored_keys"] == 3
    assert torch.equal(converted_state["projector.4.running_var"], projector[4].running_var)
    assert "projector.1.num_batches_tracked" in converted_state


# --------------------------------------------------------------------------------- layer scale, errors
def test_layer_scale_gamma_is_loaded(converter):
    backbone = fixture_backbone()
    for stage, width in enumerate((16, 32, 64, 128)):
        backbone[f"stages.{stage}.0.gamma"] = torch.rand(width) + 0.5
    config, state, _, report = converter.convert_checkpoint(backbone)
    assert config.layer_scale_init_value > 0 and "layer scale" in report["architecture"]
    model = VicreglModel(config).eval()
    model.load_state_dict(state, strict=True)
    for stage in range(4):
        assert torch.equal(
            model.encoder.stages[stage].layers[0].layer_scale_parameter, backbone[f"stages.{stage}.0.gamma"]
        )
    pixel_values = load_file(VICREGL_FIXTURE / "inputs.safetensors")["pixel_values_96x64"]
    maps, representation = converter.reference_forward("convnext", backbone, pixel_values)
    with torch.no_grad():
        out = model(pixel_values)
    check(out.feature_map.flatten(1, 2), maps, "maps with layer scale")
    check(out.pooler_output, representation, "representation with layer scale")
    del backbone["stages.2.0.gamma"]  # layer scale in some blocks only
    with pytest.raises(converter.CheckpointMismatchError, match="encoder.stages.2.layers.0.layer_scale_parameter"):
        converter.convert_checkpoint(backbone)


def test_missing_and_unexpected_keys_are_listed(converter):
    backbone = fixture_backbone()
    del backbone["stages.2.0.pwconv1.bias"]
    backbone["stages.0.0.extra.weight"] = torch.zeros(3)
    with pytest.raises(converter.CheckpointMismatchError) as error:
        converter.convert_checkpoint(backbone, "bad.pth")
    message = str(error.value)
    assert "bad.pth" in message
    assert "encoder.stages.2.layers.0.pwconv1.bias" in message and "stages.0.0.extra.weight" in message

    checkpoint, _ = full_checkpoint()
    del checkpoint["model"]["module.projector.4.bias"]
    checkpoint["model"]["module.predictor.weight"] = torch.zeros(2)
    checkpoint["scaler"] = {"scale": 1.0}
    with pytest.raises(converter.CheckpointMismatchError, match="scaler"):
        converter.convert_checkpoint(checkpoint)
    del checkpoint["scaler"]
    with pytest.raises(converter.CheckpointMismatchError) as error:
        converter.convert_checkpoint(checkpoint)
    assert "projector.4.bias" in str(error.value) and "predictor.weight" in str(error.value)

    backbone = fixture_backbone()
    backbone["stages.1.0.pwconv1.weight"] = torch.zeros(10, 32)
    with pytest.raises(converter.CheckpointMismatchError, match="unexpected shapes"):
        converter.convert_checkpoint(backbone)


def test_unreadable_and_foreign_checkpoints(tmp_path, converter, capsys):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((VICREGL_FIXTURE / "checkpoint.pth").read_bytes()[:4000])
    assert converter.main(["--checkpoint_path", str(truncated), "--output_dir", str(tmp_path / "o")]) == 2
    assert "Could not read" in capsys.readouterr().err

    vit = {"patch_embed.proj.weight": torch.zeros(8, 3, 16, 16), "blocks.0.attn.qkv.weight": torch.zeros(24, 8)}
    with pytest.raises(converter.CheckpointMismatchError, match="Neither a VICRegL ResNet backbone"):
        converter.convert_checkpoint(vit)
    with pytest.raises(converter.CheckpointMismatchError, match="Neither a VICRegL backbone file"):
        converter.convert_checkpoint({"state_dict": fixture_backbone(), "epoch": 3})
    with pytest.raises(converter.CheckpointMismatchError, match="no `backbone"):
        converter.convert_checkpoint({"model": fixture_backbone(), "epoch": 3})
    with pytest.raises(converter.CheckpointMismatchError, match="got list"):
        converter.convert_checkpoint([torch.zeros(1)])
    basic = {"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3)}
    with pytest.raises(converter.CheckpointMismatchError, match="basic blocks"):
        converter.convert_checkpoint(basic)
    path = tmp_path / "foreign.pth"
    torch.save(vit, path)
    assert converter.main(["--checkpoint_path", str(path), "--output_dir", str(tmp_path / "o")]) == 2
    assert "Neither a VICRegL" in capsys.readouterr().err
