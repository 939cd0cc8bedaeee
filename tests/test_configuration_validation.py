"""Config-time validation of CapiConfig / IJepaConfig: a value the model cannot use fails in the constructor (and in
`from_pretrained` / `save_pretrained`) with a ValueError naming the field, not later in a forward pass."""

import json

import pytest
from transformers import AutoConfig

from hf_mim import CapiConfig, IJepaConfig

CAPI_PRESETS = ["vitl14", "small", "tiny"]
IJEPA_PRESETS = ["vith14", "vith16_448", "vitg16", "small", "tiny"]

# (overrides on the tiny preset, field the message must name)
CAPI_BAD = [
    ({"num_register_tokens": 6}, "num_register_tokens"),  # "edge" needs a multiple of 4
    ({"num_register_tokens": 3, "register_coordinates": "edge"}, "num_register_tokens"),
    ({"num_register_tokens": -4}, "num_register_tokens"),
    ({"hidden_size": 66}, "hidden_size"),  # not divisible by 4 heads
    ({"hidden_size": 72, "num_attention_heads": 4}, "hidden_size"),  # head dim 18, not divisible by 4 (RoPE)
    ({"num_attention_heads": 0}, "num_attention_heads"),
    ({"decoder_hidden_size": 66}, "decoder_hidden_size"),
    ({"decoder_hidden_size": 40, "decoder_num_attention_heads": 4}, "decoder_hidden_size"),  # head dim 10
    ({"register_coordinates": "corner"}, "register_coordinates"),
    ({"drop_path_mode": "fast"}, "drop_path_mode"),
    ({"classifier_pooling": "cls"}, "classifier_pooling"),
    ({"mask_ratio": 1.0}, "mask_ratio"),
    ({"mask_ratio": 0.0}, "mask_ratio"),
    ({"prediction_subsampling": 0.0}, "prediction_subsampling"),
    ({"drop_path_rate": 1.0}, "drop_path_rate"),
    ({"mask_min_aspect": 0.0}, "mask_min_aspect"),
    ({"target_temp": 0.0}, "target_temp"),
    ({"patch_size": 0}, "patch_size"),
    ({"num_channels": 0}, "num_channels"),
    ({"num_prototypes": 0}, "num_prototypes"),
]

IJEPA_BAD = [
    ({"hidden_size": 66}, "hidden_size"),  # not divisible by 4 heads
    ({"hidden_size": 6, "num_attention_heads": 2}, "hidden_size"),  # not divisible by 4 (2-D sin-cos)
    ({"num_attention_heads": 0}, "num_attention_heads"),
    ({"predictor_hidden_size": 34}, "predictor_hidden_size"),
    ({"predictor_hidden_size": 6, "predictor_num_attention_heads": 2}, "predictor_hidden_size"),
    ({"predictor_num_attention_heads": 3}, "predictor_hidden_size"),
    ({"predictor_intermediate_size": 0}, "predictor_intermediate_size"),
    ({"classifier_pooling": "cls"}, "classifier_pooling"),
    ({"loss_type": "l1"}, "loss_type"),
    ({"mask_sampler": "random"}, "mask_sampler"),
    ({"standalone_encoder": "student"}, "standalone_encoder"),
    ({"target_block_scale": (0.3, 0.2)}, "target_block_scale"),
    ({"context_block_scale": (0.85, 1.5)}, "context_block_scale"),
    ({"target_aspect_ratio": (0.0, 1.5)}, "target_aspect_ratio"),
    ({"target_block_scale": (0.1, 0.2, 0.3)}, "target_block_scale"),
    ({"num_target_blocks": 0}, "num_target_blocks"),
    ({"min_keep": -1}, "min_keep"),
    ({"image_size": 10}, "image_size"),  # smaller than one 14-px patch
    ({"drop_path_rate": 1.0}, "drop_path_rate"),
    ({"classifier_dropout": -0.1}, "classifier_dropout"),
]


@pytest.mark.parametrize("preset", CAPI_PRESETS)
def test_capi_presets_are_valid(preset):
    config = getattr(CapiConfig, preset)()
    config.validate()
    CapiConfig()


@pytest.mark.parametrize("preset", IJEPA_PRESETS)
def test_ijepa_presets_are_valid(preset):
    config = getattr(IJepaConfig, preset)()
    config.validate()
    IJepaConfig()


@pytest.mark.parametrize(("overrides", "field"), CAPI_BAD, ids=[str(o) for o, _ in CAPI_BAD])
def test_capi_bad_value_fails_at_config_time(overrides, field):
    with pytest.raises(ValueError, match=field):
        CapiConfig.tiny(**overrides)


@pytest.mark.parametrize(("overrides", "field"), IJEPA_BAD, ids=[str(o) for o, _ in IJEPA_BAD])
def test_ijepa_bad_value_fails_at_config_time(overrides, field):
    with pytest.raises(ValueError, match=field):
        IJepaConfig.tiny(**overrides)


def test_capi_edge_registers_message_names_value_and_alternative():
    with pytest.raises(ValueError, match=r"num_register_tokens=6.*register_coordinates='edge'.*multiple of 4"):
        CapiConfig(num_register_tokens=6)
    # the same count is fine where no edge placement is needed
    assert CapiConfig(num_register_tokens=6, register_coordinates="zeros").num_register_tokens == 6
    assert CapiConfig(num_register_tokens=0).num_register_tokens == 0


def test_capi_head_dim_message_names_fields():
    with pytest.raises(ValueError, match=r"hidden_size=72 / num_attention_heads=4 .*head dim of 18.*divisible by 4"):
        CapiConfig.tiny(hidden_size=72)
    with pytest.raises(ValueError, match=r"decoder_hidden_size=66 must be divisible by decoder_num_attention_heads=4"):
        CapiConfig.tiny(decoder_hidden_size=66)


@pytest.mark.parametrize(
    ("config_class", "overrides"),
    [
        (CapiConfig, {"num_register_tokens": 8, "register_coordinates": "zeros", "classifier_pooling": "global",
                      "num_channels": 1, "mask_ratio": 0.5, "decoder_hidden_size": 48}),
        (IJepaConfig, {"num_channels": 1, "loss_type": "l2", "mask_sampler": "original",
                       "target_block_scale": (0.1, 0.25), "classifier_pooling": "mean_last4", "num_labels": 5}),
    ],
    ids=["capi", "ijepa"],
)  # fmt: skip
def test_save_load_round_trip_keeps_fields(tmp_path, config_class, overrides):
    config = config_class.tiny(**overrides)
    config.save_pretrained(tmp_path)
    expected = {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
    for reloaded in (config_class.from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path)):
        assert type(reloaded) is config_class
        for name, value in overrides.items():
            assert getattr(reloaded, name) == value, name
        assert {k: v for k, v in reloaded.to_dict().items() if k != "_name_or_path"} == expected
    assert config_class.from_dict(config.to_dict()).to_dict() == config.to_dict()


@pytest.mark.parametrize(
    ("config_class", "field", "bad"),
    [(CapiConfig, "num_register_tokens", 5), (IJepaConfig, "loss_type", "l1")],
    ids=["capi", "ijepa"],
)
def test_invalid_saved_config_fails_on_load_and_edited_config_on_save(tmp_path, config_class, field, bad):
    config = config_class.tiny()
    config.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data[field] = bad
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=field):
        config_class.from_pretrained(tmp_path)
    setattr(config, field, bad)  # edited after construction: save_pretrained's validate() catches it
    with pytest.raises(ValueError, match=field):
        config.save_pretrained(tmp_path / "edited")
