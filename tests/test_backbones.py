"""transformers' backbone API for every method (CapiBackbone, IJepaBackbone, CaeBackbone, VicreglBackbone): feature
maps equal the models' own tokens / stage outputs, out_features / out_indices, AutoBackbone loading from model and
pretraining folders, the multi-scale adapter, and UperNet built through `load_backbone` training a step."""

import pytest
import torch
from transformers import AutoBackbone, AutoConfig, UperNetConfig, UperNetForSemanticSegmentation

from hf_mim import (
    CaeBackbone,
    CaeConfig,
    CaeForPreTraining,
    CaeModel,
    CapiBackbone,
    CapiConfig,
    CapiForPreTraining,
    CapiModel,
    IJepaBackbone,
    IJepaConfig,
    IJepaForPreTraining,
    IJepaModel,
    VicreglBackbone,
    VicreglConfig,
    VicreglForPreTraining,
    VicreglModel,
)
from hf_mim.layers.dense import MultiScaleAdapter, tokens_to_feature_map

from .model_test_mixin import ModelTesterMixin, assert_close, initialise_from_nan

load_quietly = ModelTesterMixin.load_quietly

# name: (tiny config (4 blocks, drop path off), backbone, base model, pretraining model, prefix tokens, non-square size)
VITS = {
    "capi": (
        lambda **kw: CapiConfig.tiny(num_hidden_layers=4, drop_path_rate=0.0, **kw),
        CapiBackbone, CapiModel, CapiForPreTraining, 4, (56, 84),
    ),
    "ijepa": (
        lambda **kw: IJepaConfig.tiny(num_hidden_layers=4, **kw),
        IJepaBackbone, IJepaModel, IJepaForPreTraining, 0, (56, 84),
    ),
    "cae": (
        lambda **kw: CaeConfig.tiny(num_hidden_layers=4, **kw),
        CaeBackbone, CaeModel, CaeForPreTraining, 1, (64, 96),
    ),
}  # fmt: skip
CONVNETS = {
    "convnext": lambda **kw: VicreglConfig.tiny(**kw),
    "resnet": lambda **kw: VicreglConfig.tiny_resnet(**kw),
}


