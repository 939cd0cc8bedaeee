"""Fault injection on the five converters (issue 23, item 6): every failure ends in one line `error: ...` on stderr
and exit status 2, with nothing written (an existing output folder is left as it was). Each converter's command line
is the `main` of its module, `hf_mim.models.<m>.convert_<m>`, run here in-process; `scripts/convert/` runs the same
`main` (checked once per script, in a separate process).

Faults: NaN / inf weights, integer tensors where floats are expected, half-precision files (converted: up-cast to
float32 and reported), `--output_dir` naming a file, a directory given as the checkpoint, a failure while writing
(the Hub upload), and head counts the weights do not show (CAE, I-JEPA: required for widths of no release; CAPI reads
them off its RoPE tables, which must then agree). VICRegL (ConvNets) and the DALL-E tokenizer (convolutions) have no
attention heads. The originals are the repository's tiny fixtures, or built here in the originals' key layout."""

import argparse
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file

from hf_mim.models.cae import convert_cae, convert_dalle_tokenizer
from hf_mim.models.capi import convert_capi
from hf_mim.models.ijepa import convert_ijepa
from hf_mim.models.vicregl import convert_vicregl

from .helpers import FIXTURES, run_script
from .test_convert_cae import fixture_checkpoint as cae_fixture_checkpoint
from .test_convert_vicregl import fixture_backbone as vicregl_fixture_backbone
from .test_dalle_tokenizer import Encoder as DalleOriginalEncoder


# ------------------------------------------------------------------ the converters and their tiny originals
def _capi():
    return torch.load(FIXTURES / "capi" / "checkpoint.pth", weights_only=True)


def _ijepa():
    return torch.load(FIXTURES / "ijepa" / "checkpoint.pth.tar", weights_only=True)


def _dalle():
    """A plain state dict of the original dVAE encoder (MMPretrain's `dalle_encoder.pth` layout), tiny."""
    torch.manual_seed(1)
    return {k: v.detach().clone() for k, v in DalleOriginalEncoder().state_dict().items()}


@dataclass
class Spec:
    """One converter: its module (`main` is its command line), a valid tiny original (`build`), and where to inject
    faults."""

    converter: ModuleType
    build: Callable[[], dict]
    file_name: str
    args: list[str]  # what a valid conversion of `build()` needs
    nan_key: str  # a weight that becomes NaN
    inf_key: str  # a weight that becomes inf
    int_key: str  # a float weight stored as int64
    sample: tuple[str, str]  # (original key, key in model.safetensors) of one converted weight
    parts: tuple[str, ...] = ()  # sub-dicts holding the weights ((): the state dict itself)
    container: str | None = None  # the state dict's entry in the file (CAE: "model")

    def weight_dicts(self, checkpoint) -> list[dict]:
        root = checkpoint[self.container] if self.container else checkpoint
        return [root[part] for part in self.parts] if self.parts else [root]


SPECS = {
    "capi": Spec(
        convert_capi, _capi, "capi_tiny.pth", ["--image_size", "56"],
        nan_key="backbone.encoder.blocks.0.residual2.fn.fc1.weight", inf_key="backbone.patch_embed.bias",
        int_key="backbone.encoder.blocks.1.residual1.norm.weight",
        sample=("backbone.patch_embed.weight", "embeddings.patch_embeddings.projection.weight"),
    ),
    "cae": Spec(
        convert_cae, lambda: cae_fixture_checkpoint("cae_v1_pretrain"), "cae_tiny.pth",
        ["--num_attention_heads", "4", "--decoder_num_attention_heads", "4"],
        nan_key="encoder.blocks.0.mlp.fc1.weight", inf_key="regresser.regressor_blocks.0.cross_attn.q_bias",
        int_key="encoder.blocks.1.attn.q_bias", container="model",
        sample=("encoder.patch_embed.proj.weight", "cae.embeddings.patch_embeddings.projection.weight"),
    ),
    "ijepa": Spec(
        convert_ijepa, _ijepa, "ijepa_tiny.pth.tar", ["--num_attention_heads", "4"],
        nan_key="module.blocks.0.mlp.fc1.weight", inf_key="module.norm.bias", int_key="module.norm.weight",
        parts=("encoder", "predictor", "target_encoder"),
        sample=("module.patch_embed.proj.weight", "ijepa.embeddings.patch_embeddings.projection.weight"),
    ),
    "vicregl": Spec(
        convert_vicregl, vicregl_fixture_backbone, "vicregl_tiny.pth", [],
        nan_key="stages.0.0.pwconv1.weight", inf_key="norm.bias", int_key="stages.1.0.dwconv.bias",
        sample=("stages.0.0.pwconv1.weight", "encoder.stages.0.layers.0.pwconv1.weight"),
    ),
    "dalle": Spec(
        convert_dalle_tokenizer, _dalle, "dalle_encoder.pth", ["--image_size", "32"],
        nan_key="blocks.group_1.block_1.res_path.conv_1.w", inf_key="blocks.input.b", int_key="blocks.output.conv.b",
        sample=("blocks.input.w", "blocks.input.weight"),
    ),
}  # fmt: skip
ALL = pytest.mark.parametrize("name", list(SPECS))


