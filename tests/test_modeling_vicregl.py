"""VICRegL models: transformers-style common tests for both backbones, the representation definitions, weights
interchange with transformers' ResNetModel / ConvNextModel, pretraining-model behaviour, 2-process DDP equivalence,
and run_vicregl.py."""

import json

import pytest
import torch
import transformers
from transformers import AutoModel

from hf_mim import (
    VicreglConfig,
    VicreglForImageClassification,
    VicreglForPreTraining,
    VicreglImageProcessor,
    VicreglModel,
)
from hf_mim.data import crop_location_grid

from .distributed_launch import run_layouts, weights
from .helpers import run_script
from .image_processor_test_mixin import ImageProcessorTesterMixin
from .model_test_mixin import ModelTesterMixin, assert_close


def views_for(pixel_values: torch.Tensor) -> dict:
    """Pretraining inputs from a (B, C, H, W) batch: the image and its mirror as two global views, with the grids of
    the whole image (the mirror's flipped)."""
    batch, _, height, width = pixel_values.shape
    size = height // 32, width // 32
    grid = crop_location_grid((0, 0, height, width), size[0])[: size[0], : size[1]]
    flipped = crop_location_grid((0, 0, height, width), size[0], flip=True)[: size[0], : size[1]]
    if size[0] != size[1]:  # non-square: build per-axis cell centres
        rows = (torch.arange(size[0]) + 0.5) * height / size[0]
        cols = (torch.arange(size[1]) + 0.5) * width / size[1]
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1)
        flipped = grid.flip(1)
    return {
        "pixel_values": torch.stack([pixel_values, pixel_values.flip(-1)], dim=1),
        "locations": torch.stack([grid, flipped]).expand(batch, -1, -1, -1, -1).to(pixel_values.dtype),
    }


