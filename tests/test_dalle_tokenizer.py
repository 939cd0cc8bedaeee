"""hf_mim.models.cae.tokenizer_dalle and convert_dalle_tokenizer (command line:
scripts/convert/convert_dalle_tokenizer_to_hf.py): OpenAI-layout pickles (whole `dall_e.encoder.Encoder` module, as
encoder.pkl) and plain state dicts converted and checked against a reference forward written from the original
definition; malicious pickles refused without side effects; strict key accounting; save/load and AutoModel."""

import builtins
import contextlib
import math
import os
import pickletools
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModel

from hf_mim.hub.conversion import CheckpointMismatchError
from hf_mim.models.cae import convert_dalle_tokenizer, register_dalle_tokenizer
from hf_mim.models.cae.tokenizer_dalle import DalleTokenizer, DalleTokenizerConfig, map_pixels

from .helpers import run_script

SCRIPT = "scripts/convert/convert_dalle_tokenizer_to_hf.py"  # the command line of convert_dalle_tokenizer
N_HID, VOCAB, BLOCKS, IMAGE = 16, 64, 2, 32  # tiny original: widths 16, 32, 64, 128; 4 x 4 codes at 32 px


# ------------------------------------------------------------------ the original classes (dall_e/utils.py, encoder.py)
class Conv2d(nn.Module):
    """dall_e.utils.Conv2d with random `w` and `b` (the original zero-inits `b`; random biases test their mapping)."""

    def __init__(self, n_in, n_out, kw, use_float16=True, device=None, requires_grad=False):
        super().__init__()
        device = torch.device("cpu") if device is None else device
        self.n_in, self.n_out, self.kw = n_in, n_out, kw
        self.use_float16, self.device, self.requires_grad = use_float16, device, requires_grad
        w = torch.empty(n_out, n_in, kw, kw).normal_(std=1 / math.sqrt(n_in * kw**2))
        self.w, self.b = nn.Parameter(w), nn.Parameter(0.1 * torch.randn(n_out))


class EncoderBlock(nn.Module):
    def __init__(self, n_in, n_out, n_layers, device=None, requires_grad=False):
        super().__init__()
        self.n_in, self.n_out, self.n_layers, self.device, self.requires_grad = n_in, n_out, n_layers, device, False
        self.n_hid = n_out // 4
        self.post_gain = 1 / (n_layers**2)
        make_conv = partial(Conv2d, device=device, requires_grad=requires_grad)
        self.id_path = make_conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = nn.Sequential(
            OrderedDict(
                [
                    ("relu_1", nn.ReLU()),
                    ("conv_1", make_conv(n_in, self.n_hid, 3)),
                    ("relu_2", nn.ReLU()),
                    ("conv_2", make_conv(self.n_hid, self.n_hid, 3)),
                    ("relu_3", nn.ReLU()),
                    ("conv_3", make_conv(self.n_hid, self.n_hid, 3)),
                    ("relu_4", nn.ReLU()),
                    ("conv_4", make_conv(self.n_hid, n_out, 1)),
                ]
            )
        )


class Encoder(nn.Module):
    group_count = 4  # a class attribute in the original (not an attr.ib), so it is not pickled

    def __init__(self, n_hid=N_HID, n_blk_per_group=BLOCKS, input_channels=3, vocab_size=VOCAB):
        super().__init__()
        self.n_hid, self.n_blk_per_group, self.input_channels, self.vocab_size = (
            n_hid,
            n_blk_per_group,
            input_channels,
            vocab_size,
        )
        self.device, self.requires_grad, self.use_mixed_precision = torch.device("cpu"), False, True
        blk_range = range(n_blk_per_group)
        make_blk = partial(EncoderBlock, n_layers=self.group_count * n_blk_per_group)

        def group(n_in, mult, pool=True):
            layers = [(f"block_{i + 1}", make_blk(n_in if i == 0 else mult * n_hid, mult * n_hid)) for i in blk_range]
            return nn.Sequential(OrderedDict(layers + ([("pool", nn.MaxPool2d(kernel_size=2))] if pool else [])))

        self.blocks = nn.Sequential(
            OrderedDict(
                [
                    ("input", Conv2d(input_channels, n_hid, 7)),
                    ("group_1", group(n_hid, 1)),
                    ("group_2", group(n_hid, 2)),
                    ("group_3", group(2 * n_hid, 4)),
                    ("group_4", group(4 * n_hid, 8, pool=False)),
                    (
                        "output",
                        nn.Sequential(
                            OrderedDict(
                                [("relu", nn.ReLU()), ("conv", Conv2d(8 * n_hid, vocab_size, 1, use_float16=False))]
                            )
                        ),
                    ),
                ]
            )
        )


