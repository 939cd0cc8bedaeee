"""The attention layer's speed paths compute the same attention (issue 24 item 6: CAE's CPU step not slower than the
original): `matmul_attention` (two batched matmuls, chosen by "sdpa" for short sequences in CPU training) and the fused
q/k/v projection (one matmul against the stacked weights). Each is compared with the plain path on the same weights;
the fused projection steps aside for hooks and adapters; CAE turns both on, and its step gives the same loss and
gradients with them off."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hf_mim import CaeConfig, CaeForPreTraining
from hf_mim.layers import attention as attention_module
from hf_mim.layers.attention import Attention


def layer(key_bias=None, **switches) -> Attention:
    torch.manual_seed(0)
    module = Attention(SimpleNamespace(_attn_implementation="sdpa"), 32, 4, key_bias=key_bias)
    for name, value in switches.items():
        setattr(module, name, value)
    return module.train()


def forward_backward(module: Attention, x: torch.Tensor):
    x = x.clone().requires_grad_(True)
    output, _ = module(x)
    (output * torch.linspace(-1, 1, output.numel()).view_as(output)).sum().backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    return output.detach(), x.grad, grads


def assert_same(a, b, atol=2e-6):
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=atol)
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=atol)
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        torch.testing.assert_close(a[2][name], b[2][name], rtol=1e-5, atol=atol, msg=name)


@pytest.mark.parametrize("key_bias", [None, False])
def test_fused_qkv_equals_three_projections(key_bias):
    x = torch.randn(3, 19, 32, generator=torch.Generator().manual_seed(1))
    plain = forward_backward(layer(key_bias), x)
    fused = forward_backward(layer(key_bias, fuse_qkv=True), x)
    assert_same(plain, fused)
    if key_bias is False:
        assert layer(key_bias, fuse_qkv=True).k_proj.bias is None  # no key bias appears


def test_matmul_attention_equals_the_sdpa_kernel(monkeypatch):
    x = torch.randn(3, 19, 32, generator=torch.Generator().manual_seed(2))
    calls = []
    original = attention_module.matmul_attention
    monkeypatch.setattr(attention_module, "matmul_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    sdpa = forward_backward(layer(), x)
    assert not calls
    matmul = forward_backward(layer(matmul_max_kv_tokens=40), x)
    assert len(calls) == 1
    assert_same(sdpa, matmul)
    with torch.no_grad():  # inference keeps the SDPA kernel (as fast or faster there)
        layer(matmul_max_kv_tokens=40)(x)
    assert len(calls) == 1
    longer = torch.randn(3, 41, 32)
    forward_backward(layer(matmul_max_kv_tokens=40), longer)  # more keys than the bound: SDPA
    assert len(calls) == 1


def test_fused_qkv_steps_aside_for_hooks_and_adapters():
    module = layer(fuse_qkv=True)
    seen = []
    module.q_proj.register_forward_hook(lambda *args: seen.append("q"))
    module(torch.randn(2, 5, 32))
    assert seen == ["q"]

    class Adapted(nn.Linear):  # e.g. a LoRA wrapper: its forward must run
        def forward(self, x):
            seen.append("adapted")
            return super().forward(x)

    module = layer(fuse_qkv=True)
    adapted = Adapted(32, 32)
    adapted.load_state_dict(module.v_proj.state_dict())
    module.v_proj = adapted
    module(torch.randn(2, 5, 32))
    assert seen == ["q", "adapted"]


@pytest.mark.parametrize("version", [1, 2])
def test_cae_step_is_the_same_with_the_speed_paths_off(version):
    torch.manual_seed(0)
    config = CaeConfig.tiny(cae_version=version, drop_path_rate=0.0)
    model = CaeForPreTraining(config).train()
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    assert attentions and all(a.matmul_max_kv_tokens > 0 for a in attentions)
    assert sum(a.fuse_qkv for a in attentions) == config.num_hidden_layers + config.decoder_num_layers
    generator = torch.Generator().manual_seed(3)
    batch = {
        "pixel_values": torch.randn(4, 3, 64, 64, generator=generator),
        "bool_masked_pos": model.mask_generator(4, (4, 4), generator).bool_masked_pos,
    }
    if version == 1:
        batch["labels"] = torch.randint(0, config.vocab_size, (4, 16), generator=generator)
    else:
        batch["target_features"] = torch.randn(4, 17, config.target_hidden_size, generator=generator)

    def step():
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast_loss, fast_grads = step()
    for module in attentions:
        module.matmul_max_kv_tokens, module.fuse_qkv = 0, False
    plain_loss, plain_grads = step()
    torch.testing.assert_close(fast_loss, plain_loss, rtol=1e-6, atol=0)
    assert fast_grads.keys() == plain_grads.keys()
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
