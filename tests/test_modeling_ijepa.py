import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForPreTraining

from hf_mim import IJepaConfig, IJepaForImageClassification, IJepaForPreTraining, IJepaImageProcessor, IJepaModel
from hf_mim.layers import sincos_2d_position_embedding
from hf_mim.masking import from_mask_major
from hf_mim.models.ijepa import convert_ijepa

from .helpers import FIXTURES, fixture_tolerance, run_script
from .image_processor_test_mixin import ImageProcessorTesterMixin
from .model_test_mixin import ModelTesterMixin, initialise_from_nan

IJEPA_FIXTURE = FIXTURES / "ijepa"


def tiny(**overrides):
    return IJepaConfig.tiny(**overrides)


class TestIJepaModelCommon(ModelTesterMixin):
    base_model_class = IJepaModel
    classification_class = IJepaForImageClassification
    pretraining_class = IJepaForPreTraining
    pretraining_batch_fields = ("predictions", "targets", "context_tokens", "pooled_features")

    def get_config(self, **overrides):
        return tiny(**overrides)

    def test_position_interpolation_to_other_resolutions(self):
        """Any multiple of the patch size works (the original crashes off its native grid)."""
        model = self.build(IJepaModel)
        with torch.no_grad():
            native = model(self.pixel_values((56, 56)))
            for size in [(84, 84), (70, 42), (28, 56)]:
                out = model(self.pixel_values(size))
                assert out.feature_map.shape == (self.batch_size, size[0] // 14, size[1] // 14, 64)
                assert torch.isfinite(out.last_hidden_state).all()
        assert native.last_hidden_state.shape[1] == 16


class TestIJepaImageProcessor(ImageProcessorTesterMixin):
    processor_class = IJepaImageProcessor


class TestIJepaClassificationHeads:
    def test_mean_last4_uses_the_last_four_blocks(self):
        config = tiny(num_hidden_layers=5, num_labels=3, classifier_pooling="mean_last4")
        model = IJepaForImageClassification(config).eval()
        x = torch.randn(2, 3, 56, 56)
        with torch.no_grad():
            out = model(x)
            hidden = model.ijepa(x, output_hidden_states=True)
        assert model.classifier.in_features == 4 * 64 and out.logits.shape == (2, 3)
        blocks = [*hidden.hidden_states[-4:-1], hidden.last_hidden_state]
        features = torch.cat([torch.nn.functional.layer_norm(b.mean(1), (64,)) for b in blocks], -1)
        torch.testing.assert_close(out.logits, model.classifier(features))
        loss = model.train()(x, labels=torch.tensor([0, 2])).loss
        loss.backward()
        assert model.ijepa.layers[1].mlp.fc1.weight.grad.abs().sum() > 0  # an early block of the four is trained

    def test_mean_head_matches_transformers_definition(self):
        model = IJepaForImageClassification(tiny(num_labels=3)).eval()
        x = torch.randn(2, 3, 56, 56)
        with torch.no_grad():
            expected = model.classifier(model.ijepa(x).last_hidden_state.mean(dim=1))
            torch.testing.assert_close(model(x).logits, expected)

    def test_mean_last4_needs_four_layers(self):
        with pytest.raises(ValueError, match="4 encoder layers"):
            IJepaForImageClassification(tiny(num_labels=3, classifier_pooling="mean_last4"))


# --------------------------------------------------------------------------------- transformers interchange
def transformers_tiny_config():
    return transformers.IJepaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, image_size=56,
        patch_size=14, layer_norm_eps=1e-6, qkv_bias=True,
    )  # fmt: skip


def test_weights_interchange_with_transformers_ijepa(tmp_path):
    torch.manual_seed(0)
    theirs = transformers.IJepaModel(transformers_tiny_config()).eval()
    theirs.save_pretrained(tmp_path / "theirs")  # transformers writes its old key names by default
    ours = IJepaModel.from_pretrained(tmp_path / "theirs").eval()
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).last_hidden_state, theirs(x).last_hidden_state, atol=0, rtol=0)
        # other resolutions: both interpolate the table bicubically
        y = torch.randn(2, 3, 84, 70)
        torch.testing.assert_close(
            ours(y).last_hidden_state, theirs(y, interpolate_pos_encoding=True).last_hidden_state, atol=1e-6, rtol=1e-5
        )
    # and back: hf_mim -> transformers
    torch.manual_seed(1)
    mine = IJepaModel(tiny()).eval()
    mine.save_pretrained(tmp_path / "mine")
    loaded, info = transformers.IJepaModel.from_pretrained(tmp_path / "mine", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x).last_hidden_state, mine(x).last_hidden_state, atol=0, rtol=0)