class VicreglCommon(ModelTesterMixin):
    base_model_class = VicreglModel
    classification_class = VicreglForImageClassification
    pretraining_class = VicreglForPreTraining
    pretraining_batch_fields = ("pooled_features", "embeddings")
    image_size = (64, 64)
    non_square_size = (96, 64)
    uses_attention = False
    last_hidden_state_ndim = 4
    batch_size = 4
    preset = None

    def get_config(self, **overrides):
        return getattr(VicreglConfig, self.preset)(**overrides)

    def model_inputs(self, model_class, pixel_values, seed=0) -> dict:
        if model_class is self.pretraining_class:
            return views_for(pixel_values)
        return {"pixel_values": pixel_values}

    def test_hidden_states_per_stage(self):
        """transformers' convention: the stem output then every stage output, (B, C_s, H_s, W_s)."""
        model = self.build(VicreglModel)
        config = model.config
        with torch.no_grad():
            out = model(self.pixel_values(), output_hidden_states=True)
        assert len(out.hidden_states) == config.num_stages + 1
        strides = [config.total_stride // 2 ** (config.num_stages - 1 - i) for i in range(config.num_stages)]
        stem = config.embedding_size if config.backbone_type == "resnet" else config.hidden_sizes[0]
        assert out.hidden_states[0].shape == (self.batch_size, stem, 64 // strides[0], 64 // strides[0])
        for state, width, stride in zip(out.hidden_states[1:], config.hidden_sizes, strides):
            assert state.shape == (self.batch_size, width, 64 // stride, 64 // stride)
        assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
        assert out.feature_map.shape == (self.batch_size, 2, 2, config.representation_size)

    def test_output_flags_follow_config_every_class(self):
        pixel_values = self.pixel_values()
        for model_class in self.all_model_classes():
            model = self.build(model_class, output_hidden_states=True)
            inputs = self.model_inputs(model_class, pixel_values)
            with torch.no_grad():
                out = model(**inputs)
                assert out.hidden_states is not None and len(out.hidden_states) == model.config.num_stages + 1
                assert model(**inputs, output_hidden_states=False).hidden_states is None
            model.config.return_dict = False
            with torch.no_grad():
                assert isinstance(model(**inputs), tuple), model_class

    def test_any_input_size(self):
        model = self.build(VicreglModel)
        with torch.no_grad():
            for size in [(70, 45), (33, 96), (128, 64)]:
                out = model(self.pixel_values(size))
                assert out.feature_map.shape[1:3] == out.last_hidden_state.shape[2:]
                assert torch.isfinite(out.pooler_output).all()

    def test_wrong_channels_rejected(self):
        with pytest.raises(ValueError, match="pixel_values must be"):
            self.build(VicreglModel)(torch.randn(2, 1, 64, 64))


class TestVicreglConvNextCommon(VicreglCommon):
    preset = "tiny"

    def test_representation_is_mean_of_normed_tokens(self):
        """VICRegL: mean over tokens of LayerNorm(token) - not transformers' LayerNorm of the mean."""
        model = self.build(VicreglModel)
        with torch.no_grad():
            out = model(self.pixel_values())
            tokens = out.last_hidden_state.flatten(2).transpose(1, 2)
            normed = torch.nn.functional.layer_norm(tokens, (128,), model.layernorm.weight, model.layernorm.bias, 1e-6)
            assert_close(out.feature_map.flatten(1, 2), normed, atol=1e-6, rtol=1e-6)
            assert_close(out.pooler_output, normed.mean(1), atol=1e-6, rtol=1e-6)
            ln_of_mean = model.layernorm(tokens.mean(1))
        assert (ln_of_mean - out.pooler_output).abs().max() > 1e-2

    def test_too_small_input_rejected(self):
        with pytest.raises(ValueError, match="smaller than the backbone's total stride"):
            self.build(VicreglModel)(torch.randn(1, 3, 31, 64))


class TestVicreglResNetCommon(VicreglCommon):
    preset = "tiny_resnet"

    def test_representation_is_average_pool_of_last_map(self):
        model = self.build(VicreglModel)
        with torch.no_grad():
            out = model(self.pixel_values())
        assert (out.last_hidden_state >= 0).all()  # post-ReLU, as VICRegL's maps
        assert torch.equal(out.feature_map, out.last_hidden_state.permute(0, 2, 3, 1))
        assert_close(out.pooler_output, out.last_hidden_state.mean((2, 3)), atol=1e-6, rtol=1e-6)

    def test_zero_init_residual(self):
        model = VicreglModel(self.get_config())
        for stage in model.encoder.stages:
            for layer in stage.layers:
                assert torch.equal(
                    layer.layer[2].normalization.weight, torch.zeros_like(layer.layer[2].normalization.weight)
                )
        model = VicreglModel(self.get_config(zero_init_residual=False))
        assert model.encoder.stages[0].layers[0].layer[2].normalization.weight.eq(1).all()


class TestVicreglImageProcessor(ImageProcessorTesterMixin):
    processor_class = VicreglImageProcessor


# --------------------------------------------------------------------------------- transformers interchange
def randomise_batch_norm(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            module.weight.data.copy_(1 + 0.2 * torch.randn(n, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(n, generator=generator))


TRANSFORMERS_CONFIGS = {
    "resnet": lambda: transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[16, 32, 64, 128], depths=[1, 2, 1, 1], layer_type="bottleneck",
        hidden_act="relu", downsample_in_first_stage=False, downsample_in_bottleneck=False,
    ),
    "convnext": lambda: transformers.ConvNextConfig(
        depths=[1, 2, 1, 1], hidden_sizes=[16, 32, 64, 128], layer_scale_init_value=0.0, layer_norm_eps=1e-6,
        drop_path_rate=0.0,
    ),
}  # fmt: skip
TRANSFORMERS_CLASSES = {"resnet": transformers.ResNetModel, "convnext": transformers.ConvNextModel}


@pytest.mark.parametrize("backbone", ["resnet", "convnext"])
def test_weights_interchange_with_transformers(backbone, tmp_path):
    torch.manual_seed(0)
    theirs = TRANSFORMERS_CLASSES[backbone](TRANSFORMERS_CONFIGS[backbone]())
    with torch.no_grad():
        randomise_batch_norm(theirs)
    theirs.eval().save_pretrained(tmp_path / "theirs")
    ours, info = VicreglModel.from_pretrained(tmp_path / "theirs", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert ours.config.backbone_type == backbone and ours.config.depths == [1, 2, 1, 1]
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        mine, reference = ours.eval()(x, output_hidden_states=True), theirs(x, output_hidden_states=True)
        assert_close(mine.last_hidden_state, reference.last_hidden_state, atol=1e-6, rtol=1e-5)
        for a, b in zip(mine.hidden_states, reference.hidden_states, strict=True):
            assert_close(a, b, atol=1e-6, rtol=1e-5)
        if backbone == "resnet":
            assert_close(mine.pooler_output, reference.pooler_output.flatten(1), atol=1e-6, rtol=1e-5)
        else:  # transformers pools first; VICRegL's representation uses the same final norm per token
            normed = theirs.layernorm(reference.last_hidden_state.permute(0, 2, 3, 1))
            assert_close(mine.feature_map, normed, atol=1e-6, rtol=1e-5)
    # and back: an hf_mim folder loads into transformers' class with every key
    ours.save_pretrained(tmp_path / "ours")
    back, info = TRANSFORMERS_CLASSES[backbone].from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        assert_close(back.eval()(x).last_hidden_state, mine.last_hidden_state, atol=0, rtol=0)


# --------------------------------------------------------------------------------- pretraining model
def pretraining_inputs(batch=4, local=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    boxes = torch.randint(10, 60, (batch, 5, 4), generator=generator).float()
    grid = lambda views, n: torch.stack(  # noqa: E731
        [torch.stack([crop_location_grid(tuple(b[v].tolist()), n) for v in views]) for b in boxes]
    )
    inputs = {"pixel_values": torch.randn(batch, 2, 3, 64, 64, generator=generator), "locations": grid(range(2), 2)}
    if local:
        inputs["local_pixel_values"] = torch.randn(batch, 3, 3, 32, 32, generator=generator)
        inputs["local_locations"] = grid(range(2, 5), 1)
    return inputs


def test_alpha_drops_the_unused_projector():
    only_global = VicreglForPreTraining(VicreglConfig.tiny(alpha=1.0))
    only_local = VicreglForPreTraining(VicreglConfig.tiny(alpha=0.0))
    assert only_global.maps_projector is None and only_global.projector is not None
    assert only_local.projector is None and only_local.maps_projector is not None
    inputs = pretraining_inputs()
    out = only_global(inputs["pixel_values"])  # the global loss needs no grids
    assert out.local_loss is None and torch.equal(out.loss, out.global_loss)
    out = only_local(**inputs)
    assert out.global_loss is None and torch.equal(out.loss, out.local_loss)


def test_loss_combination_and_gradients():
    torch.manual_seed(0)
    model = VicreglForPreTraining(VicreglConfig.tiny(alpha=0.75)).train()
    out = model(**pretraining_inputs())
    parts = ("invariance", "variance", "covariance")
    for branch in ("global", "local"):
        total = sum(getattr(out, f"{branch}_{p}_loss") for p in parts)
        assert_close(getattr(out, f"{branch}_loss"), total, atol=1e-6, rtol=1e-6)
    assert_close(out.loss, 0.75 * out.global_loss + 0.25 * out.local_loss, atol=1e-6, rtol=1e-6)
    assert out.embeddings.shape == (4, 5, 128) and out.pooled_features.shape == (4, 128)
    out.loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_pretraining_input_errors():
    model = VicreglForPreTraining(VicreglConfig.tiny())
    inputs = pretraining_inputs(local=False)
    with pytest.raises(ValueError, match="needs location grids"):
        model(inputs["pixel_values"])
    with pytest.raises(ValueError, match="at least 2 views"):
        model(inputs["pixel_values"][:, :1], inputs["locations"][:, :1])
    with pytest.raises(ValueError, match="grid locations"):
        model(inputs["pixel_values"], torch.zeros(4, 2, 3, 3, 2))
    with pytest.raises(ValueError, match=r"\(batch, views, channels, height, width\)"):
        model(inputs["pixel_values"][:, 0], inputs["locations"])


def test_pretraining_learns_on_a_fixed_batch():
    """A few AdamW steps on one batch lower the loss (both branches), ConvNeXt and ResNet (BN projectors)."""
    for config in (VicreglConfig.tiny(), VicreglConfig.tiny_resnet()):
        torch.manual_seed(0)
        model = VicreglForPreTraining(config).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        inputs = pretraining_inputs(batch=8)
        losses = []
        for _ in range(8):
            out = model(**inputs)
            losses.append(out.loss.item())
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
        assert losses[-1] < losses[0] - 0.5, (config.backbone_type, losses)


def test_auto_model_from_pretraining_folder_is_the_backbone(tmp_path):
    torch.manual_seed(0)
    model = VicreglForPreTraining(VicreglConfig.tiny())
    model.save_pretrained(tmp_path)
    backbone = AutoModel.from_pretrained(tmp_path)
    assert isinstance(backbone, VicreglModel)
    for name, tensor in model.vicregl.state_dict().items():
        assert torch.equal(backbone.state_dict()[name], tensor), name


def test_feature_extraction_pipeline_gives_the_representation(tmp_path):
    import numpy as np
    import PIL.Image

    torch.manual_seed(0)
    VicreglModel(VicreglConfig.tiny()).save_pretrained(tmp_path)
    processor = VicreglImageProcessor(size={"shortest_edge": 73}, crop_size={"height": 64, "width": 64})
    processor.save_pretrained(tmp_path)
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 90, 3), dtype=np.uint8))
    pooled = transformers.pipeline("image-feature-extraction", model=str(tmp_path))(image, pool=True)
    model = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = model(**processor(images=image, return_tensors="pt")).pooler_output
    assert_close(torch.tensor(pooled).reshape(expected.shape), expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------- distributed
@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    return run_layouts(
        "tests/distributed/vicregl_train_loop.py",
        {"single": 1, "ddp": 2, "ddp_no_gather": 2},
        tmp_path_factory.mktemp("vicregl_dist"),
        3,
    )


def test_ddp_matches_single_process(ddp_runs):
    """Variance / covariance over the gathered batch (with gradient), invariance on the local batch: 2 processes
    train exactly as one on the global batch (float64). Without the gather they do not."""
    single, ddp, no_gather = (weights(ddp_runs[m]) for m in ("single", "ddp", "ddp_no_gather"))
    assert ddp_runs["ddp"]["__world_size__"].item() == 2
    diff = max((ddp[k] - single[k]).abs().max().item() for k in single)
    assert diff < 1e-12, diff  # measured: see closing note
    diff_no_gather = max((no_gather[k] - single[k]).abs().max().item() for k in single)
    assert diff_no_gather > 1e-6, diff_no_gather


# --------------------------------------------------------------------------------- the example script
def test_run_vicregl_smoke(tmp_path):
    output = tmp_path / "run"
    result = run_script(
        "examples/pytorch/pretraining/run_vicregl.py", "--output_dir", str(output), "--max_steps", "3",
        "--per_device_train_batch_size", "4", "--report_to", "none", "--logging_steps", "1", "--disable_tqdm", "true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    logged = history[0]
    for key in ("global_loss", "local_loss", "local_invariance_loss", "effective_rank", "learning_rate"):
        assert key in logged, logged
    backbone = AutoModel.from_pretrained(output / "backbone")
    assert isinstance(backbone, VicreglModel)
    processor = VicreglImageProcessor.from_pretrained(output / "backbone")
    assert processor.crop_size == {"height": 64, "width": 64}
    # The embedded default runs the CPU recipe (hf_mim.presets.CPU_RECIPES), which trains the tiny ResNet.
    assert "resnet backbone" in (output / "backbone" / "README.md").read_text()


def test_run_vicregl_fast_vc_reg(tmp_path):
    """`--config_overrides fast_vc_reg=true` reaches the saved config and the trained loss (the tiny ConvNeXt with its
    local crops, so the local loss runs over views of two sizes)."""
    output = tmp_path / "run"
    result = run_script(
        "examples/pytorch/pretraining/run_vicregl.py", "--output_dir", str(output), "--max_steps", "2",
        "--config_name", "vicregl-tiny", "--config_overrides", "fast_vc_reg=true", "--learning_report", "false",
        "--per_device_train_batch_size", "4", "--report_to", "none", "--logging_steps", "1", "--disable_tqdm", "true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((output / "config.json").read_text())["fast_vc_reg"] is True
    logged = json.loads((output / "trainer_state.json").read_text())["log_history"][0]
    for key in ("local_invariance_loss", "local_variance_loss", "local_covariance_loss"):
        assert key in logged and logged[key] == logged[key] and logged[key] >= 0, logged
