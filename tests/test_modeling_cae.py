"""CAE v1 / v2 models: transformers-style common tests, pooling definitions, the three classification heads, the
pretraining objective against independent transcriptions of the original's losses (v1 and v2 engines)."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_mim import CaeConfig, CaeForImageClassification, CaeForPreTraining, CaeImageProcessor, CaeModel
from hf_mim.models.cae import cae_position_table

from .image_processor_test_mixin import ImageProcessorTesterMixin
from .model_test_mixin import ModelTesterMixin, assert_close


class CaeCommon(ModelTesterMixin):
    base_model_class = CaeModel
    classification_class = CaeForImageClassification
    pretraining_class = CaeForPreTraining
    image_size = (64, 64)
    non_square_size = (80, 48)
    version = 1

    def get_config(self, **overrides):
        return CaeConfig.tiny(cae_version=self.version, **overrides)

    def model_inputs(self, model_class, pixel_values, seed=0) -> dict:
        inputs = super().model_inputs(model_class, pixel_values, seed)
        if model_class is self.pretraining_class:
            generator = torch.Generator().manual_seed(seed + 1)
            batch, patches = inputs["bool_masked_pos"].shape
            config = self.get_config()
            if self.version == 1:
                inputs["labels"] = torch.randint(0, config.vocab_size, (batch, patches), generator=generator)
            else:
                inputs["target_features"] = torch.randn(
                    batch, 1 + patches, config.target_hidden_size, generator=generator
                )
        return inputs


class TestCaeV1Common(CaeCommon):
    version = 1
    pretraining_batch_fields = ("latent_predictions", "latent_targets", "pooled_features")


class TestCaeV2Common(CaeCommon):
    version = 2
    pretraining_batch_fields = ("latent_predictions", "logits", "pooled_features")


class TestCaeImageProcessor(ImageProcessorTesterMixin):
    processor_class = CaeImageProcessor
    config_class = CaeConfig  # the package also exports the tokenizer's config


def tiny(**overrides):
    return CaeConfig.tiny(**overrides)


def test_position_table_is_row_first_with_zero_cls():
    table = cae_position_table(8, 3)[0]
    assert table.shape == (10, 8) and torch.equal(table[0], torch.zeros(8))
    # token m = row * 3 + col: channels 0-1 (sin, cos of the row; omega 1 and 1/100 for 2 frequencies) change with the
    # row only, channels 4-5 with the column only
    rows = torch.tensor([m // 3 for m in range(9)], dtype=torch.float64)
    cols = torch.tensor([m % 3 for m in range(9)], dtype=torch.float64)
    omega = 1.0 / 10000 ** (torch.arange(2, dtype=torch.float64) / 2)
    expected = torch.cat([torch.sin(rows[:, None] * omega), torch.cos(rows[:, None] * omega),
                          torch.sin(cols[:, None] * omega), torch.cos(cols[:, None] * omega)], 1)  # fmt: skip
    assert_close(table[1:], expected.float(), atol=1e-6, rtol=0)


def test_pooling_definitions():
    torch.manual_seed(0)
    model = CaeModel(tiny()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        raw = out.hidden_states[-1]
        assert_close(out.last_hidden_state, model.layernorm(raw))
        assert_close(out.pooler_output, model.layernorm(raw)[:, 0])
        model.config.pooling = "mean"
        assert_close(model(x).pooler_output, model.layernorm(raw[:, 1:].mean(1)))
    assert out.feature_map.shape == (2, 4, 4, 64)


def test_masked_encoder_keeps_cls_and_visible_patches():
    torch.manual_seed(0)
    model = CaeModel(tiny()).eval()
    x = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 5, 6, 15]] = True
    mask[1, [1, 2, 3, 4]] = True
    with torch.no_grad():
        out = model(x, bool_masked_pos=mask)
    assert out.last_hidden_state.shape == (2, 13, 64) and out.feature_map is None
    # only the visible tokens enter the encoder: equal to running it on an image whose masked patches changed
    x2 = x.clone()
    x2[0, :, :16, :16] = 100.0  # patch 0 of image 0 is masked
    with torch.no_grad():
        assert_close(model(x2, bool_masked_pos=mask).last_hidden_state, out.last_hidden_state)
    with pytest.raises(ValueError, match="same number of masked patches"):
        model(x, bool_masked_pos=torch.tensor([[True] + [False] * 15, [True, True] + [False] * 14]))


@pytest.mark.parametrize("kind", ["finetune", "linear", "attentive"])
def test_classification_heads(kind):
    torch.manual_seed(0)
    model = CaeForImageClassification(tiny(classifier_type=kind, num_labels=3)).train()
    x, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 1])
    out = model(x, labels=labels)
    assert out.logits.shape == (4, 3)
    with torch.no_grad():
        hidden = model.cae.encode(x)[0]
        normed = model.cae.layernorm(hidden)
        if kind == "finetune":
            features = model.cae.layernorm(hidden[:, 1:].mean(1))
        elif kind == "linear":  # BatchNorm without affine, batch statistics in training
            cls = normed[:, 0]
            features = (cls - cls.mean(0)) / torch.sqrt(cls.var(0, unbiased=False) + 1e-6)
        else:  # one cross-attention of the zero query, no residual, no MLP
            head = model.pooler
            attention = head.attention.cross_attention
            q = attention.q_proj(head.attention.norm1_q(head.query_token.expand(4, -1, -1)))
            k = attention.k_proj(head.attention.norm1_k(normed))
            v = attention.v_proj(head.attention.norm1_v(normed))
            split = lambda t: t.reshape(4, -1, 4, 16).transpose(1, 2)  # noqa: E731
            weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / 4.0, dim=-1)
            attended = attention.o_proj((weights @ split(v)).transpose(1, 2).reshape(4, 1, 64))[:, 0]
            features = (attended - attended.mean(0)) / torch.sqrt(attended.var(0, unbiased=False) + 1e-6)
    assert_close(out.logits, model.classifier(features), atol=1e-5, rtol=1e-4)
    if kind == "linear":
        assert model.pooler.weight is None  # affine=False
    out.loss.backward()
    assert model.classifier.weight.grad.abs().sum() > 0


def transcribed_v1(model: CaeForPreTraining, x, mask, labels):
    """Reference §3.3, written out directly from the model's own submodules."""
    cae, config = model.cae, model.config
    batch = x.shape[0]
    patches = cae.embeddings.patch_embeddings.projection(x).flatten(2).transpose(1, 2)
    patches = patches + cae.embeddings.position_embeddings[:, 1:]
    cls = cae.embeddings.cls_token + cae.embeddings.position_embeddings[:, :1]

    def encoder(keep):
        tokens = torch.cat([cls.expand(batch, -1, -1), patches[keep].reshape(batch, -1, patches.shape[-1])], 1)
        for layer in cae.layers:
            tokens, _ = layer(tokens)
        return cae.layernorm(tokens)

    latents = encoder(~mask)
    positions = model.regressor_position_embeddings[:, 1:].expand(batch, -1, -1)
    p_m = positions[mask].reshape(batch, -1, positions.shape[-1])
    p_v = positions[~mask].reshape(batch, -1, positions.shape[-1])
    queries = model.mask_token.expand(batch, p_m.shape[1], -1)
    visible = latents[:, 1:]
    for block in model.regressor:
        kv, p_kv = torch.cat([visible, queries], 1), torch.cat([p_v, p_m], 1)
        attended, _ = block.attention(queries, kv, p_m, p_kv)
        h = block.norm2(queries + block.layer_scale1(attended))
        queries = h + block.layer_scale2(block.mlp(h))
    predictions = model.regressor_layernorm(queries)
    decoded = predictions + p_m
    for layer in model.decoder.layers:
        decoded, _ = layer(decoded)
    logits = model.decoder.head(model.decoder.layernorm(decoded)).reshape(-1, config.vocab_size)
    with torch.no_grad():
        targets = encoder(mask)[:, 1:]
    ce = F.cross_entropy(logits, labels[mask])
    mse = F.mse_loss(predictions, targets)
    return logits, predictions, targets, ce, ce + 2 * mse


