import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, pipeline

from hf_mim import CapiConfig, CapiForImageClassification, CapiForPreTraining, CapiImageProcessor, CapiModel
from hf_mim.layers import CapiRope2D, edge_register_coordinates, normalized_grid_coordinates
from hf_mim.models.capi import convert_capi

from .helpers import FIXTURES, convert_capi_fixture, fixture_tolerance, run_script
from .image_processor_test_mixin import ImageProcessorTesterMixin, photo
from .model_test_mixin import ModelTesterMixin

CAPI_FIXTURE = FIXTURES / "capi"


def tiny_config(**overrides):
    return CapiConfig.tiny(drop_path_rate=0.0, **overrides)


class TestCapiModelCommon(ModelTesterMixin):
    base_model_class = CapiModel
    classification_class = CapiForImageClassification
    pretraining_class = CapiForPreTraining
    pretraining_batch_fields = ("teacher_patch_tokens", "pooled_features")

    def get_config(self, **overrides):
        return tiny_config(**overrides)


class TestCapiClassificationPoolings:
    @pytest.mark.parametrize("pooling", ["attentive", "global", "avg_patch", "global_avg_patch"])
    def test_each_pooling_trains(self, pooling):
        model = CapiForImageClassification(tiny_config(num_labels=3, classifier_pooling=pooling)).train()
        out = model(torch.randn(2, 3, 56, 56), labels=torch.tensor([0, 2]))
        out.loss.backward()
        assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)
        # the backbone is trained too, whatever the pooling
        assert model.capi.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0

    def test_global_pooling_uses_global_representation(self):
        model = CapiForImageClassification(tiny_config(num_labels=3, classifier_pooling="global")).eval()
        x = torch.randn(2, 3, 56, 56)
        with torch.no_grad():
            expected = model.classifier(model.capi(x).pooler_output)
            torch.testing.assert_close(model(x).logits, expected)


class TestCapiImageProcessor(ImageProcessorTesterMixin):
    processor_class = CapiImageProcessor

    def test_defaults_match_capi_eval_transform(self):
        processor = CapiImageProcessor()
        assert processor.size.shortest_edge == 256 and (processor.crop_size.height, processor.crop_size.width) == (
            224,
            224,
        )
        assert processor.resample == 3  # bicubic
        assert list(processor.image_mean) == [0.485, 0.456, 0.406] and list(processor.image_std) == [
            0.229,
            0.224,
            0.225,
        ]
        assert processor.min_image_size == 14


class TestCapiRope:
    def test_freqs_match_checkpoint_tables(self):
        state = torch.load(CAPI_FIXTURE / "checkpoint.pth", weights_only=True)
        stored = state["backbone.encoder.blocks.0.residual1.fn.rope.freqs"]
        assert torch.equal(CapiRope2D.analytic_freqs(16), stored)

    def test_pairs_rotate_with_row_and_column(self):
        """Channel i turns with the row coordinate, channel i + d/2 with the column one (not a standard rotation)."""
        rope = CapiRope2D(8)
        x = torch.zeros(1, 8)
        x[0, 0] = 1.0  # only the first member of pair 0 is set
        row_only = rope(x, torch.tensor([[0.3, 0.0]]))
        f = rope.freqs[0, 0]
        torch.testing.assert_close(row_only[0, 0], torch.cos(0.3 * f))
        torch.testing.assert_close(row_only[0, 4], torch.tensor(0.0))  # sin of the column angle (0) times x[0]
        col_only = rope(x, torch.tensor([[0.0, 0.3]]))
        torch.testing.assert_close(col_only[0, 0], torch.tensor(1.0))  # row angle 0: untouched
        torch.testing.assert_close(col_only[0, 4], torch.sin(0.3 * rope.freqs[1, 4]))

    def test_coordinates(self):
        coords = normalized_grid_coordinates(3, 2, torch.float32)
        assert coords.tolist() == [[0, 0], [0, 1], [0.5, 0], [0.5, 1], [1, 0], [1, 1]]
        edge = edge_register_coordinates(8, torch.float32)
        assert edge.tolist() == [[0, 0], [0.5, 0], [1, 0], [1, 0.5], [1, 1], [0.5, 1], [0, 1], [0, 0.5]]
        assert normalized_grid_coordinates(1, 2, torch.float32).tolist() == [[0, 0], [0, 1]]

    def test_any_resolution_without_interpolation(self):
        model = CapiModel(tiny_config()).eval()
        for size in [(14, 14), (28, 56), (112, 84)]:
            with torch.no_grad():
                out = model(torch.randn(1, 3, *size))
            assert out.feature_map.shape == (1, size[0] // 14, size[1] // 14, 64)
            assert torch.isfinite(out.pooler_output).all()


class _CodeOnLoad:
    """Unpickling this would call a function: what weights_only=True exists to refuse."""

    def __reduce__(self):
        return (print, ("code ran while loading a checkpoint",))


# ----------------------------------------------------------------------------------------------- conversion
@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory):
    output = tmp_path_factory.mktemp("capi_converted")
    result = convert_capi_fixture(output, "--model_name", "capi-vitl14-lvd")
    assert "rope_tables_checked_and_dropped: 4" in result.stdout
    return output


