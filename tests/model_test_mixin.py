"""transformers-style common tests, reused by every hf_mim model.

A test class sets `base_model_class`, `classification_class`, and implements `get_config(**overrides)` (a tiny
config with drop path off) and optionally `image_size` / `non_square_size`. Every test compares real numbers.
"""

import copy

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification


def assert_close(actual, expected, atol=1e-5, rtol=1e-5, msg=""):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{msg}\n{m}")


def initialise_from_nan(model_class, config):
    """Build on meta, fill every parameter and buffer with NaN, run the model's init: nothing may stay NaN."""
    with torch.device("meta"):
        model = model_class(config)
    model.to_empty(device="cpu")
    for tensor in list(model.parameters()) + list(model.buffers()):
        tensor.data.fill_(float("nan"))
    for module in model.modules():
        module._is_hf_initialized = False
    model.init_weights()
    bad = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if not torch.isfinite(t).all()]
    assert not bad, f"{model_class.__name__}: left uninitialised: {bad}"
    return model


class ModelTesterMixin:
    base_model_class = None
    classification_class = None
    extra_model_classes = ()
    image_size = (56, 56)
    non_square_size = (70, 42)
    batch_size = 3
    num_labels = 4

    def get_config(self, **overrides):
        raise NotImplementedError

    def pixel_values(self, size=None, batch_size=None, seed=0):
        generator = torch.Generator().manual_seed(seed)
        height, width = size or self.image_size
        channels = self.get_config().num_channels
        return torch.randn(batch_size or self.batch_size, channels, height, width, generator=generator)

    def all_model_classes(self):
        return [c for c in (self.base_model_class, self.classification_class, *self.extra_model_classes) if c]

    def build(self, model_class, **overrides):
        config = self.get_config(num_labels=self.num_labels, **overrides)
        torch.manual_seed(0)
        return model_class(config).eval()

    @staticmethod
    def main_output(model, outputs):
        return outputs.logits if hasattr(outputs, "logits") and outputs.logits is not None else outputs[0]

    # ---------------------------------------------------------------- tests
    def test_output_shapes(self):
        model = self.build(self.base_model_class)
        with torch.no_grad():
            outputs = model(self.pixel_values())
        hidden = outputs.last_hidden_state
        assert hidden.shape[0] == self.batch_size and hidden.ndim == 3
        assert outputs.pooler_output is not None and outputs.pooler_output.shape[0] == self.batch_size
        assert torch.isfinite(hidden).all() and torch.isfinite(outputs.pooler_output).all()

    def test_save_load_roundtrip(self, tmp_path):
        for model_class in self.all_model_classes():
            model = self.build(model_class)
            pixel_values = self.pixel_values()
            with torch.no_grad():
                before = self.main_output(model, model(pixel_values))
            model.save_pretrained(tmp_path / model_class.__name__)
            weights = load_file(tmp_path / model_class.__name__ / "model.safetensors")
            assert set(weights) == set(model.state_dict()), f"{model_class.__name__}: safetensors keys differ"
            reloaded = model_class.from_pretrained(tmp_path / model_class.__name__).eval()
            with torch.no_grad():
                after = self.main_output(reloaded, reloaded(pixel_values))
            assert_close(after, before, atol=0, rtol=0, msg=model_class.__name__)

    def test_auto_classes(self, tmp_path):
        model = self.build(self.classification_class or self.base_model_class)
        model.save_pretrained(tmp_path)
        config = AutoConfig.from_pretrained(tmp_path)
        assert type(config) is type(model.config)
        base = AutoModel.from_pretrained(tmp_path)
        assert type(base) is self.base_model_class
        if self.classification_class is not None:
            classifier = AutoModelForImageClassification.from_pretrained(tmp_path)
            assert type(classifier) is self.classification_class
            for (name, a), b in zip(classifier.state_dict().items(), model.state_dict().values()):
                assert torch.equal(a, b), name

    def test_eager_matches_sdpa(self):
        pixel_values = self.pixel_values()
        results = {}
        for implementation in ("eager", "sdpa"):
            model = self.build(self.base_model_class, attn_implementation=implementation)
            assert model.config._attn_implementation == implementation
            with torch.no_grad():
                out = model(pixel_values)
            results[implementation] = (out.last_hidden_state, out.pooler_output)
        for eager, sdpa in zip(results["eager"], results["sdpa"]):
            assert_close(sdpa, eager, atol=1e-5, rtol=1e-4)

    def test_batch_invariance(self):
        model = self.build(self.base_model_class)
        pixel_values = self.pixel_values()
        with torch.no_grad():
            batched = model(pixel_values)
            for index in range(self.batch_size):
                single = model(pixel_values[index : index + 1])
                assert_close(single.last_hidden_state[0], batched.last_hidden_state[index], atol=1e-5, rtol=1e-4)
                assert_close(single.pooler_output[0], batched.pooler_output[index], atol=1e-5, rtol=1e-4)

    def test_gradient_checkpointing_equivalence(self):
        model_class = self.classification_class or self.base_model_class
        pixel_values = self.pixel_values()
        labels = torch.arange(self.batch_size) % self.num_labels
        results = []
        for checkpointing in (False, True):
            model = self.build(model_class).train()
            if checkpointing:
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
                assert model.is_activation_checkpointing
            out = model(pixel_values, labels=labels)
            out.loss.backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results.append((out.loss.detach(), out.logits.detach(), grads))
        (loss_a, logits_a, grads_a), (loss_b, logits_b, grads_b) = results
        assert_close(loss_b, loss_a, atol=1e-6, rtol=1e-5)
        assert_close(logits_b, logits_a, atol=1e-6, rtol=1e-5)
        assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
        for name in grads_a:
            assert_close(grads_b[name], grads_a[name], atol=1e-6, rtol=1e-4, msg=name)

    def test_hidden_states_and_attentions(self):
        model = self.build(self.base_model_class, attn_implementation="eager")
        config = model.config
        with torch.no_grad():
            out = model(self.pixel_values(), output_hidden_states=True, output_attentions=True)
        assert len(out.hidden_states) == config.num_hidden_layers + 1
        assert len(out.attentions) == config.num_hidden_layers
        tokens = out.last_hidden_state.shape[1]
        for hidden in out.hidden_states:
            assert hidden.shape == (self.batch_size, tokens, config.hidden_size)
        for weights in out.attentions:
            assert weights.shape == (self.batch_size, config.num_attention_heads, tokens, tokens)
            assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)), atol=1e-5, rtol=0)
        # the attention switch still applies: sdpa asked for probabilities falls back to the eager path
        model.set_attn_implementation("sdpa")
        with torch.no_grad():
            out_sdpa = model(self.pixel_values(), output_attentions=True)
        assert_close(out_sdpa.attentions[-1], out.attentions[-1])

    def test_init_leaves_nothing_uninitialised(self):
        for model_class in self.all_model_classes():
            initialise_from_nan(model_class, self.get_config(num_labels=self.num_labels))

    def test_init_is_deterministic_and_distinct(self):
        a = self.build(self.base_model_class)
        b = self.build(self.base_model_class)
        for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(pa, pb), name
        weights = [p for n, p in a.named_parameters() if p.ndim == 2 and "weight" in n]
        assert weights and all(w.std() > 0 for w in weights)

    def test_classification_head_and_loss(self):
        if self.classification_class is None:
            return
        model = self.build(self.classification_class).train()
        labels = torch.arange(self.batch_size) % self.num_labels
        out = model(self.pixel_values(), labels=labels)
        assert out.logits.shape == (self.batch_size, self.num_labels)
        expected = torch.nn.functional.cross_entropy(out.logits, labels)
        assert_close(out.loss, expected, atol=1e-6, rtol=1e-6)
        out.loss.backward()
        head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
        assert head and all(p.grad is not None and p.grad.abs().sum() > 0 for p in head)

    def test_non_square_inputs(self):
        model = self.build(self.base_model_class)
        with torch.no_grad():
            out = model(self.pixel_values(self.non_square_size))
        assert torch.isfinite(out.last_hidden_state).all()
        assert out.pooler_output.shape[0] == self.batch_size

    def test_rejects_bad_input_size(self):
        model = self.build(self.base_model_class)
        patch = model.config.patch_size
        try:
            model(self.pixel_values((patch * 2 + 1, patch * 2)))
        except ValueError as error:
            assert "multiple of the patch size" in str(error)
        else:
            raise AssertionError("an input size that is not a multiple of the patch size must be rejected")

    def test_deepcopy_and_train_eval_consistency(self):
        model = self.build(self.base_model_class)
        clone = copy.deepcopy(model)
        with torch.no_grad():
            assert_close(clone(self.pixel_values()).last_hidden_state, model(self.pixel_values()).last_hidden_state)