@pytest.fixture(scope="module")
def converters():
    return {name: spec.converter for name, spec in SPECS.items()}


def save(checkpoint, path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        torch.save(checkpoint, path)
    return path


def run(converter, argv, capsys) -> tuple[int, str, str]:
    """`main(argv)` in-process: (exit status, stdout, stderr). argparse's errors exit through SystemExit."""
    try:
        code = converter.main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(code: int, err: str) -> str:
    """The one `error: ...` line a refused conversion ends with."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error:") for line in lines) == 1, err
    return lines[-1]


def listing(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size if p.is_file() else -1) for p in folder.rglob("*"))


def refused(spec: Spec, converter, checkpoint, tmp_path, capsys, *extra, args=None) -> str:
    """Convert `checkpoint` into tmp_path/out (with `args`, default the spec's, and `extra`), expect a refusal that
    writes nothing; returns the error line."""
    path = save(checkpoint, tmp_path / spec.file_name)
    before = listing(tmp_path)
    args = spec.args if args is None else args
    code, _, err = run(converter, ["--checkpoint_path", path, "--output_dir", tmp_path / "out", *args, *extra], capsys)
    line = error_line(code, err)
    assert listing(tmp_path) == before, "a refused conversion wrote files"
    return line


# ------------------------------------------------------------------ NaN / inf, integer weights
@ALL
def test_non_finite_weights_are_refused_by_name(name, converters, tmp_path, capsys):
    spec = SPECS[name]
    checkpoint = spec.build()
    weights = spec.weight_dicts(checkpoint)[0]
    weights[spec.nan_key][0] = float("nan")
    weights[spec.inf_key][..., -1] = float("inf")
    existing = tmp_path / "out"  # an output folder that exists already is left as it was
    existing.mkdir()
    (existing / "keep.txt").write_text("earlier run")
    line = refused(spec, converters[name], checkpoint, tmp_path, capsys)
    assert "NaN" in line and "inf" in line, line
    assert spec.nan_key.removeprefix("module.") in line and spec.inf_key.removeprefix("module.") in line, line
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]


@ALL
def test_many_non_finite_weights_are_listed_truncated(name, converters, tmp_path, capsys):
    spec = SPECS[name]
    checkpoint = spec.build()
    for weights in spec.weight_dicts(checkpoint):
        for tensor in weights.values():
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
    line = refused(spec, converters[name], checkpoint, tmp_path, capsys)
    assert re.search(r"NaN or inf in (\d+) tensors", line) and re.search(r"\.\.\. and \d+ more", line), line
    assert len(line) < 1000, line


@ALL
def test_integer_weights_are_refused_by_name(name, converters, tmp_path, capsys):
    spec = SPECS[name]
    checkpoint = spec.build()
    weights = spec.weight_dicts(checkpoint)[0]
    weights[spec.int_key] = torch.ones_like(weights[spec.int_key], dtype=torch.int64)
    line = refused(spec, converters[name], checkpoint, tmp_path, capsys)
    assert spec.int_key.removeprefix("module.") in line and "int64" in line and "floating-point" in line, line


def tiny_resnet_backbone() -> dict[str, torch.Tensor]:
    """A two-stage bottleneck ResNet in torchvision's layout (VICRegL's ResNet-50 files), with its int64
    `num_batches_tracked` BatchNorm counters, which are integer by nature."""

    def bn(prefix, width):
        return {f"{prefix}.weight": 1 + 0.1 * torch.randn(width), f"{prefix}.bias": 0.1 * torch.randn(width),
                f"{prefix}.running_mean": 0.1 * torch.randn(width), f"{prefix}.running_var": 0.5 + torch.rand(width),
                f"{prefix}.num_batches_tracked": torch.tensor(7)}  # fmt: skip

    state = {"conv1.weight": 0.1 * torch.randn(8, 3, 7, 7), **bn("bn1", 8)}
    width_in = 8
    for stage, width in enumerate((16, 32), start=1):
        p, mid = f"layer{stage}.0", width // 4
        state.update({f"{p}.conv1.weight": 0.1 * torch.randn(mid, width_in, 1, 1), **bn(f"{p}.bn1", mid),
                      f"{p}.conv2.weight": 0.1 * torch.randn(mid, mid, 3, 3), **bn(f"{p}.bn2", mid),
                      f"{p}.conv3.weight": 0.1 * torch.randn(width, mid, 1, 1), **bn(f"{p}.bn3", width),
                      f"{p}.downsample.0.weight": 0.1 * torch.randn(width, width_in, 1, 1),
                      **bn(f"{p}.downsample.1", width)})  # fmt: skip
        width_in = width
    return state


def test_vicregl_batch_norm_counters_stay_integer(converters, tmp_path, capsys):
    """`num_batches_tracked` is the one legitimately integer tensor of the originals: kept as it is, in both dtypes
    of the rest of the file."""
    for dtype in (torch.float32, torch.float16):
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tiny_resnet_backbone().items()}
        path = save(state, tmp_path / f"resnet_{dtype}.pth")
        out = tmp_path / f"out_{dtype}"
        code, stdout, err = run(converters["vicregl"], ["--checkpoint_path", path, "--output_dir", out], capsys)
        assert code == 0, err
        weights = load_file(out / "model.safetensors")
        counters = [k for k in weights if k.endswith("num_batches_tracked")]
        assert len(counters) == 9 and all(weights[k].dtype == torch.int64 and weights[k] == 7 for k in counters)
        assert {v.dtype for k, v in weights.items() if k not in counters} == {torch.float32}
        floats = sum(v.is_floating_point() for v in state.values())
        assert (f"upcast: {floats} float16 tensors to float32" in stdout) == (dtype == torch.float16), stdout


# ------------------------------------------------------------------ half precision
@ALL
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_is_upcast_and_reported(name, dtype, converters, tmp_path, capsys):
    spec = SPECS[name]
    checkpoint = spec.build()
    for weights in spec.weight_dicts(checkpoint):
        for key, tensor in weights.items():
            if tensor.is_floating_point():
                weights[key] = tensor.to(dtype)
    path = save(checkpoint, tmp_path / spec.file_name)
    out = tmp_path / "out"
    code, stdout, err = run(converters[name], ["--checkpoint_path", path, "--output_dir", out, *spec.args], capsys)
    assert code == 0, err
    dtype_name = str(dtype).removeprefix("torch.")
    assert re.search(rf"^upcast: \d+ {dtype_name} tensors to float32", stdout, re.MULTILINE), stdout
    saved = load_file(out / "model.safetensors")
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.float32}
    original_key, saved_key = spec.sample
    expected = spec.weight_dicts(checkpoint)[0][original_key].float()
    assert torch.equal(saved[saved_key], expected)  # the half values, exactly, in float32


# ------------------------------------------------------------------ paths
@ALL
def test_output_dir_naming_a_file(name, converters, tmp_path, capsys):
    spec = SPECS[name]
    path = save(spec.build(), tmp_path / spec.file_name)
    target = tmp_path / "out"
    target.write_text("not a folder")
    code, _, err = run(converters[name], ["--checkpoint_path", path, "--output_dir", target, *spec.args], capsys)
    line = error_line(code, err)
    assert str(target) in line and "not a directory" in line, line
    assert target.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", spec.file_name])


@ALL
def test_checkpoint_path_naming_a_directory(name, converters, tmp_path, capsys):
    spec = SPECS[name]
    folder = tmp_path / "downloads"
    folder.mkdir()
    save(spec.build(), folder / spec.file_name)
    code, _, err = run(
        converters[name], ["--checkpoint_path", folder, "--output_dir", tmp_path / "out", *spec.args], capsys
    )
    line = error_line(code, err)
    assert "is a directory" in line and str(folder / spec.file_name) in line and "not found" not in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["downloads"]


@ALL
def test_failed_upload_keeps_the_converted_folder(name, converters, tmp_path, capsys, monkeypatch):
    """The last step, the Hub upload, fails (issue 27): the conversion itself succeeded, so its complete folder stays
    (upload it later) and the failure is the one line every push failure is (`hf_mim.hub.push`), exit status 2."""
    from huggingface_hub import HfApi

    def unreachable(*args, **kwargs):
        raise ConnectionError("Hub unreachable")

    monkeypatch.setattr(HfApi, "create_repo", unreachable)
    monkeypatch.setattr(HfApi, "upload_folder", unreachable)
    spec = SPECS[name]
    path = save(spec.build(), tmp_path / spec.file_name)
    code, _, err = run(converters[name], ["--checkpoint_path", path, "--output_dir", tmp_path / "out", *spec.args,
                                          "--push_to_hub", "me/x"], capsys)  # fmt: skip
    assert error_line(code, err) == (
        "error: pushing to me/x failed: the Hub could not be reached (ConnectionError: Hub unreachable); check the "
        "network"
    )
    assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "out" / "README.md").is_file()
    assert list((tmp_path / "out").glob("*.safetensors"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging folder left


# ------------------------------------------------------------------ head counts
def _block(prefix: str, width: int, **extra_shapes) -> dict[str, torch.Tensor]:
    """A timm-style ViT block (`norm1`, fused `attn.qkv`, `attn.proj`, `norm2`, `mlp.fc1/fc2`), as CAE and I-JEPA
    store it; `extra_shapes` adds the method's own entries (CAE: `attn.q_bias`, `gamma_1`, ...)."""
    shapes = {"norm1.weight": (width,), "norm1.bias": (width,), "attn.qkv.weight": (3 * width, width),
              "attn.proj.weight": (width, width), "attn.proj.bias": (width,), "norm2.weight": (width,),
              "norm2.bias": (width,), "mlp.fc1.weight": (4 * width, width), "mlp.fc1.bias": (4 * width,),
              "mlp.fc2.weight": (width, 4 * width), "mlp.fc2.bias": (width,), **extra_shapes}  # fmt: skip
    return {f"{prefix}.{name}": 0.02 * torch.randn(shape) for name, shape in shapes.items()}


def _patch_embedding(width: int, patch: int) -> dict[str, torch.Tensor]:
    return {
        "patch_embed.proj.weight": 0.02 * torch.randn(width, 3, patch, patch),
        "patch_embed.proj.bias": torch.zeros(width),
    }


def _norm(prefix: str, width: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": torch.ones(width), f"{prefix}.bias": torch.zeros(width)}


def cae_released_encoder(width: int) -> dict:
    """A released-v1-style CAE file (`{'model': {encoder.*, mask_token}}`): one block, 2 x 2 patches of 16 px."""
    extra = {"attn.q_bias": (width,), "attn.v_bias": (width,), "gamma_1": (width,), "gamma_2": (width,)}
    encoder = {"cls_token": torch.zeros(1, 1, width), "pos_embed": torch.randn(1, 5, width),
               **_patch_embedding(width, 16), **_block("blocks.0", width, **extra), **_norm("norm", width)}  # fmt: skip
    return {"model": {"mask_token": torch.zeros(1, 1, width), **{f"encoder.{k}": v for k, v in encoder.items()}}}


def ijepa_original(width: int, predictor_width: int) -> dict:
    """An I-JEPA .pth.tar (DDP `module.` keys; context encoder, predictor, target encoder): one block each, 2 x 2
    patches of 14 px."""
    encoder = {"pos_embed": torch.randn(1, 4, width), **_patch_embedding(width, 14),
               **_block("blocks.0", width, **{"attn.qkv.bias": (3 * width,)}), **_norm("norm", width)}  # fmt: skip
    p = predictor_width
    predictor = {"mask_token": torch.zeros(1, 1, p), "predictor_pos_embed": torch.randn(1, 4, p),
                 "predictor_embed.weight": 0.02 * torch.randn(p, width), "predictor_embed.bias": torch.zeros(p),
                 **_block("predictor_blocks.0", p, **{"attn.qkv.bias": (3 * p,)}), **_norm("predictor_norm", p),
                 "predictor_proj.weight": 0.02 * torch.randn(width, p), "predictor_proj.bias": torch.zeros(width)}  # fmt: skip

    def ddp(state):
        return {f"module.{k}": v.clone() for k, v in state.items()}

    return {"encoder": ddp(encoder), "predictor": ddp(predictor), "target_encoder": ddp(encoder), "epoch": 1}


@pytest.mark.parametrize(
    "name, checkpoint, width",
    [("cae", lambda: cae_released_encoder(48), 48), ("ijepa", lambda: ijepa_original(32, 16), 32)],
)
def test_width_of_no_release_requires_the_head_count(name, checkpoint, width, converters, tmp_path, capsys):
    """48 is divisible by CAE's 12 heads and 32 by I-JEPA's 16: both converters used to write such a model with those
    heads, unasked. The error names the width and the widths whose head count is known."""
    spec = SPECS[name]
    line = refused(spec, converters[name], checkpoint(), tmp_path, capsys, args=[])
    assert f"width {width}" in line and "--num_attention_heads" in line and "768" in line and "1024" in line, line
    code, _, err = run(converters[name], ["--checkpoint_path", tmp_path / spec.file_name, "--output_dir",
                                          tmp_path / "out", "--num_attention_heads", "4"], capsys)  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "config.json").read_text())["num_attention_heads"] == 4


