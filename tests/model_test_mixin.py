"""transformers-style common tests, reused by every hf_mim model.

A test class sets `base_model_class`, `classification_class`, `pretraining_class` (whose `mask_generator(batch,
grid, generator)` draws its masks) and `pretraining_batch_fields` (output fields whose first dimension is the batch),
and implements `get_config(**overrides)` (a tiny config with drop path off) and optionally `image_size` /
`non_square_size`. Every test compares real numbers.
"""

import copy
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification, AutoModelForPreTraining
from transformers.utils import logging as hf_logging


def assert_close(actual, expected, atol=1e-5, rtol=1e-5, msg=""):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{msg}\n{m}")


_INT_SENTINEL = -7


def initialise_from_nan(model_class, config):
    """Build on meta, fill every parameter and buffer with NaN, run the model's init: nothing may stay NaN."""
    with torch.device("meta"):
        model = model_class(config)
    model.to_empty(device="cpu")
    for tensor in list(model.parameters()) + list(model.buffers()):
        tensor.data.fill_(float("nan") if tensor.is_floating_point() else _INT_SENTINEL)  # BN's num_batches_tracked
    for module in model.modules():
        module._is_hf_initialized = False
    model.init_weights()
    bad = [
        n
        for n, t in [*model.named_parameters(), *model.named_buffers()]
        if not torch.isfinite(t).all() or (not t.is_floating_point() and (t == _INT_SENTINEL).any())
    ]
    assert not bad, f"{model_class.__name__}: left uninitialised: {bad}"
    return model


def unregistered_tensors(model: torch.nn.Module) -> list[str]:
    """Tensors held as plain attributes of a module (or of a helper object a module holds): they are invisible to
    `.to()`, `state_dict`, meta-device construction and `_init_weights`."""
    found = []
    for name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, torch.Tensor):
                found.append(f"{name}.{attr}")
            elif not isinstance(value, torch.nn.Module) and hasattr(value, "__dict__") and not isinstance(value, type):
                found += [f"{name}.{attr}.{k}" for k, v in vars(value).items() if isinstance(v, torch.Tensor)]
    return found


