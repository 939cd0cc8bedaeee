"""CAE's relative position bias (the fine-tuning / segmentation recipes' BEiT-style tables, issue 26 item 4): the
index against a transcription of the original's construction, the biased encoder against an eager transcription of
the original's attention, zero-init = no bias, eager = SDPA, and the original checkpoint keys through the converter."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_mim import CaeConfig, CaeForImageClassification, CaeModel
from hf_mim.layers import RelativePositionBias, num_relative_distances, relative_position_index
from hf_mim.models.cae import convert_cae


def original_index(window_size) -> tuple[int, torch.Tensor]:
    """Atten4Vis CAE models/modeling_finetune.py `RelativePositionBias.__init__` (the same in `Attention.__init__` and
    in downstream_tasks/semantic_segmentation/backbone/cae.py), transcribed line by line."""
    num_relative_distance = (2 * window_size[0] - 1) * (2 * window_size[1] - 1) + 3
    coords_h = torch.arange(window_size[0])
    coords_w = torch.arange(window_size[1])
    coords = torch.stack(torch.meshgrid([coords_h, coords_w], indexing="ij"))  # 2, Wh, Ww
    coords_flatten = torch.flatten(coords, 1)  # 2, Wh*Ww
    relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]  # 2, Wh*Ww, Wh*Ww
    relative_coords = relative_coords.permute(1, 2, 0).contiguous()  # Wh*Ww, Wh*Ww, 2
    relative_coords[:, :, 0] += window_size[0] - 1  # shift to start from 0
    relative_coords[:, :, 1] += window_size[1] - 1
    relative_coords[:, :, 0] *= 2 * window_size[1] - 1
    relative_position_index = torch.zeros(size=(window_size[0] * window_size[1] + 1,) * 2, dtype=relative_coords.dtype)
    relative_position_index[1:, 1:] = relative_coords.sum(-1)  # Wh*Ww, Wh*Ww
    relative_position_index[0, 0:] = num_relative_distance - 3
    relative_position_index[0:, 0] = num_relative_distance - 2
    relative_position_index[0, 0] = num_relative_distance - 1
    return num_relative_distance, relative_position_index


def original_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`RelativePositionBias.forward` / the per-block lookup of the original: (heads, N, N)."""
    n = index.shape[0]
    return table[index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()


def original_attention(block, x, own_index, rel_pos_bias):
    """modeling_finetune.py `Attention.forward` (fused qkv with q / v biases, scaled q, + own table, + shared bias)
    on the hf_mim block's weights."""
    attention = block.attention
    batch, n, _ = x.shape
    heads = attention.num_heads
    weight = torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight])
    qkv_bias = torch.cat((attention.q_proj.bias, torch.zeros_like(attention.v_proj.bias), attention.v_proj.bias))
    qkv = F.linear(input=x, weight=weight, bias=qkv_bias).reshape(batch, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * attention.scaling
    attn = q @ k.transpose(-2, -1)
    own = getattr(block, "relative_position_bias", None)
    if own is not None:
        attn = attn + original_bias(own.relative_position_bias_table, own_index).unsqueeze(0)
    if rel_pos_bias is not None:
        attn = attn + rel_pos_bias
    attn = attn.softmax(dim=-1)
    x = (attn @ v).transpose(1, 2).reshape(batch, n, -1)
    return attention.o_proj(x)


def original_encoder(model: CaeModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """The original's block loop (`Block.forward` with gamma_1 / gamma_2) and final norm, on hf_mim's embeddings."""
    x, _ = model.embeddings(pixel_values, None)
    grid = (model.config.grid_size, model.config.grid_size)
    _, index = original_index(grid)
    shared = model.relative_position_bias
    rel_pos_bias = None if shared is None else original_bias(shared.relative_position_bias_table, index)
    for block in model.layers:
        x = x + block.layer_scale1.lambda1 * original_attention(block, block.norm1(x), index, rel_pos_bias)
        x = x + block.layer_scale2.lambda1 * block.mlp(block.norm2(x))
    return model.layernorm(x)


def biased_config(per_block=True, shared=True, **overrides):
    return CaeConfig.tiny(use_relative_position_bias=per_block, use_shared_relative_position_bias=shared, **overrides)


def randomize_tables(model: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                param.copy_(torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("grid", [(1, 1), (2, 3), (4, 4), (3, 5), (14, 14)])
def test_index_is_the_originals(grid):
    n, expected = original_index(grid)
    index = relative_position_index(grid)
    assert index.dtype == torch.long and torch.equal(index, expected)
    assert index.max().item() == n - 1 and len(index.unique()) == n  # every row of the table is used
    module = RelativePositionBias(grid, num_heads=3)
    assert module.relative_position_bias_table.shape == (n, 3)
    assert torch.equal(module.relative_position_index, expected)


def test_module_bias_is_the_original_lookup():
    module = RelativePositionBias((3, 4), num_heads=5)
    randomize_tables(module)
    expected = original_bias(module.relative_position_bias_table, original_index((3, 4))[1])
    assert torch.equal(module((3, 4)), expected)


def test_other_grid_interpolates_bilinearly_as_transformers_beit():
    """At another input size the forward resamples the offsets bilinearly, as transformers' BEiT
    (`BeitRelativePositionBias`, `interpolate_pos_encoding`), keeps the cls rows and indexes the new grid."""
    from transformers import BeitConfig
    from transformers.models.beit.modeling_beit import BeitRelativePositionBias

    module = RelativePositionBias((4, 4), num_heads=3)
    randomize_tables(module)
    reference = BeitRelativePositionBias(BeitConfig(num_attention_heads=3, image_size=64, patch_size=16))
    reference.relative_position_bias_table.data.copy_(module.relative_position_bias_table)
    for grid in [(6, 6), (3, 3), (4, 4)]:
        torch.testing.assert_close(module(grid), reference(grid)[0], rtol=0, atol=1e-6)
    bias = module((5, 7))  # rectangular: the offsets as the table lays them out (rows, then columns)
    assert bias.shape == (3, 36, 36)
    table = module.relative_position_bias_table
    assert torch.equal(bias[:, 0, 1:], table[-3][:, None].expand(3, 35))  # cls -> patches keeps its row
    assert torch.equal(bias[:, 1, 1], bias[:, 20, 20])  # offset (0, 0): one value on the diagonal
    bias.sum().backward()  # differentiable: the table trains at the new size
    assert table.grad is not None and table.grad.abs().sum() > 0


def original_resize(table: torch.Tensor, source_side: int, target_side: int) -> torch.Tensor:
    """Atten4Vis CAE tools/run_class_finetuning.py (BEiT's): the load-time rescale of a square grid's table,
    transcribed, with scipy's named replacement for its removed `interpolate.interp2d(x, y, z, kind='cubic')`
    (`RectBivariateSpline(y, x, z, s=0)` read at (dy, dx))."""
    from scipy.interpolate import RectBivariateSpline

    num_extra_tokens = 3
    src_size, dst_size = 2 * source_side - 1, 2 * target_side - 1
    extra_tokens = table[-num_extra_tokens:, :]
    rel_pos_bias = table[:-num_extra_tokens, :]

    def geometric_progression(a, r, n):
        return a * (1.0 - r**n) / (1.0 - r)

    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        gp = geometric_progression(1, q, src_size // 2)
        if gp > dst_size // 2:
            right = q
        else:
            left = q
    dis = []
    cur = 1
    for i in range(src_size // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    r_ids = [-_ for _ in reversed(dis)]
    x = r_ids + [0] + dis
    y = r_ids + [0] + dis
    t = dst_size // 2.0
    dx = np.arange(-t, t + 0.1, 1.0)
    dy = np.arange(-t, t + 0.1, 1.0)
    all_rel_pos_bias = []
    for i in range(table.shape[1]):
        z = rel_pos_bias[:, i].view(src_size, src_size).double().numpy()
        f = RectBivariateSpline(y, x, z, kx=3, ky=3, s=0)
        all_rel_pos_bias.append(torch.Tensor(f(dy, dx)).contiguous().view(-1, 1))
    rel_pos_bias = torch.cat(all_rel_pos_bias, dim=-1)
    return torch.cat((rel_pos_bias, extra_tokens), dim=0)


@pytest.mark.parametrize("source, target", [(14, 24), (14, 32), (4, 6), (6, 4)])
def test_resize_is_the_originals_load_time_rescale(source, target):
    module = RelativePositionBias((source, source), num_heads=2)
    randomize_tables(module)
    table = module.relative_position_bias_table.detach().clone()
    module.resize_((target, target))
    resized = module.relative_position_bias_table
    assert module.grid == (target, target) and resized.shape == (num_relative_distances((target,) * 2), 2)
    torch.testing.assert_close(resized, original_resize(table, source, target), rtol=0, atol=1e-6)
    assert torch.equal(module.relative_position_index, original_index((target, target))[1])
    assert torch.equal(resized[-3:], table[-3:])

    # the short-range offsets (0 and +-1 on each axis) sit at the same positions in both grids: kept
    def at(t, side, dr, dc):
        return t[(dr + side - 1) * (2 * side - 1) + (dc + side - 1)]

    for dr, dc in [(0, 0), (1, 0), (0, -1), (1, 1)]:
        torch.testing.assert_close(at(resized, target, dr, dc), at(table, source, dr, dc), rtol=0, atol=1e-5)


def test_resize_to_image_size_round_trips_and_matches_the_interpolated_forward(tmp_path):
    model = CaeForImageClassification(biased_config(num_labels=3)).eval()
    randomize_tables(model)
    pixels = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        before = model.cae(pixels).last_hidden_state  # position table interpolated in the forward
    shared = model.cae.relative_position_bias.relative_position_bias_table.detach().clone()
    model.resize_to_image_size(96)
    assert model.config.image_size == 96 and model.cae.relative_position_bias.grid == (6, 6)
    expected = original_resize(shared, 4, 6)
    torch.testing.assert_close(
        model.cae.relative_position_bias.relative_position_bias_table, expected, atol=1e-6, rtol=0
    )
    with torch.no_grad():
        after = model.cae(pixels).last_hidden_state
    # the position table now holds what the forward interpolated; only the relative tables' resampling differs
    differs = (after - before).abs().max().item()
    assert differs > 1e-4
    model.save_pretrained(tmp_path)
    loaded = CaeForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.cae(pixels).last_hidden_state, after, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        model.resize_to_image_size(100)


@pytest.mark.parametrize("per_block, shared", [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_nonzero_tables_match_the_original_attention(per_block, shared, implementation):
    torch.manual_seed(0)
    model = CaeModel(biased_config(per_block, shared, attn_implementation=implementation)).eval()
    randomize_tables(model)
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = original_encoder(model, pixel_values)
        actual = model(pixel_values).last_hidden_state
        unbiased = CaeModel(CaeConfig.tiny()).eval()
        unbiased.load_state_dict(model.state_dict(), strict=False)
        plain = unbiased(pixel_values).last_hidden_state
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert (actual - plain).abs().max() > 1e-2  # the tables do change the output


def test_zero_initialised_tables_give_the_unbiased_model_and_train():
    torch.manual_seed(0)
    plain = CaeForImageClassification(CaeConfig.tiny(num_labels=3, classifier_type="finetune"))
    biased = CaeForImageClassification(biased_config(num_labels=3, classifier_type="finetune"))
    missing, unexpected = biased.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == sorted(
        ["cae.relative_position_bias.relative_position_bias_table"]
        + [f"cae.layers.{i}.relative_position_bias.relative_position_bias_table" for i in range(2)]
    )
    tables = [p for n, p in biased.named_parameters() if n.endswith("relative_position_bias_table")]
    assert len(tables) == 3 and all(p.requires_grad and not p.any() for p in tables)
    pixel_values, labels = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])
    plain.eval(), biased.eval()
    with torch.no_grad():
        torch.testing.assert_close(biased(pixel_values).logits, plain(pixel_values).logits, rtol=1e-6, atol=1e-7)
    biased.train()
    biased(pixel_values, labels=labels).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tables)


def test_default_config_has_no_bias():
    model = CaeModel(CaeConfig.tiny())
    assert model.relative_position_bias is None
    assert not any("relative_position" in name for name in model.state_dict())


@pytest.mark.parametrize("per_block, shared", [(True, False), (False, True), (True, True)])
def test_eager_and_sdpa_agree_with_the_bias(per_block, shared):
    torch.manual_seed(0)
    eager = CaeModel(biased_config(per_block, shared, attn_implementation="eager"))
    randomize_tables(eager)
    sdpa = CaeModel(biased_config(per_block, shared, attn_implementation="sdpa"))
    sdpa.load_state_dict(eager.state_dict())
    pixel_values = torch.randn(2, 3, 64, 64)
    out_eager, out_sdpa = eager(pixel_values).last_hidden_state, sdpa(pixel_values).last_hidden_state
    torch.testing.assert_close(out_sdpa, out_eager, rtol=1e-5, atol=1e-5)
    out_eager.square().sum().backward()
    out_sdpa.square().sum().backward()
    for (name, a), (_, b) in zip(eager.named_parameters(), sdpa.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_attentions_with_the_bias_are_the_original_softmax():
    model = CaeModel(biased_config(per_block=True, shared=False)).eval()
    randomize_tables(model)
    with torch.no_grad():
        attentions = model(torch.randn(1, 3, 64, 64), output_attentions=True).attentions
    assert attentions[0].shape == (1, 4, 17, 17)
    torch.testing.assert_close(attentions[0].sum(-1), torch.ones(1, 4, 17))


def test_masks_and_bad_flags_are_refused():
    model = CaeModel(biased_config()).eval()
    with pytest.raises(ValueError, match="no bool_masked_pos"):
        model(torch.randn(1, 3, 64, 64), bool_masked_pos=torch.zeros(1, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="use_relative_position_bias must be True or False"):
        CaeConfig.tiny(use_relative_position_bias=1)


def test_config_round_trip(tmp_path):
    model = CaeForImageClassification(biased_config(num_labels=2))
    randomize_tables(model)
    model.save_pretrained(tmp_path)
    loaded = CaeForImageClassification.from_pretrained(tmp_path)
    assert loaded.config.use_relative_position_bias and loaded.config.use_shared_relative_position_bias
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(loaded.cae.relative_position_bias.relative_position_index, original_index((4, 4))[1])


# --------------------------------------------------------------------------------- conversion of original keys
def original_finetuned_state(model: CaeModel, num_labels: int = 5) -> dict[str, torch.Tensor]:
    """The keys of an Atten4Vis fine-tuned `VisionTransformer` (models/modeling_finetune.py, mean pooling: `fc_norm`,
    no `norm`) with the relative position tables and their index buffers, holding `model`'s weights."""
    grid = (model.config.grid_size,) * 2
    index = original_index(grid)[1]
    state = {
        "cls_token": model.embeddings.cls_token,
        "pos_embed": model.embeddings.position_embeddings,
        "patch_embed.proj.weight": model.embeddings.patch_embeddings.projection.weight,
        "patch_embed.proj.bias": model.embeddings.patch_embeddings.projection.bias,
        "fc_norm.weight": model.layernorm.weight,
        "fc_norm.bias": model.layernorm.bias,
        "head.weight": torch.randn(num_labels, model.config.hidden_size),
        "head.bias": torch.randn(num_labels),
    }
    if model.relative_position_bias is not None:
        state["rel_pos_bias.relative_position_bias_table"] = model.relative_position_bias.relative_position_bias_table
        state["rel_pos_bias.relative_position_index"] = index
    for i, block in enumerate(model.layers):
        a = block.attention
        state.update({
            f"blocks.{i}.norm1.weight": block.norm1.weight, f"blocks.{i}.norm1.bias": block.norm1.bias,
            f"blocks.{i}.attn.qkv.weight": torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
            f"blocks.{i}.attn.q_bias": a.q_proj.bias, f"blocks.{i}.attn.v_bias": a.v_proj.bias,
            f"blocks.{i}.attn.proj.weight": a.o_proj.weight, f"blocks.{i}.attn.proj.bias": a.o_proj.bias,
            f"blocks.{i}.norm2.weight": block.norm2.weight, f"blocks.{i}.norm2.bias": block.norm2.bias,
            f"blocks.{i}.mlp.fc1.weight": block.mlp.fc1.weight, f"blocks.{i}.mlp.fc1.bias": block.mlp.fc1.bias,
            f"blocks.{i}.mlp.fc2.weight": block.mlp.fc2.weight, f"blocks.{i}.mlp.fc2.bias": block.mlp.fc2.bias,
            f"blocks.{i}.gamma_1": block.layer_scale1.lambda1, f"blocks.{i}.gamma_2": block.layer_scale2.lambda1,
        })  # fmt: skip
        if hasattr(block, "relative_position_bias"):
            state[f"blocks.{i}.attn.relative_position_bias_table"] = (
                block.relative_position_bias.relative_position_bias_table
            )
            state[f"blocks.{i}.attn.relative_position_index"] = index
    return {key: value.detach().clone() for key, value in state.items()}


@pytest.mark.parametrize("per_block, shared", [(True, False), (False, True), (True, True)])
def test_finetuned_checkpoint_keys_convert_and_load_strictly(per_block, shared):
    torch.manual_seed(0)
    source = CaeModel(biased_config(per_block, shared, pooling="mean")).eval()
    randomize_tables(source)
    original = original_finetuned_state(source)
    checkpoint = {"model": original, "epoch": 3, "args": None}
    config, state, is_full, report = convert_cae.convert_checkpoint(checkpoint)  # heads: the tables' columns
    assert not is_full and config.num_attention_heads == 4 and config.pooling == "mean"
    assert (config.use_relative_position_bias, config.use_shared_relative_position_bias) == (per_block, shared)
    assert "fine-tuned" in report["layout"] and "index recomputed" in report["relative_position_bias"]
    assert "relative_position_index" in report["ignored"] and "head.*" in report["ignored"]
    model = CaeModel(config).eval()
    model.load_state_dict(state, strict=True)  # the index buffers are not in it: recomputed, not loaded
    assert not any(key.endswith("relative_position_index") for key in state)
    if shared:
        assert torch.equal(
            state["relative_position_bias.relative_position_bias_table"],
            original["rel_pos_bias.relative_position_bias_table"],
        )
    if per_block:
        assert torch.equal(
            state["layers.1.relative_position_bias.relative_position_bias_table"],
            original["blocks.1.attn.relative_position_bias_table"],
        )
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = source(pixel_values), model(pixel_values)
    assert torch.equal(actual.last_hidden_state, expected.last_hidden_state)
    assert torch.equal(actual.pooler_output, expected.pooler_output)


def test_pretraining_layout_keys_and_a_wrong_index():
    torch.manual_seed(0)
    source = CaeModel(biased_config(pooling="mean"))
    randomize_tables(source)
    # the same keys under `encoder.` (an Atten4Vis encoder save with the tables)
    encoder_keys = {
        ("encoder." + key.replace("fc_norm.", "norm.")): value
        for key, value in original_finetuned_state(source).items()
        if not key.startswith("head.")
    }
    config, state, _, _ = convert_cae.convert_checkpoint({"model": encoder_keys})
    assert config.use_relative_position_bias and config.use_shared_relative_position_bias
    CaeModel(config).load_state_dict(state, strict=True)

    wrong = dict(encoder_keys)
    wrong["encoder.blocks.0.attn.relative_position_index"] = original_index((4, 4))[1].flip(0)
    with pytest.raises(convert_cae.CheckpointMismatchError, match="relative_position_index"):
        convert_cae.convert_checkpoint({"model": wrong})
    table = dict(encoder_keys)  # a table of another grid: a shape mismatch, named
    table["encoder.blocks.0.attn.relative_position_bias_table"] = torch.zeros(10, 4)
    with pytest.raises(convert_cae.CheckpointMismatchError, match="relative_position_bias_table"):
        convert_cae.convert_checkpoint({"model": table})


def test_converter_folder_of_a_finetuned_file(tmp_path):
    torch.manual_seed(0)
    source = CaeModel(biased_config(pooling="mean")).eval()
    randomize_tables(source)
    torch.save({"model": original_finetuned_state(source)}, tmp_path / "finetuned.pth")
    argv = ["--checkpoint_path", str(tmp_path / "finetuned.pth"), "--output_dir", str(tmp_path / "out")]
    assert convert_cae.main(argv) == 0
    loaded = CaeModel.from_pretrained(tmp_path / "out").eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values).pooler_output, source(pixel_values).pooler_output)


def test_pretrained_encoder_gains_zero_tables(tmp_path):
    """The fine-tuning recipe's start: a pretrained encoder (no tables) loaded with the bias on: zero tables, the index
    recomputed, the same outputs as without."""
    torch.manual_seed(0)
    pretrained = CaeModel(CaeConfig.tiny()).eval()
    pretrained.save_pretrained(tmp_path)
    model = CaeForImageClassification.from_pretrained(
        tmp_path, use_relative_position_bias=True, use_shared_relative_position_bias=True, num_labels=3
    ).eval()
    tables = {n: p for n, p in model.named_parameters() if n.endswith("relative_position_bias_table")}
    assert len(tables) == 3 and not any(p.any() for p in tables.values())
    for name, buffer in model.named_buffers():
        if name.endswith("relative_position_index"):
            assert torch.equal(buffer, original_index((4, 4))[1]), name
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            model.cae(pixel_values).last_hidden_state, pretrained(pixel_values).last_hidden_state, rtol=1e-6, atol=1e-7
        )


def test_layer_decay_depth_of_the_tables():
    """The original's layer ids (BEiT `get_layer_id_for_vit`): `blocks.<i>.attn.relative_position_bias_table` -> i + 1,
    the shared `rel_pos_bias.*` -> L + 1 (behind the encoder)."""
    from hf_mim.finetuning import layer_id_for_parameter

    model = CaeForImageClassification(biased_config(num_labels=2))
    names = [n for n, _ in model.named_parameters() if n.endswith("relative_position_bias_table")]
    depth = {n: layer_id_for_parameter(n, 2) for n in names}
    assert depth == {
        "cae.layers.0.relative_position_bias.relative_position_bias_table": 1,
        "cae.layers.1.relative_position_bias.relative_position_bias_table": 2,
        "cae.relative_position_bias.relative_position_bias_table": 3,
    }