def test_fresh_position_tables_are_the_original_sincos():
    model = IJepaForPreTraining(tiny())
    torch.testing.assert_close(model.ijepa.embeddings.position_embeddings[0], sincos_2d_position_embedding(64, 4, 4))
    torch.testing.assert_close(model.predictor.position_embeddings[0], sincos_2d_position_embedding(32, 4, 4))
    assert not model.ijepa.embeddings.position_embeddings.requires_grad
    assert not model.predictor.position_embeddings.requires_grad


# --------------------------------------------------------------------------------- conversion + fixture parity
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    dirs = {}
    for encoder in ("context", "target"):
        output = tmp_path_factory.mktemp(f"ijepa_{encoder}")
        result = run_script(
            "scripts/convert/convert_ijepa_to_hf.py",
            "--checkpoint_path", str(IJEPA_FIXTURE / "checkpoint.pth.tar"), "--output_dir", str(output),
            "--encoder", encoder, "--num_attention_heads", "4", "--model_name", "ijepa-vith14-in1k",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "sincos_table_max_deviation: 0.0" in result.stdout
        dirs[encoder] = output
    return dirs


@pytest.fixture(scope="module")
def fixture_tensors():
    return load_file(IJEPA_FIXTURE / "inputs.safetensors"), load_file(IJEPA_FIXTURE / "expected.safetensors")


def mask_major_rows(batch_first: torch.Tensor) -> torch.Tensor:
    """(B, n, K, D) -> the original's (n * B, K, D), row m * B + b."""
    return batch_first.transpose(0, 1).flatten(0, 1)


def check(actual, expected, name):
    torch.testing.assert_close(actual, expected, rtol=0, atol=fixture_tolerance(expected), msg=name)


def test_converted_folder(converted):
    names = {p.name for p in converted["context"].iterdir()}
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= names
    card = (converted["context"] / "README.md").read_text()
    assert "cc-by-nc-4.0" in card and "ijepa-vith14-in1k named, but the weights are not its architecture" in card
    config = IJepaConfig.from_pretrained(converted["context"])
    assert (config.hidden_size, config.num_hidden_layers, config.image_size, config.patch_size) == (40, 2, 84, 14)
    assert (config.predictor_hidden_size, config.predictor_num_hidden_layers) == (32, 2)


def test_encoders_reproduce_original(converted, fixture_tensors):
    inputs, expected = fixture_tensors
    x = inputs["pixel_values"]
    context = AutoModel.from_pretrained(converted["context"]).eval()
    target = AutoModel.from_pretrained(converted["target"]).eval()
    assert isinstance(context, IJepaModel) and isinstance(target, IJepaModel)
    with torch.no_grad():
        check(context(x).last_hidden_state, expected["encoder_last_hidden_state"], "context encoder")
        check(target(x).last_hidden_state, expected["target_encoder_last_hidden_state"], "target encoder")


def test_pretraining_paths_reproduce_original(converted, fixture_tensors):
    inputs, expected = fixture_tensors
    model = AutoModelForPreTraining.from_pretrained(converted["context"]).eval()
    assert isinstance(model, IJepaForPreTraining)
    with torch.no_grad():
        # the fixture's masks are in the original's mask-major layout (num_masks, B, K); hf_mim's are batch-first
        out = model(
            inputs["pixel_values"],
            context_indices=from_mask_major(inputs["context_indices"]),
            target_indices=from_mask_major(inputs["target_indices"]),
        )
    check(mask_major_rows(out.context_tokens), expected["encoder_context_output"], "context output")
    check(mask_major_rows(out.predictions), expected["predictor_output"], "predictor")
    check(mask_major_rows(out.targets), expected["training_targets"], "targets")
    check(out.loss, expected["loss"], "loss")


def test_float64_parity(converted):
    inputs = load_file(IJEPA_FIXTURE / "inputs.safetensors")
    expected = load_file(IJEPA_FIXTURE / "expected_fp64.safetensors")
    model = IJepaForPreTraining.from_pretrained(converted["context"]).double().eval()
    with torch.no_grad():
        out = model(
            inputs["pixel_values"].double(),
            from_mask_major(inputs["context_indices"]),
            from_mask_major(inputs["target_indices"]),
        )
        encoder = model.ijepa(inputs["pixel_values"].double()).last_hidden_state
    for name, actual in (
        ("encoder_last_hidden_state", encoder),
        ("predictor_output", mask_major_rows(out.predictions)),
        ("training_targets", mask_major_rows(out.targets)),
    ):
        torch.testing.assert_close(actual, expected[name], rtol=0, atol=1e-9 * expected[name].abs().max().item())


def test_converter_errors(tmp_path):
    checkpoint = torch.load(IJEPA_FIXTURE / "checkpoint.pth.tar", weights_only=True)
    del checkpoint["predictor"]["module.predictor_blocks.1.mlp.fc2.bias"]
    checkpoint["encoder"]["module.blocks.0.attn.extra"] = torch.zeros(1)
    with pytest.raises(convert_ijepa.CheckpointMismatchError) as error:
        convert_ijepa.convert_checkpoint(checkpoint, "bad.pth.tar", num_heads=4)
    message = str(error.value)
    assert "predictor.layers.1.mlp.fc2.bias" in message and "encoder.blocks.0.attn.extra" in message
    with pytest.raises(convert_ijepa.CheckpointMismatchError, match="target_encoder"):
        convert_ijepa.convert_checkpoint({"encoder": {}, "predictor": {}}, "x", num_heads=4)
    truncated = tmp_path / "t.pth.tar"
    truncated.write_bytes((IJEPA_FIXTURE / "checkpoint.pth.tar").read_bytes()[:4000])
    result = run_script(
        "scripts/convert/convert_ijepa_to_hf.py",
        "--checkpoint_path",
        str(truncated),
        "--output_dir",
        str(tmp_path / "o"),
    )
    assert result.returncode == 2 and "Could not read" in result.stderr


# --------------------------------------------------------------------------------- pretraining objective
def test_loss_and_gradient_routing():
    torch.manual_seed(0)
    model = IJepaForPreTraining(tiny()).train()
    x = torch.randn(2, 3, 56, 56)
    context = torch.tensor([[[0, 1, 2, 4, 5, 6]]] * 2)  # (B, 1, 6)
    targets = torch.tensor([[[10, 11], [8, 12]], [[14, 15], [3, 7]]])  # (B, 2, 2)
    out = model(x, context_indices=context, target_indices=targets)
    with torch.no_grad():
        full = model.target_encoder(x).last_hidden_state
        normed = torch.nn.functional.layer_norm(full, (64,))
        expected_targets = torch.stack([torch.stack([normed[b, targets[b, t]] for t in range(2)]) for b in range(2)])
    assert out.targets.shape == (2, 2, 2, 64) and out.predictions.shape == (2, 2, 2, 64)
    torch.testing.assert_close(out.targets, expected_targets)
    torch.testing.assert_close(out.loss, torch.nn.functional.smooth_l1_loss(out.predictions, expected_targets))
    out.loss.backward()
    assert all(p.grad is None for p in model.target_encoder.parameters())
    assert model.predictor.mask_token.grad.abs().sum() > 0 and model.ijepa.layers[0].mlp.fc1.weight.grad is not None
    assert model.ijepa.embeddings.position_embeddings.grad is None
    assert not model.target_encoder.training


def test_l2_loss_option():
    torch.manual_seed(0)
    model = IJepaForPreTraining(tiny(loss_type="l2")).eval()
    out = model(torch.randn(2, 3, 56, 56))
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.predictions, out.targets))