class ModelTesterMixin:
    base_model_class = None
    classification_class = None
    pretraining_class = None
    pretraining_batch_fields: tuple[str, ...] = ()
    extra_model_classes = ()
    image_size = (56, 56)
    non_square_size = (70, 42)
    batch_size = 3
    num_labels = 4
    # Convolutional models (VICRegL) have no attention and no patch grid: the attention / patch-size tests skip, and
    # their test classes check hidden states and input sizes their own way.
    uses_attention = True
    last_hidden_state_ndim = 3

    def skip_without_attention(self):
        if not self.uses_attention:
            pytest.skip("convolutional model: no attention implementations or patch grid")

    def get_config(self, **overrides):
        raise NotImplementedError

    def pixel_values(self, size=None, batch_size=None, seed=0):
        generator = torch.Generator().manual_seed(seed)
        height, width = size or self.image_size
        channels = self.get_config().num_channels
        return torch.randn(batch_size or self.batch_size, channels, height, width, generator=generator)

    def all_model_classes(self):
        classes = (self.base_model_class, self.classification_class, self.pretraining_class, *self.extra_model_classes)
        return [c for c in classes if c]

    def model_inputs(self, model_class, pixel_values, seed=0) -> dict:
        """Inputs for one forward; the pretraining model also gets masks drawn with a seeded generator."""
        inputs = {"pixel_values": pixel_values}
        if model_class is self.pretraining_class:
            patch = self.get_config().patch_size
            grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
            masks = self.build(model_class).mask_generator(
                pixel_values.shape[0], grid, torch.Generator().manual_seed(seed)
            )
            inputs.update(vars(masks))
        return inputs

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
        assert hidden.shape[0] == self.batch_size and hidden.ndim == self.last_hidden_state_ndim
        assert outputs.pooler_output is not None and outputs.pooler_output.shape[0] == self.batch_size
        assert torch.isfinite(hidden).all() and torch.isfinite(outputs.pooler_output).all()

    def test_save_load_roundtrip(self, tmp_path):
        for model_class in self.all_model_classes():
            model = self.build(model_class)
            inputs = self.model_inputs(model_class, self.pixel_values())
            with torch.no_grad():
                before = self.main_output(model, model(**inputs))
            model.save_pretrained(tmp_path / model_class.__name__)
            weights = load_file(tmp_path / model_class.__name__ / "model.safetensors")
            assert set(weights) == set(model.state_dict()), f"{model_class.__name__}: safetensors keys differ"
            reloaded = model_class.from_pretrained(tmp_path / model_class.__name__).eval()
            with torch.no_grad():
                after = self.main_output(reloaded, reloaded(**inputs))
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
        self.skip_without_attention()
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
        self.skip_without_attention()
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
        weights = [p for n, p in a.named_parameters() if p.ndim >= 2 and "weight" in n]
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

    def test_any_input_size_and_too_small_rejected(self):
        """Sides that are not a multiple of the patch size work as in transformers' DINOv2 (the remainder is dropped:
        same output as the input cropped to the last full patch); an input smaller than one patch is rejected."""
        self.skip_without_attention()
        model = self.build(self.base_model_class)
        patch = model.config.patch_size
        odd = self.pixel_values((patch * 4 + patch // 2, patch * 3 + 1))
        with torch.no_grad():
            out = model(odd)
            cropped = model(odd[..., : patch * 4, : patch * 3])
        assert out.last_hidden_state.shape == cropped.last_hidden_state.shape
        assert_close(out.last_hidden_state, cropped.last_hidden_state, atol=0, rtol=0)
        with pytest.raises(ValueError, match="smaller than the patch size"):
            model(self.pixel_values((patch - 1, patch * 2)))

    def test_deepcopy_and_train_eval_consistency(self):
        model = self.build(self.base_model_class)
        clone = copy.deepcopy(model)
        with torch.no_grad():
            assert_close(clone(self.pixel_values()).last_hidden_state, model(self.pixel_values()).last_hidden_state)

    # ------------------------------------------------ output flags, keyword arguments, pretraining outputs
    @staticmethod
    def recorded(outputs):
        return getattr(outputs, "hidden_states", None), getattr(outputs, "attentions", None)

    def test_output_flags_follow_config(self):
        """As in transformers: `config.output_hidden_states` / `output_attentions` / `return_dict` apply when the
        argument is not passed; an explicit argument wins."""
        self.skip_without_attention()
        pixel_values = self.pixel_values()
        for model_class in self.all_model_classes():
            model = self.build(
                model_class, attn_implementation="eager", output_hidden_states=True, output_attentions=True
            )
            inputs = self.model_inputs(model_class, pixel_values)
            with torch.no_grad():
                hidden, attentions = self.recorded(model(**inputs))
                assert hidden is not None and len(hidden) == model.config.num_hidden_layers + 1, model_class
                assert attentions is not None and len(attentions) == model.config.num_hidden_layers, model_class
                assert all(a.shape[0] == h.shape[0] for a, h in zip(attentions, hidden))
                hidden, attentions = self.recorded(
                    model(**inputs, output_hidden_states=False, output_attentions=False)
                )
                assert hidden is None and attentions is None, model_class
            model.config.return_dict = False
            with torch.no_grad():
                assert isinstance(model(**inputs), tuple), model_class

    def test_hidden_states_by_argument_every_class(self):
        self.skip_without_attention()
        pixel_values = self.pixel_values()
        for model_class in self.all_model_classes():
            model = self.build(model_class, attn_implementation="eager")
            inputs = self.model_inputs(model_class, pixel_values)
            with torch.no_grad():
                assert self.recorded(model(**inputs)) == (None, None), model_class
                hidden, attentions = self.recorded(model(**inputs, output_hidden_states=True, output_attentions=True))
            assert len(hidden) == model.config.num_hidden_layers + 1 and len(attentions) == len(hidden) - 1
            for weights in attentions:
                assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)), atol=1e-5, rtol=0)

    def test_unknown_keyword_arguments_are_an_error(self):
        pixel_values = self.pixel_values()
        for model_class in self.all_model_classes():
            model = self.build(model_class)
            with pytest.raises(TypeError, match="not_an_argument"):
                model(**self.model_inputs(model_class, pixel_values), not_an_argument=1)

    def test_pretraining_eager_matches_sdpa(self):
        self.skip_without_attention()
        if self.pretraining_class is None:
            pytest.skip("no pretraining class")
        inputs = self.model_inputs(self.pretraining_class, self.pixel_values())
        results = {}
        for implementation in ("eager", "sdpa"):
            model = self.build(self.pretraining_class, attn_implementation=implementation)
            with torch.no_grad():
                results[implementation] = model(**inputs)
        eager, sdpa = results["eager"], results["sdpa"]
        assert_close(sdpa.loss, eager.loss, atol=1e-5, rtol=1e-5, msg="loss")
        for field in self.pretraining_batch_fields:
            assert_close(getattr(sdpa, field), getattr(eager, field), atol=1e-5, rtol=1e-4, msg=field)

    def test_pretraining_batch_first_splits(self):
        """Every mask and every batch-first output splits along dim 0: the first k images with their masks give the
        first k rows of the full batch (what DataParallel and gradient-accumulation splits rely on)."""
        if self.pretraining_class is None:
            pytest.skip("no pretraining class")
        model = self.build(self.pretraining_class)
        inputs = self.model_inputs(self.pretraining_class, self.pixel_values())
        for name, tensor in inputs.items():
            assert tensor.shape[0] == self.batch_size, f"{name} is not batch-first: {tuple(tensor.shape)}"
        with torch.no_grad():
            full = model(**inputs)
            for start, stop in ((0, 1), (1, self.batch_size)):
                part = model(**{k: v[start:stop] for k, v in inputs.items()})
                for field in self.pretraining_batch_fields:
                    expected = getattr(full, field)
                    assert expected.shape[0] == self.batch_size, f"{field} is not batch-first"
                    assert_close(getattr(part, field), expected[start:stop], atol=1e-5, rtol=1e-4, msg=field)

    # ------------------------------------------------ construction on the meta device
    def test_construction_on_meta_device(self):
        for model_class in self.all_model_classes():
            config = self.get_config(num_labels=self.num_labels)
            with torch.device("meta"):
                model = model_class(config)
            tensors = [*model.parameters(), *model.buffers()]
            assert tensors and all(t.device.type == "meta" for t in tensors), model_class.__name__

    def test_every_tensor_is_a_parameter_or_buffer(self):
        for model_class in self.all_model_classes():
            model = self.build(model_class)
            assert not unregistered_tensors(model), f"{model_class.__name__}: {unregistered_tensors(model)}"

    # ------------------------------------------------ quiet loading of pretraining folders
    @staticmethod
    def load_quietly(auto_class, path, **kwargs):
        """from_pretrained with transformers' load report captured; returns (model, loading info, report text)."""
        records = []
        handler = logging.Handler()
        handler.emit = lambda record: records.append(record.getMessage())
        logger = hf_logging.get_logger("transformers.modeling_utils")
        logger.addHandler(handler)
        try:
            model, info = auto_class.from_pretrained(path, output_loading_info=True, **kwargs)
        finally:
            logger.removeHandler(handler)
        return model, info, "\n".join(records)

    def test_backbone_loads_quietly_from_pretraining_folder(self, tmp_path):
        if self.pretraining_class is None:
            pytest.skip("no pretraining class")
        self.build(self.pretraining_class).save_pretrained(tmp_path)
        base, info, report = self.load_quietly(AutoModel, tmp_path)
        assert type(base) is self.base_model_class
        assert not info["unexpected_keys"] and not info["missing_keys"], info
        assert "UNEXPECTED" not in report and "MISSING" not in report, report
        if self.classification_class is not None:
            classifier, info, report = self.load_quietly(AutoModelForImageClassification, tmp_path, num_labels=3)
            assert not info["unexpected_keys"], info
            assert all(k.startswith(("classifier", "pooler")) for k in info["missing_keys"]), info
            assert "UNEXPECTED" not in report
        pretraining, info, _ = self.load_quietly(AutoModelForPreTraining, tmp_path)
        assert type(pretraining) is self.pretraining_class
        assert not info["unexpected_keys"] and not info["missing_keys"], info

    def test_wrong_keys_still_reported(self, tmp_path):
        if self.pretraining_class is None:
            pytest.skip("no pretraining class")
        self.build(self.pretraining_class).save_pretrained(tmp_path)
        weights = load_file(tmp_path / "model.safetensors")
        prefix = self.base_model_class.base_model_prefix
        weights[f"{prefix}.bogus_layer.weight"] = torch.zeros(2)
        weights["bogus_head.weight"] = torch.zeros(2)
        save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
        for auto_class in (AutoModel, AutoModelForPreTraining):
            _, info, report = self.load_quietly(auto_class, tmp_path)
            unexpected = set(info["unexpected_keys"])
            assert {k for k in unexpected if "bogus" in k} == {f"{prefix}.bogus_layer.weight", "bogus_head.weight"}
            assert "UNEXPECTED" in report