def pixels(size, batch=2, seed=0):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def vit_stage_maps(model, x, num_prefix, normed):
    """Every stage's patch tokens from the base model's own hidden states, as (B, D, h, w) maps."""
    out = model(x, output_hidden_states=True)
    grid = (x.shape[-2] // model.config.patch_size, x.shape[-1] // model.config.patch_size)
    return [
        tokens_to_feature_map(model.layernorm(h) if normed else h, grid, num_prefix) for h in out.hidden_states
    ], out


# ------------------------------------------------------------------------------------------------ ViT backbones
@pytest.mark.parametrize("name", VITS)
def test_vit_maps_equal_the_model_tokens_after_a_round_trip_from_a_model_folder(name, tmp_path):
    make_config, backbone_class, model_class, _, num_prefix, size = VITS[name]
    torch.manual_seed(0)
    model = model_class(make_config()).eval()
    model.save_pretrained(tmp_path)
    x = pixels(size)
    grid = (size[0] // model.config.patch_size, size[1] // model.config.patch_size)
    with torch.no_grad():
        normed_maps, out = vit_stage_maps(model, x, num_prefix, normed=True)
        raw_maps, _ = vit_stage_maps(model, x, num_prefix, normed=False)

    # AutoBackbone, default: the last stage, through the final norm = the model's own feature map
    backbone, info, report = load_quietly(AutoBackbone, tmp_path)
    assert type(backbone) is backbone_class
    assert not info["missing_keys"] and not info["unexpected_keys"] and "UNEXPECTED" not in report, info
    assert backbone.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert backbone.out_features == ["stage4"] and backbone.out_indices == [4] and backbone.channels == [64]
    with torch.no_grad():
        (last,) = backbone.eval()(x).feature_maps
    assert last.shape == (2, 64, *grid)
    assert_close(last, out.feature_map.permute(0, 3, 1, 2), atol=0, rtol=0)

    # the class itself, other stages, un-normed
    backbone = backbone_class.from_pretrained(tmp_path, out_indices=[0, 2, 3], backbone_apply_layernorm=False).eval()
    assert backbone.out_features == ["stem", "stage2", "stage3"] and backbone.channels == [64] * 3
    with torch.no_grad():
        outputs = backbone(x, output_hidden_states=True)
        with_attentions = backbone(x, output_attentions=True)  # eager attention: equal up to rounding
    for got, index in zip(outputs.feature_maps, [0, 2, 3], strict=True):
        assert_close(got, raw_maps[index], atol=0, rtol=0)
    assert len(outputs.hidden_states) == 5 and outputs.attentions is None
    assert len(with_attentions.attentions) == 4 and with_attentions.hidden_states is None
    assert_close(with_attentions.feature_maps[-1], raw_maps[3], atol=1e-5, rtol=1e-5)
    # normed, by out_features; the tuple form
    backbone = backbone_class.from_pretrained(tmp_path, out_features=["stage1", "stage4"]).eval()
    assert backbone.out_indices == [1, 4]
    with torch.no_grad():
        maps = backbone(x, return_dict=False)[0]
    for got, index in zip(maps, [1, 4], strict=True):
        assert_close(got, normed_maps[index], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", VITS)
def test_vit_backbone_loads_quietly_from_a_pretraining_folder(name, tmp_path):
    make_config, backbone_class, _, pretraining_class, num_prefix, size = VITS[name]
    torch.manual_seed(0)
    pretraining = pretraining_class(make_config()).eval()
    pretraining.save_pretrained(tmp_path)
    backbone, info, report = load_quietly(AutoBackbone, tmp_path, out_indices=[1, 4])
    assert type(backbone) is backbone_class and backbone.out_indices == [1, 4]
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert "UNEXPECTED" not in report and "MISSING" not in report, report
    student = getattr(pretraining, backbone_class.base_model_prefix)
    x = pixels(size)
    with torch.no_grad():
        expected, _ = vit_stage_maps(student, x, num_prefix, normed=True)
        maps = backbone.eval()(x).feature_maps
    assert_close(maps[0], expected[1], atol=1e-6, rtol=1e-6)
    assert_close(maps[1], expected[4], atol=1e-6, rtol=1e-6)


def test_ijepa_backbone_takes_the_target_encoder_when_the_config_says_so(tmp_path):
    make_config = VITS["ijepa"][0]
    torch.manual_seed(0)
    pretraining = IJepaForPreTraining(make_config(standalone_encoder="target")).eval()
    with torch.no_grad():
        for parameter in pretraining.target_encoder.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    pretraining.save_pretrained(tmp_path)
    backbone = AutoBackbone.from_pretrained(tmp_path).eval()
    x = pixels((56, 56))
    with torch.no_grad():
        got = backbone(x).feature_maps[0]
        target = pretraining.target_encoder(x).feature_map.permute(0, 3, 1, 2)
        context = pretraining.ijepa(x).feature_map.permute(0, 3, 1, 2)
    assert_close(got, target, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(got, context)


@pytest.mark.parametrize("name", VITS)
def test_multiscale_adapter_strides_and_loading(name, tmp_path):
    make_config, backbone_class, model_class, _, _, size = VITS[name]
    torch.manual_seed(0)
    model_class(make_config()).save_pretrained(tmp_path)
    backbone, info, _ = load_quietly(
        backbone_class, tmp_path, backbone_multiscale=True, out_indices=[1, 2, 3, 4], backbone_apply_layernorm=False
    )
    # only the new adapters are missing; every encoder weight loads
    assert info["missing_keys"] and all(k.startswith("multiscale.") for k in info["missing_keys"]), info
    assert not info["unexpected_keys"], info
    assert isinstance(backbone.multiscale, MultiScaleAdapter) and backbone.channels == [64] * 4
    x = pixels(size)
    h, w = size[0] // backbone.config.patch_size, size[1] // backbone.config.patch_size
    with torch.no_grad():
        maps = backbone.eval()(x).feature_maps
    assert [tuple(m.shape) for m in maps] == [(2, 64, 4 * h, 4 * w), (2, 64, 2 * h, 2 * w), (2, 64, h, w),
                                              (2, 64, h // 2, w // 2)]  # fmt: skip
    # fpn3 is the identity: the third map is the un-normed stage-3 map itself
    with torch.no_grad():
        (plain,) = backbone_class.from_pretrained(tmp_path, out_indices=[3], backbone_apply_layernorm=False)(x)[0]
    assert_close(maps[2], plain, atol=0, rtol=0)
    # the adapter is initialised like everything else (built on meta, filled with NaN)
    initialise_from_nan(backbone_class, backbone.config)
    with pytest.raises(ValueError, match="backbone_multiscale"):
        make_config(backbone_multiscale=True, out_indices=[1, 2])
    config = make_config(backbone_multiscale=True, out_indices=[1, 2, 3, 4])
    config.out_indices = [2, 4]  # edited after construction: the backbone refuses
    with pytest.raises(ValueError, match="backbone_multiscale"):
        backbone_class(config)


def test_unused_final_norm_is_not_built():
    config = VITS["cae"][0](backbone_apply_layernorm=False)
    backbone = CaeBackbone(config)
    assert isinstance(backbone.cae.layernorm, torch.nn.Identity)
    assert not any("layernorm" in n for n, _ in backbone.named_parameters())
    assert any("layernorm" in n for n, _ in CaeBackbone(VITS["cae"][0]()).named_parameters())


# ------------------------------------------------------------------------------------------------ VICRegL
@pytest.mark.parametrize("kind", CONVNETS)
def test_vicregl_stage_maps_are_the_model_hidden_states(kind, tmp_path):
    make_config = CONVNETS[kind]
    torch.manual_seed(0)
    model = VicreglModel(make_config()).eval()
    model.save_pretrained(tmp_path)
    x = pixels((64, 96))
    with torch.no_grad():
        hidden_states = model(x, output_hidden_states=True).hidden_states
    backbone, info, report = load_quietly(AutoBackbone, tmp_path, out_indices=[0, 1, 2, 3, 4])
    assert type(backbone) is VicreglBackbone
    assert backbone.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert not info["missing_keys"] and not info["unexpected_keys"] and "UNEXPECTED" not in report, info
    stem = model.config.embedding_size if kind == "resnet" else model.config.hidden_sizes[0]
    assert backbone.channels == [stem, 16, 32, 64, 128]
    with torch.no_grad():
        outputs = backbone.eval()(x, output_hidden_states=True)
    for got, expected, stride, channels in zip(
        outputs.feature_maps, hidden_states, (4, 4, 8, 16, 32), backbone.channels, strict=True
    ):
        assert got.shape == (2, channels, 64 // stride, 96 // stride)
        assert_close(got, expected, atol=0, rtol=0)  # raw stage outputs: no norm added
    assert outputs.attentions is None and len(outputs.hidden_states) == 5
    # default: the last stage; by name; the convnext final norm is not built (its weights are expected)
    default = VicreglBackbone.from_pretrained(tmp_path).eval()
    assert default.out_features == ["stage4"] and default.channels == [128]
    assert not any(n.startswith("vicregl.layernorm") for n, _ in default.named_parameters())
    picked = VicreglBackbone.from_pretrained(tmp_path, out_features=["stage2", "stage3"]).eval()
    assert picked.out_indices == [2, 3]
    with torch.no_grad():
        assert_close(picked(x).feature_maps[1], hidden_states[3], atol=0, rtol=0)


@pytest.mark.parametrize("kind", CONVNETS)
def test_vicregl_backbone_loads_quietly_from_a_pretraining_folder(kind, tmp_path):
    torch.manual_seed(0)
    pretraining = VicreglForPreTraining(CONVNETS[kind]()).eval()
    pretraining.save_pretrained(tmp_path)
    backbone, info, report = load_quietly(AutoBackbone, tmp_path, out_indices=[1, 2, 3, 4])
    assert type(backbone) is VicreglBackbone
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert "UNEXPECTED" not in report and "MISSING" not in report, report
    x = pixels((64, 64))
    with torch.no_grad():
        expected = pretraining.vicregl(x, output_hidden_states=True).hidden_states
        maps = backbone.eval()(x).feature_maps
    for got, want in zip(maps, expected[1:], strict=True):
        assert_close(got, want, atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------ configs
ALL_CONFIGS = {**{name: spec[0] for name, spec in VITS.items()}, **CONVNETS}


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_backbone_fields_save_load_and_validation(name, tmp_path):
    make_config = ALL_CONFIGS[name]
    config = make_config(out_indices=[-1])
    assert config.out_features == [config.stage_names[-1]]
    config = make_config(out_indices=(1, 3))
    assert config.out_features == ["stage1", "stage3"] and config.out_indices == [1, 3]
    config.save_pretrained(tmp_path)
    for reloaded in (type(config).from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path)):
        assert reloaded.out_indices == [1, 3] and reloaded.out_features == ["stage1", "stage3"]
        assert reloaded.stage_names == config.stage_names
        drop_path = lambda c: {k: v for k, v in c.to_dict().items() if k != "_name_or_path"}  # noqa: E731
        assert drop_path(reloaded) == drop_path(config)
    # a config.json written before these fields existed loads with the default (last stage)
    legacy = {k: v for k, v in config.to_dict().items() if k not in ("out_features", "out_indices", "stage_names")}
    assert type(config).from_dict(legacy).out_features == [config.stage_names[-1]]
    for bad in ({"out_indices": [9]}, {"out_features": ["stage9"]}, {"out_indices": [3, 1]},
                {"out_features": ["stage1"], "out_indices": [2]}):  # fmt: skip
        with pytest.raises(ValueError, match="out_"):
            make_config(**bad)
    # stage names follow an architecture edited after construction (validate / save_pretrained)
    config = make_config(out_indices=[1])
    if name in CONVNETS:
        config.depths, config.hidden_sizes = [1] * 5, [16, 32, 64, 128, 256]
    else:
        config.num_hidden_layers = 5
    config.validate()
    assert config.stage_names[-1] == "stage5"


def test_vicregl_config_reads_transformers_backbone_fields():
    import transformers

    theirs = transformers.ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], out_indices=[2, 4])
    ours = VicreglConfig.from_dict(theirs.to_dict())
    assert ours.backbone_type == "convnext" and ours.out_features == ["stage2", "stage4"]
    assert ours.num_stages == 4


# ------------------------------------------------------------------------------------------------ UperNet
UPERNET_CASES = {
    "capi": (VITS["capi"][0](out_indices=[1, 2, 3, 4], backbone_multiscale=True), 56),
    "ijepa": (VITS["ijepa"][0](out_indices=[1, 2, 3, 4], backbone_multiscale=True), 56),
    "cae": (VITS["cae"][0](out_indices=[1, 2, 3, 4], backbone_multiscale=True, backbone_apply_layernorm=False), 64),
    "convnext": (VicreglConfig.tiny(out_indices=[1, 2, 3, 4]), 64),
    # without the zero-initialised last BN of each block the residual branches get gradients from the first step
    "resnet": (VicreglConfig.tiny_resnet(out_indices=[1, 2, 3, 4], zero_init_residual=False), 64),
}


@pytest.mark.parametrize("name", UPERNET_CASES)
def test_upernet_builds_our_backbone_and_trains_a_step(name, tmp_path):
    backbone_config, size = UPERNET_CASES[name]
    channels = backbone_config.hidden_sizes if isinstance(backbone_config, VicreglConfig) else [64] * 4
    config = UperNetConfig(
        backbone_config=backbone_config, num_labels=3, hidden_size=32, auxiliary_in_channels=channels[2],
        auxiliary_channels=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = UperNetForSemanticSegmentation(config).train()
    assert type(model.backbone).__name__.lower().startswith(name if name in VITS else "vicregl")
    assert model.backbone.channels == channels
    x = pixels((size, size))
    labels = torch.randint(0, 3, (2, size, size), generator=torch.Generator().manual_seed(1))
    outputs = model(pixel_values=x, labels=labels)
    assert outputs.logits.shape == (2, 3, size, size) and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    grads = {n: p.grad for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert not [n for n, g in grads.items() if not g.abs().sum() > 0]
    stem_weight = next(model.backbone.get_input_embeddings().parameters())
    before = stem_weight.detach().clone()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(before, stem_weight)
    # the segmentation model round-trips (its config nests ours, resolved through AutoConfig)
    model.eval().save_pretrained(tmp_path)
    reloaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert type(reloaded.backbone) is type(model.backbone)
    with torch.no_grad():
        assert_close(reloaded(x).logits, model(x).logits, atol=1e-6, rtol=1e-6)