def test_v1_objective_matches_transcription():
    torch.manual_seed(0)
    config = tiny(decoder_hidden_size=64)  # no projection between encoder and regressor
    model = CaeForPreTraining(config).eval()
    x = torch.randn(3, 3, 64, 64)
    mask = model.mask_generator(3, (4, 4), torch.Generator().manual_seed(0)).bool_masked_pos
    labels = torch.randint(0, config.vocab_size, (3, 16))
    out = model(x, mask, labels=labels)
    logits, predictions, targets, ce, loss = transcribed_v1(model, x, mask, labels)
    assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)
    assert_close(out.latent_predictions, predictions, atol=1e-5, rtol=1e-5)
    assert_close(out.latent_targets, targets, atol=1e-5, rtol=1e-5)
    assert_close(out.prediction_loss, ce, atol=1e-5, rtol=1e-5)
    assert_close(out.loss, loss, atol=1e-5, rtol=1e-5)
    # the alignment target carries no gradient, the encoder gets gradients through the visible branch
    model.train()
    out = model(x, mask, labels=labels)
    assert not out.latent_targets.requires_grad
    out.loss.backward()
    assert model.cae.layers[0].mlp.fc1.weight.grad.abs().sum() > 0
    assert model.cae.embeddings.position_embeddings.grad is None


