"""`--gradient_checkpointing` for every method's pretraining model (issue 24 item 3).

The Trainer's flag calls `activation_checkpointing_enable()`, which switches on transformers' checkpointing in every
`GradientCheckpointingLayer`: the ViT blocks (CAPI, I-JEPA, CAE encoders and predictors), CAE's regressor blocks and
VICRegL's ConvNeXt / ResNet blocks. Each block is checkpointed with `torch.utils.checkpoint` (non-reentrant), which
restores the RNG state for the replay, so stochastic depth draws the same masks. Only blocks that run with gradients
are checkpointed: EMA teachers (and CAE's target pass) run under `no_grad` and keep running plainly.

Measured here (float32, drop path 0.2 where the model has it, one forward + backward): gradients, loss and buffers
identical to the bit; tensors kept for backward 191 -> 41 (CAPI), 134 -> 24 (I-JEPA), 256 -> 50 (CAE v1),
199 -> 57 (CAE v2), 400 -> 306 (VICRegL ConvNeXt), 542 -> 270 (VICRegL ResNet); in bytes 27 %, 26 %, 28 %, 33 %,
47 % and 64 % of the plain run (1.50 -> 0.41 MB for CAPI's batch of 3).
The trainer-level run (two CAPI steps through `run()`) gives the same weights to the bit; so did I-JEPA, CAE and
VICRegL when measured the same way (114/114, 128/128, 68/68 tensors equal), left out here for time.
"""

import pytest
import torch

from hf_mim import CaeConfig, CapiConfig, IJepaConfig, VicreglConfig

from . import test_modeling_cae, test_modeling_capi, test_modeling_ijepa, test_modeling_vicregl

# method -> (its common-test class, which builds the inputs; its config with stochastic depth on where it has one;
#            the teacher's attribute or None; saved bytes with checkpointing / without, at most)
CASES = {
    "capi": (test_modeling_capi.TestCapiModelCommon, lambda: CapiConfig.tiny(drop_path_rate=0.2), "teacher", 0.4),
    "ijepa": (
        test_modeling_ijepa.TestIJepaModelCommon,
        lambda: IJepaConfig.tiny(drop_path_rate=0.2),
        "target_encoder",
        0.4,
    ),
    "cae_v1": (test_modeling_cae.TestCaeV1Common, lambda: CaeConfig.tiny(drop_path_rate=0.2), None, 0.4),
    "cae_v2": (
        test_modeling_cae.TestCaeV2Common,
        lambda: CaeConfig.tiny(cae_version=2, drop_path_rate=0.2),
        None,
        0.45,
    ),
    "vicregl_convnext": (
        test_modeling_vicregl.TestVicreglConvNextCommon,
        lambda: VicreglConfig.tiny(drop_path_rate=0.2),
        None,
        0.6,
    ),
    "vicregl_resnet": (test_modeling_vicregl.TestVicreglResNetCommon, VicreglConfig.tiny_resnet, None, 0.75),
}


def count_checkpointed(model: torch.nn.Module) -> dict[str, int]:
    """Wrap each checkpointing layer's checkpoint function to count its calls by module name."""
    calls = {}
    for name, module in model.named_modules():
        if getattr(module, "gradient_checkpointing", False):

            def counted(*args, _inner=module._gradient_checkpointing_func, _name=name, **kwargs):
                calls[_name] = calls.get(_name, 0) + 1
                return _inner(*args, **kwargs)

            module._gradient_checkpointing_func = counted
    return calls


def train_step(method: str, checkpointing: bool, seed: int = 1) -> dict:
    test_class, make_config, _, _ = CASES[method]
    tester = test_class()
    torch.manual_seed(0)
    model = tester.pretraining_class(make_config()).train()
    calls = {}
    if checkpointing:
        model.activation_checkpointing_enable()  # what the Trainer's --gradient_checkpointing calls
        assert model.is_activation_checkpointing
        calls = count_checkpointed(model)
    inputs = tester.model_inputs(tester.pretraining_class, tester.pixel_values())
    saved = {"count": 0, "bytes": 0}

    def pack(tensor):
        saved["count"] += 1
        saved["bytes"] += tensor.numel() * tensor.element_size()
        return tensor

    torch.manual_seed(seed)  # stochastic depth draws from the global generator
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(**inputs)
    output.loss.backward()
    return {
        "model": model,
        "loss": output.loss.detach(),
        "grads": {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None},
        "buffers": {name: b.clone() for name, b in model.named_buffers()},
        "saved": saved,
        "calls": calls,
    }