def test_pretraining_save_load_and_init(tmp_path):
    torch.manual_seed(0)
    model = IJepaForPreTraining(tiny()).eval()
    model.update_teacher(0.0)
    with torch.no_grad():
        for p in model.ijepa.parameters():
            if p.requires_grad:
                p.add_(0.01)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForPreTraining.from_pretrained(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name
    initialise_from_nan(IJepaForPreTraining, tiny())


def test_pretraining_from_encoder_checkpoint_copies_target(tmp_path):
    torch.manual_seed(0)
    encoder = IJepaModel(tiny())
    encoder.save_pretrained(tmp_path)
    model = IJepaForPreTraining.from_pretrained(tmp_path)
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(model.target_encoder.state_dict()[name], tensor), name
        assert torch.equal(model.ijepa.state_dict()[name], tensor), name
    assert not model.ijepa.embeddings.position_embeddings.requires_grad


def test_classifier_from_full_checkpoint_takes_the_chosen_encoder(converted):
    from transformers import AutoModelForImageClassification

    target = AutoModel.from_pretrained(converted["target"])
    classifier = AutoModelForImageClassification.from_pretrained(converted["target"], num_labels=3)
    for name, tensor in target.state_dict().items():
        assert torch.equal(classifier.ijepa.state_dict()[name], tensor), name
    context = IJepaForPreTraining.from_pretrained(converted["target"]).ijepa
    assert not torch.equal(context.layers[0].mlp.fc1.weight, target.layers[0].mlp.fc1.weight)


def test_converted_folder_loads_quietly(converted):
    """A converted release folder holds both encoders and the predictor; loading the backbone or a classifier from it
    reports nothing unexpected (only the new head is missing)."""
    from transformers import AutoModelForImageClassification

    for auto_class, kwargs in ((AutoModel, {}), (AutoModelForImageClassification, {"num_labels": 3})):
        _, info, report = ModelTesterMixin.load_quietly(auto_class, converted["context"], **kwargs)
        assert not info["unexpected_keys"], info
        assert "UNEXPECTED" not in report, report
        assert all(key.startswith("classifier") for key in info["missing_keys"]), info