for _cls, _module in ((Conv2d, "dall_e.utils"), (EncoderBlock, "dall_e.encoder"), (Encoder, "dall_e.encoder")):
    _cls.__module__ = _module


@contextlib.contextmanager
def fake_dall_e():
    """Make `dall_e.encoder.Encoder` etc. importable (for pickling) only inside the block."""
    package, encoder, utils = (types.ModuleType(n) for n in ("dall_e", "dall_e.encoder", "dall_e.utils"))
    encoder.Encoder, encoder.EncoderBlock, utils.Conv2d = Encoder, EncoderBlock, Conv2d
    package.encoder, package.utils = encoder, utils
    modules = {"dall_e": package, "dall_e.encoder": encoder, "dall_e.utils": utils}
    assert not set(modules) & set(sys.modules)
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name in modules:
            del sys.modules[name]


def save_whole_module(module, path):
    """`torch.save(encoder)` as OpenAI did for encoder.pkl."""
    with fake_dall_e():
        torch.save(module, path)
    return path


def pickled_globals(path) -> set[str]:
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    return {arg for op, arg, _ in pickletools.genops(data) if op.name in ("GLOBAL", "STACK_GLOBAL")}


# ------------------------------------------------------------------ reference forward, from the original definition
def reference_logits(state: dict[str, torch.Tensor], x: torch.Tensor, group_count=4) -> torch.Tensor:
    """dall_e's Encoder.forward in float32 on an original-named state dict (`...w`, `...b`)."""

    def conv(name, h):
        w = state[f"{name}.w"]
        return F.conv2d(h, w, state[f"{name}.b"], padding=(w.shape[-1] - 1) // 2)

    n_blocks = len({k.split(".")[2] for k in state if k.startswith("blocks.group_1.")})
    post_gain = 1 / (group_count * n_blocks) ** 2
    h = conv("blocks.input", x)
    for g in range(1, group_count + 1):
        for b in range(1, n_blocks + 1):
            name = f"blocks.group_{g}.block_{b}"
            identity = conv(f"{name}.id_path", h) if f"{name}.id_path.w" in state else h
            r = h
            for i in range(1, 5):
                r = conv(f"{name}.res_path.conv_{i}", F.relu(r))
            h = identity + post_gain * r
        if g < group_count:
            h = F.max_pool2d(h, 2)
    return conv("blocks.output.conv", F.relu(h))


@pytest.fixture(scope="module")
def converter():
    return convert_dalle_tokenizer


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(1)
    encoder = Encoder()
    state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    pixels = map_pixels(torch.rand(3, 3, IMAGE, IMAGE))
    return encoder, state, pixels


@pytest.fixture(scope="module")
def openai_pickle(original, tmp_path_factory):
    return save_whole_module(original[0], tmp_path_factory.mktemp("dalle") / "encoder.pkl")


@pytest.fixture(scope="module")
def converted_cli(openai_pickle, tmp_path_factory):
    output = tmp_path_factory.mktemp("dalle_converted")
    result = run_script(
        SCRIPT, "--checkpoint_path", str(openai_pickle), "--output_dir", str(output), "--image_size", str(IMAGE)
    )
    assert result.returncode == 0, result.stderr
    return output, result.stdout


def check_parity(model: DalleTokenizer, state, pixels):
    expected = reference_logits(state, pixels)
    with torch.no_grad():
        logits = model(pixels)
    assert logits.shape == (pixels.shape[0], VOCAB, IMAGE // 8, IMAGE // 8) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    ids = model.get_codebook_indices(pixels)
    assert ids.dtype == torch.int64 and ids.shape == (pixels.shape[0], (IMAGE // 8) ** 2)
    assert torch.equal(ids, expected.argmax(1).flatten(1))
    assert len(ids.unique()) > 4  # the test is not trivially satisfied by a constant code


# ------------------------------------------------------------------ model
def test_tiny_model_layout_and_config_validation():
    config = DalleTokenizerConfig.tiny()
    model = DalleTokenizer(config)
    names = set(model.state_dict())
    assert "blocks.group_1.block_1.res_path.conv_1.weight" in names and "blocks.output.conv.bias" in names
    assert "blocks.group_2.block_1.id_path.weight" in names and "blocks.group_1.block_1.id_path.weight" not in names
    assert model.blocks.group_1.block_1.post_gain == 1 / 64 and not hasattr(model.blocks.group_4, "pool")
    assert model.blocks.input.weight.shape == (16, 3, 7, 7) and model.blocks.output.conv.weight.shape == (
        64,
        128,
        1,
        1,
    )
    assert not model.blocks.input.bias.detach().any()
    default = DalleTokenizerConfig()
    assert (default.hidden_size, default.vocab_size, default.image_size, default.num_layers) == (256, 8192, 112, 8)
    with pytest.raises(ValueError, match="hidden_size=18 must be divisible by 4"):
        DalleTokenizerConfig(hidden_size=18)
    with pytest.raises(ValueError, match="vocab_size must be a positive integer"):
        DalleTokenizerConfig(vocab_size=0)
    with pytest.raises(ValueError, match="channels"):
        model(torch.zeros(1, 1, 16, 16))


def test_reference_forward_is_the_original_module_forward(original):
    """The in-test reference agrees with the original modules' own forward (Conv2d / EncoderBlock as in dall_e)."""
    encoder, state, pixels = original

    def conv_forward(self, x):
        return F.conv2d(x, self.w, self.b, padding=(self.kw - 1) // 2)

    def block_forward(self, x):
        return self.id_path(x) + self.post_gain * self.res_path(x)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Conv2d, "forward", conv_forward, raising=False)
        patch.setattr(EncoderBlock, "forward", block_forward, raising=False)
        with torch.no_grad():
            torch.testing.assert_close(encoder.blocks(pixels), reference_logits(state, pixels), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ OpenAI pickle through the command line
def test_openai_pickle_converts_through_the_command_line(converted_cli, openai_pickle, original):
    output, stdout = converted_cli
    assert {"dall_e.encoder Encoder", "dall_e.encoder EncoderBlock", "dall_e.utils Conv2d"} <= pickled_globals(
        openai_pickle
    )
    with pytest.raises(Exception, match="dall_e"):  # not loadable weights-only: it pickles the module classes
        torch.load(openai_pickle, weights_only=True)
    assert "source: pickled dall_e.encoder.Encoder (restricted unpickler)" in stdout
    assert (
        "converted: 74" in stdout
        and "dall_e.encoder.Encoder" in stdout
        and "torch._utils._rebuild_tensor_v2" in stdout
    )
    assert {p.name for p in output.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    assert set(load_file(output / "model.safetensors")) == set(
        DalleTokenizer(DalleTokenizerConfig.tiny()).state_dict()
    )
    model = DalleTokenizer.from_pretrained(output).eval()
    config = model.config
    assert (config.hidden_size, config.vocab_size, config.group_count, config.num_blocks_per_group) == (16, 64, 4, 2)
    assert config.image_size == IMAGE and config.architectures == ["DalleTokenizer"]
    check_parity(model, original[1], original[2])


def test_save_load_round_trip_and_auto_model(converted_cli, original, tmp_path):
    output, _ = converted_cli
    register_dalle_tokenizer()
    register_dalle_tokenizer()  # idempotent
    assert isinstance(AutoConfig.from_pretrained(output), DalleTokenizerConfig)
    model = AutoModel.from_pretrained(output).eval()
    assert type(model) is DalleTokenizer
    model.save_pretrained(tmp_path)
    reloaded = DalleTokenizer.from_pretrained(tmp_path).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    check_parity(reloaded, original[1], original[2])


@pytest.mark.filterwarnings("ignore")  # torch's legacy loader cannot find the stand-ins' source (nothing to compare)
def test_legacy_format_pickle_converts(converter, original, tmp_path):
    """A pre-1.6 (non-zip) torch.save of the module goes through the same restricted unpickler."""
    encoder, state, pixels = original
    path = tmp_path / "encoder.pkl"
    with fake_dall_e():
        torch.save(encoder, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    report = converter.convert(path, tmp_path / "out", IMAGE)
    assert report["source"].startswith("pickled dall_e.encoder.Encoder") and report["converted"] == 74
    check_parity(DalleTokenizer.from_pretrained(tmp_path / "out").eval(), state, pixels)


# ------------------------------------------------------------------ plain state dicts (MMPretrain's dalle_encoder.pth)
def test_plain_state_dict_converts(converter, original, tmp_path):
    _, state, pixels = original
    assert "blocks.input.w" in state and "blocks.group_2.block_1.id_path.w" in state
    assert not any(k.startswith("blocks.group_1.block_1.id_path") for k in state)  # n_in == n_out: Identity
    path = tmp_path / "dalle_encoder.pth"
    torch.save(state, path)
    report = converter.convert(path, tmp_path / "out", IMAGE)
    assert report["source"] == "state dict (weights_only=True)" and report["converted"] == len(state) == 74
    check_parity(DalleTokenizer.from_pretrained(tmp_path / "out").eval(), state, pixels)
    # mmengine-style wrapper with DDP prefixes
    torch.save({"meta": {"epoch": 1}, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    report = converter.convert(path, tmp_path / "out2", IMAGE)
    assert report["ignored"] == ["meta"]
    check_parity(DalleTokenizer.from_pretrained(tmp_path / "out2").eval(), state, pixels)


def test_wrong_and_missing_keys_are_named(converter, original, tmp_path):
    _, state, _ = original
    broken = dict(state)
    del broken["blocks.group_2.block_1.id_path.w"]
    broken["blocks.group_1.block_1.extra.w"] = torch.zeros(1)
    broken["encoder.something"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as error:
        converter.convert_checkpoint(broken, "broken.pth", IMAGE)
    message = str(error.value)
    assert "Missing keys (1): blocks.group_2.block_1.id_path.w" in message
    assert "blocks.group_1.block_1.extra.w" in message and "encoder.something" in message
    transposed = dict(state)
    transposed["blocks.group_1.block_1.res_path.conv_4.w"] = state[
        "blocks.group_1.block_1.res_path.conv_4.w"
    ].transpose(0, 1)
    with pytest.raises(CheckpointMismatchError, match=r"res_path\.conv_4\.w \(4, 16, 1, 1\) != \(16, 4, 1, 1\)"):
        converter.convert_checkpoint(transposed, "transposed.pth", IMAGE)
    with pytest.raises(CheckpointMismatchError, match="blocks.input.w"):
        converter.convert_checkpoint({"weight": torch.zeros(1)}, "other.pth", IMAGE)


def test_pickled_module_must_match_the_converted_layout(converter, tmp_path):
    torch.manual_seed(2)
    encoder = Encoder()
    encoder.blocks.group_3.block_2.post_gain = 0.5
    encoder.blocks.group_1.pool.ceil_mode = True
    encoder.n_hid = 32
    path = save_whole_module(encoder, tmp_path / "encoder.pkl")
    with pytest.raises(CheckpointMismatchError) as error:
        converter.convert(path, tmp_path / "out", IMAGE)
    message = str(error.value)
    assert "blocks.group_3.block_2: post_gain=0.5" in message and "blocks.group_1.pool: MaxPool2d" in message
    assert "Encoder.n_hid=32 but the weights say 16" in message
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ malicious pickles
class Payload:
    def __init__(self, reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


def payloads(marker):
    return {
        "os.system": ((os.system, (f"echo pwned > {marker}",)), f"{os.system.__module__}.system"),
        "builtins.eval": ((builtins.eval, (f"open({str(marker)!r}, 'w').write('pwned')",)), "builtins.eval"),
        "subprocess": ((subprocess.check_call, (["sh", "-c", f"echo pwned > {marker}"],)), "subprocess.check_call"),
    }


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "subprocess"])
def test_malicious_pickle_is_refused_before_anything_runs(converter, tmp_path, kind, capsys):
    marker = tmp_path / "pwned.txt"
    reduce, refused = payloads(marker)[kind]
    path = tmp_path / "encoder.pkl"
    torch.save({"blocks.input.w": Payload(reduce)}, path)
    module, name = refused.rsplit(".", 1)
    # armed: the pickle calls it (protocol 2 writes Python 2 names: __builtin__.eval, commands.check_call)
    assert (module, name) in {converter._normalize(*g.split(" ")) for g in pickled_globals(path)}
    with pytest.raises(converter.UnsafePickleError, match=rf"refused to unpickle the global {refused}\b"):
        converter.convert(path, tmp_path / "out", IMAGE)
    assert not marker.exists() and not (tmp_path / "out").exists()
    # the command line reports it and exits 2
    assert converter.main(["--checkpoint_path", str(path), "--output_dir", str(tmp_path / "out")]) == 2
    assert f"refused to unpickle the global {refused}" in capsys.readouterr().err
    assert not marker.exists()


def test_payload_nested_in_a_genuine_encoder_is_refused(converter, tmp_path):
    """The dall_e classes are admitted, the payload further down the same pickle is not."""
    marker = tmp_path / "pwned.txt"
    torch.manual_seed(3)
    encoder = Encoder()
    encoder.blocks.group_2.block_1.requires_grad = Payload(payloads(marker)["os.system"][0])
    path = save_whole_module(encoder, tmp_path / "encoder.pkl")
    with pytest.raises(converter.UnsafePickleError, match=f"{os.system.__module__}.system"):
        converter.convert(path, tmp_path / "out", IMAGE)
    assert not marker.exists()


def test_torchscript_archive_is_refused(converter, openai_pickle, tmp_path):
    """torch.load would hand a TorchScript archive to torch.jit.load instead of the restricted unpickler."""
    path = tmp_path / "scripted.pkl"
    with zipfile.ZipFile(openai_pickle) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            target.writestr(item, source.read(item))
        target.writestr("archive/constants.pkl", b"")
    with pytest.raises(converter.UnsafePickleError, match="TorchScript"):
        converter.load_pickled_encoder(path)