@pytest.fixture(scope="module")
def fixture_tensors():
    return load_file(CAPI_FIXTURE / "inputs.safetensors"), load_file(CAPI_FIXTURE / "expected.safetensors")


class TestCapiConversion:
    def test_hub_folder_contents(self, converted_dir):
        names = {p.name for p in converted_dir.iterdir()}
        assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= names
        assert not any(name.endswith((".bin", ".pth", ".pt")) for name in names)
        card = (converted_dir / "README.md").read_text()
        # the tiny fixture is named capi-vitl14-lvd but is not its architecture: no release numbers in its card
        assert "license: apache-2.0" in card and "capi-vitl14-lvd named, but the weights are not its" in card
        assert "model-index" not in card and "trust_remote_code=True" in card
        config = CapiConfig.from_pretrained(converted_dir)
        assert (config.hidden_size, config.num_hidden_layers, config.decoder_num_hidden_layers) == (64, 2, 2)
        assert (config.num_attention_heads, config.num_register_tokens, config.intermediate_size) == (4, 4, 256)

    @pytest.mark.parametrize("size", ["56x56", "70x42"])
    def test_reproduces_original_outputs(self, converted_dir, fixture_tensors, size):
        inputs, expected = fixture_tensors
        model = AutoModel.from_pretrained(converted_dir).eval()
        assert isinstance(model, CapiModel)
        with torch.no_grad():
            out = model(inputs[f"pixel_values_{size}"])
        for name, actual in (
            ("global_repr", out.pooler_output),
            ("registers", out.register_tokens),
            ("feature_map", out.feature_map),
        ):
            reference = expected[f"{name}_{size}"]
            torch.testing.assert_close(actual, reference, rtol=0, atol=fixture_tolerance(reference))

    def test_reproduces_float64_outputs(self, converted_dir):
        inputs = load_file(CAPI_FIXTURE / "inputs.safetensors")
        expected = load_file(CAPI_FIXTURE / "expected_fp64.safetensors")
        model = CapiModel.from_pretrained(converted_dir).double().eval()
        for size in ("56x56", "70x42"):
            with torch.no_grad():
                out = model(inputs[f"pixel_values_{size}"].double())
            for name, actual in (("global_repr", out.pooler_output), ("feature_map", out.feature_map)):
                reference = expected[f"{name}_{size}"]
                torch.testing.assert_close(actual, reference, rtol=0, atol=1e-9 * reference.abs().max().item())

    def test_reproduces_masked_pretraining_paths(self, converted_dir, fixture_tensors):
        """Student encoder on visible patches (registers rescaled to their bounding box) and the full predictor."""
        inputs, expected = fixture_tensors
        model = CapiModel.from_pretrained(converted_dir).eval()
        pixels = inputs["pixel_values_56x56"]
        with torch.no_grad():
            teacher = model.encode(pixels)
            student = model.encode(pixels, visible_indices=inputs["visible_indices"])
            query_coords = teacher.patch_coords.flatten(0, 1)[inputs["predict_indices"]].reshape(2, -1, 2)
            predictions = model.predict(student, query_coords).flatten(0, 1)
        checks = {
            "pretrain_teacher_patch_tokens": teacher.tokens[:, 4:],
            "pretrain_student_visible_patch_tokens": student.tokens[:, 4:],
            "pretrain_student_predictions": predictions,
        }
        for name, actual in checks.items():
            reference = expected[name]
            torch.testing.assert_close(actual, reference, rtol=0, atol=fixture_tolerance(reference), msg=name)

    def test_pipeline_feature_extraction(self, converted_dir):
        import PIL.Image

        image = PIL.Image.fromarray(photo(90, 120))
        extractor = pipeline("image-feature-extraction", model=str(converted_dir), framework="pt")
        pooled = torch.tensor(extractor(image, pool=True))
        tokens = torch.tensor(extractor(image))
        model = CapiModel.from_pretrained(converted_dir).eval()
        pixels = CapiImageProcessor.from_pretrained(converted_dir)(images=image, return_tensors="pt").pixel_values
        with torch.no_grad():
            reference = model(pixels)
        torch.testing.assert_close(pooled.reshape(1, -1), reference.pooler_output, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            tokens.reshape(reference.last_hidden_state.shape), reference.last_hidden_state, atol=1e-5, rtol=1e-5
        )
        assert tokens.reshape(1, -1, 64).shape[1] == 4 + 16 * 16

    def test_wrong_checkpoint_lists_missing_and_unexpected_keys(self, tmp_path):
        state = torch.load(CAPI_FIXTURE / "checkpoint.pth", weights_only=True)
        del state["backbone.encoder.blocks.1.residual2.fn.fc2.weight"]
        state["backbone.encoder.blocks.0.residual1.fn.qkv.weight"] = torch.zeros(3)
        with pytest.raises(convert_capi.CheckpointMismatchError) as error:
            convert_capi.convert_state_dict(state, "bad.pth")
        message = str(error.value)
        assert "encoder.layer.1.mlp.fc2.weight" in message and "Missing keys (1)" in message
        assert "encoder.blocks.0.residual1.fn.qkv.weight" in message and "Unexpected keys (1)" in message

    def test_modified_rope_table_rejected(self):
        state = torch.load(CAPI_FIXTURE / "checkpoint.pth", weights_only=True)
        state["backbone.decoder.blocks.1.residual1.fn.rope.freqs"] *= 1.01
        with pytest.raises(convert_capi.CheckpointMismatchError, match="analytic RoPE"):
            convert_capi.convert_state_dict(state, "bad.pth")

    def test_truncated_and_foreign_files(self, tmp_path):
        truncated = tmp_path / "truncated.pth"
        truncated.write_bytes((CAPI_FIXTURE / "checkpoint.pth").read_bytes()[:5000])
        result = run_script(
            "scripts/convert/convert_capi_to_hf.py",
            "--checkpoint_path",
            str(truncated),
            "--output_dir",
            str(tmp_path / "o"),
        )
        assert result.returncode == 2 and "Could not read" in result.stderr
        foreign = tmp_path / "foreign.pth"
        torch.save({"backbone.conv1.weight": torch.zeros(2)}, foreign)
        result = run_script(
            "scripts/convert/convert_capi_to_hf.py",
            "--checkpoint_path",
            str(foreign),
            "--output_dir",
            str(tmp_path / "o"),
        )
        assert result.returncode == 2 and "Missing keys" in result.stderr and "patch_embed.weight" in result.stderr
        assert not (tmp_path / "o" / "model.safetensors").exists()

    def test_pickled_code_refused(self, tmp_path):
        """weights_only=True: a checkpoint that needs arbitrary classes to unpickle is refused."""
        evil = tmp_path / "evil.pth"
        torch.save({"x": _CodeOnLoad()}, evil)
        with pytest.raises(ValueError, match="weights_only"):
            convert_capi.convert(evil, tmp_path / "out")


def test_classifier_keeps_only_the_predictor_blocks_it_uses():
    config = tiny_config(num_labels=3, decoder_num_hidden_layers=3)
    assert CapiForImageClassification(config).capi.predictor is None  # attentive: no predictor at all
    model = CapiForImageClassification(
        tiny_config(num_labels=3, decoder_num_hidden_layers=3, classifier_pooling="global")
    )
    assert len(model.capi.predictor.layer) == 1
    model.train()(torch.randn(2, 3, 56, 56), labels=torch.tensor([0, 1])).loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # DDP-safe: every parameter used