def test_cae_regressor_width_of_no_release_requires_its_head_count(converters, tmp_path, capsys):
    """The fixture's regressor / decoder are 32 wide: the encoder's count is given, theirs must be too."""
    spec = SPECS["cae"]
    checkpoint = save(spec.build(), tmp_path / spec.file_name)
    code, _, err = run(converters["cae"], ["--checkpoint_path", checkpoint, "--output_dir", tmp_path / "out",
                                           "--num_attention_heads", "4"], capsys)  # fmt: skip
    line = error_line(code, err)
    assert "width 32" in line and "--decoder_num_attention_heads" in line and "768" in line, line
    assert not (tmp_path / "out").exists()


def test_capi_rope_tables_must_agree_on_the_head_width(converters, tmp_path, capsys):
    """CAPI's head count is read off the RoPE tables (width / head_dim): a block whose table has another head width
    would be rebuilt with the first block's, so the file is refused, naming the table."""
    spec = SPECS["capi"]
    checkpoint = spec.build()
    key = "backbone.encoder.blocks.1.residual1.fn.rope.freqs"
    checkpoint[key] = converters["capi"].CapiRope2D.analytic_freqs(8)
    line = refused(spec, converters["capi"], checkpoint, tmp_path, capsys)
    assert "encoder.blocks.1.residual1.fn.rope.freqs" in line and "(2, 8)" in line and "(2, 16)" in line, line