@pytest.mark.parametrize("method", list(CASES))
def test_checkpointing_gives_the_same_gradients_and_keeps_fewer_activations(method):
    _, make_config, teacher, max_bytes_ratio = CASES[method]
    plain, checkpointed = train_step(method, False), train_step(method, True)

    torch.testing.assert_close(checkpointed["loss"], plain["loss"], atol=0, rtol=1e-6)
    assert plain["grads"].keys() == checkpointed["grads"].keys() and plain["grads"]
    for name, grad in plain["grads"].items():  # measured: equal to the bit
        torch.testing.assert_close(checkpointed["grads"][name], grad, atol=1e-9, rtol=1e-6, msg=name)
    for name, buffer in plain["buffers"].items():  # BatchNorm statistics count each batch once (see below)
        assert torch.equal(checkpointed["buffers"][name], buffer), name

    if make_config().drop_path_rate > 0:  # the equality is not trivial: another draw gives other gradients
        other = train_step(method, False, seed=2)
        assert not torch.equal(other["loss"], plain["loss"])

    assert checkpointed["saved"]["count"] < plain["saved"]["count"]
    assert checkpointed["saved"]["bytes"] < max_bytes_ratio * plain["saved"]["bytes"], (checkpointed, plain)

    # Every block that runs with gradients was checkpointed, and no teacher block was.
    from transformers.modeling_layers import GradientCheckpointingLayer

    model, calls = checkpointed["model"], checkpointed["calls"]
    blocks = {name for name, m in model.named_modules() if isinstance(m, GradientCheckpointingLayer)}
    teacher_blocks = {name for name in blocks if teacher and name.startswith(f"{teacher}.")}
    assert set(calls) == blocks - teacher_blocks
    if teacher:
        assert teacher_blocks and not teacher_blocks & set(calls)


def test_resnet_batch_norm_counts_each_batch_once():
    """A checkpointed block replays its forward in backward: plain BatchNorm would fold the batch into its running
    statistics twice (measured with plain BatchNorm2d, one step of two views: `num_batches_tracked` 4 instead of 2,
    running means off by up to 0.51 (82 % of their largest value), variances by 0.50 (31 %)).
    `ReplaySafeBatchNorm2d` updates them in the first pass only."""
    from hf_mim.models.vicregl.convnets_vicregl import ReplaySafeBatchNorm2d

    checkpointed = train_step("vicregl_resnet", True)
    norms = [m for m in checkpointed["model"].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(isinstance(m, ReplaySafeBatchNorm2d) for m in norms)
    # two views, one forward each: every backbone BatchNorm has seen two batches
    assert all(m.num_batches_tracked.item() == 2 for m in norms)


def test_trainer_flag_trains_capi_identically(tmp_path, monkeypatch):
    """`--gradient_checkpointing` through the example's `run()`: two CAPI steps give the same weights to the bit,
    and the blocks really were checkpointed (transformers' checkpoint function was called)."""
    import transformers.modeling_utils

    from hf_mim.trainers.run_pretraining import run

    from .test_faults import arguments, image_folder, recipe, weights

    calls = []
    checkpoint = transformers.modeling_utils.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counted)
    data = image_folder(tmp_path)
    results, checkpoint_calls = [], []
    for flag in ("False", "True"):
        extra = ("--max_steps", "2", "--save_strategy", "no", "--gradient_checkpointing", flag)
        assert run(recipe("capi"), arguments("capi", data, tmp_path / f"run_{flag}", *extra)) == 0
        results.append(weights(tmp_path / f"run_{flag}"))
        checkpoint_calls.append(len(calls))
    assert checkpoint_calls[0] == 0 and checkpoint_calls[1] > 0, checkpoint_calls
    plain, checkpointed = results
    assert plain.keys() == checkpointed.keys()
    assert [name for name in plain if not torch.equal(plain[name], checkpointed[name])] == []