def test_v2_objective_matches_transcription():
    torch.manual_seed(0)
    config = tiny(cae_version=2)  # 64 -> 32: encoder_to_regressor + norm
    model = CaeForPreTraining(config).eval()
    assert model.encoder_to_regressor is not None and model.regressor_layernorm is None
    assert len(model.decoder.layers) == 0
    x = torch.randn(2, 3, 64, 64)
    mask = model.mask_generator(2, (4, 4), torch.Generator().manual_seed(1)).bool_masked_pos
    teacher = torch.randn(2, 17, config.target_hidden_size)
    out = model(x, mask, target_features=teacher)
    order = [
        torch.cat([torch.tensor([0]), 1 + torch.nonzero(~m).flatten(), 1 + torch.nonzero(m).flatten()]) for m in mask
    ]
    reordered = torch.stack([teacher[b, order[b]] for b in range(2)])
    expected = (1 - F.cosine_similarity(out.logits, F.normalize(reordered, dim=-1), dim=-1)).mean()
    assert_close(out.loss, expected, atol=1e-6, rtol=1e-6)
    assert_close(out.logits.norm(dim=-1), torch.ones(2, 17), atol=1e-5, rtol=0)
    # same as torch's cosine_embedding_loss, the original's call
    reference = F.cosine_embedding_loss(out.logits.reshape(-1, 24), F.normalize(reordered, dim=-1).reshape(-1, 24),
                                        torch.ones(34))  # fmt: skip
    assert_close(out.loss, reference, atol=1e-6, rtol=1e-6)


def test_forward_without_targets_has_no_loss_and_attached_target_model_is_not_a_submodule():
    torch.manual_seed(0)
    model = CaeForPreTraining(tiny()).eval()
    out = model(torch.randn(2, 3, 64, 64))
    assert out.loss is None and out.logits.shape == (12, 64)

    class Tokenizer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

        def get_codebook_indices(self, pixels):
            return (pixels.mean(1)[:, ::8, ::8].flatten(1) * 1000).long().abs() % 64

    before = len(list(model.parameters()))
    model.set_target_model(Tokenizer())
    assert len(list(model.parameters())) == before and "_target_model" not in model.state_dict()
    assert "_target_model" not in dict(model.named_modules())
    out = model(torch.randn(2, 3, 64, 64), target_pixel_values=torch.rand(2, 3, 32, 32))
    assert out.loss is not None and torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="needs a target model"):
        CaeForPreTraining(tiny())(torch.randn(2, 3, 64, 64), target_pixel_values=torch.rand(2, 3, 32, 32))


@pytest.mark.parametrize("version", [1, 2])
def test_init_is_the_original_pretraining_models(version):
    """The original's init, by its distributions (Atten4Vis CAE models/modeling_cae.py and modeling_cae_helper.py):
    q / k / v as slices of one xavier-uniform (D, 3D) `qkv` Linear, bound sqrt(6 / 4D) (separate Linears would have
    sqrt(6 / 2D)); the regressor's cross-attention q / k / v as its own three Linears; patch embedding, cls and mask
    tokens trunc_normal(std 0.02) cut at +-1 std (a=-std, b=std), whose std is 0.02 x 0.5376."""
    torch.manual_seed(0)
    config = CaeConfig.tiny(cae_version=version, hidden_size=128, num_attention_heads=4, intermediate_size=256)
    model = CaeForPreTraining(config)
    width = config.hidden_size
    uniform_std = math.sqrt(6.0 / (4 * width)) / math.sqrt(3.0)
    for block in model.cae.layers:
        for projection in (block.attention.q_proj, block.attention.k_proj, block.attention.v_proj):
            weight = projection.weight
            assert weight.abs().max() <= math.sqrt(6.0 / (4 * width))
            assert abs(weight.std().item() / uniform_std - 1) < 0.03
    regressor = model.regressor[0].attention.cross_attention.q_proj.weight
    separate_std = math.sqrt(6.0 / (2 * regressor.shape[0])) / math.sqrt(3.0)
    assert abs(regressor.std().item() / separate_std - 1) < 0.05
    truncated_std = 0.02 * 0.5376  # N(0, 1) restricted to [-1, 1] has std 0.5376
    patch = model.cae.embeddings.patch_embeddings.projection.weight
    assert patch.abs().max() <= 0.02 and abs(patch.std().item() / truncated_std - 1) < 0.03
    for token in (model.cae.embeddings.cls_token, model.mask_token):
        assert token.abs().max() <= 0.02