# ------------------------------------------------------------------ the command line itself
@ALL
def test_argument_errors_end_in_one_error_line(name, converters, tmp_path, capsys):
    """argparse's own failures (a missing or malformed flag) take the same form: usage, then one `error:` line."""
    code, _, err = run(converters[name], ["--checkpoint_path", tmp_path / "x.pth"], capsys)
    assert "--output_dir" in error_line(code, err) and err.startswith("usage:"), err
    code, _, err = run(converters[name], ["--checkpoint_path", tmp_path / "x.pth", "--output_dir", tmp_path / "o",
                                          "--no_such_flag"], capsys)  # fmt: skip
    assert "--no_such_flag" in error_line(code, err) and list(tmp_path.iterdir()) == []


@ALL
def test_the_script_runs_this_command_line(name, tmp_path):
    """scripts/convert/convert_<m>_to_hf.py is the module's `main`: the same refusal, from its own process."""
    script = f"scripts/convert/{SPECS[name].converter.__name__.rpartition('.')[2]}_to_hf.py"
    result = run_script(script, "--checkpoint_path", str(tmp_path / "x.pth"), "--output_dir", str(tmp_path / "o"))
    assert "Checkpoint file not found" in error_line(result.returncode, result.stderr), result.stderr
    assert result.stdout == "" and list(tmp_path.iterdir()) == []
