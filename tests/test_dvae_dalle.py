"""hf_mim.models.cae.dvae_dalle + hf_mim.trainers.dvae_trainer (a DALL-E-style dVAE trained on your own images) and
examples/pytorch/pretraining/train_dalle_tokenizer.py: shapes, that training reconstructs better than the untrained
model and is repeatable, the caller's RNG, clear errors, and the script's tokenizer folder."""

import io
import json
import math

import datasets
import PIL.Image
import pytest
import torch

from hf_mim.models.cae.dvae_dalle import DiscreteVae
from hf_mim.models.cae.tokenizer_dalle import DalleTokenizer, DalleTokenizerConfig, map_pixels
from hf_mim.trainers.dvae_trainer import DvaeTrainingArguments, codebook_collapse_warning, train_dalle_tokenizer

from .helpers import load_script

CONFIG = DalleTokenizerConfig.tiny(hidden_size=8, num_blocks_per_group=1, vocab_size=16)


def bar_images(count: int = 96, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Mapped images of one bright horizontal or vertical bar at a random place: structure a dVAE can learn."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(count, 3, size, size)
    for index in range(count):
        start = int(torch.randint(0, size - 8, (1,), generator=generator))
        if index % 2:
            images[index, :, start : start + 8] = 1.0
        else:
            images[index, :, :, start : start + 8] = 1.0
    return map_pixels(images)


@pytest.mark.parametrize("group_count", [2, 3, 4])
def test_decoder_mirrors_the_encoder(group_count):
    config = DalleTokenizerConfig.tiny(hidden_size=8, num_blocks_per_group=1, vocab_size=16, group_count=group_count)
    dvae = DiscreteVae(config)
    images = bar_images(2)
    logits = dvae.encoder(images)
    grid = 32 // 2 ** (group_count - 1)
    assert logits.shape == (2, 16, grid, grid)
    assert dvae.decoder(torch.softmax(logits, dim=1)).shape == (2, 3, 32, 32)
    # widths in reverse (8 x 2**(G-1) ... 8), residual paths opening with a 1 x 1 conv (dall_e's DecoderBlock)
    first, last = dvae.decoder.blocks.group_1.block_1, dvae.decoder.blocks[-2][0]
    assert dvae.decoder.blocks.input.in_channels == 16 and first.res_path.conv_1.in_channels == 8 * 2 ** (
        group_count - 1
    )
    assert last.res_path.conv_4.out_channels == 8
    assert [first.res_path[i].kernel_size[0] for i in (1, 3, 5, 7)] == [1, 3, 3, 3]
    assert [dvae.encoder.blocks.group_1.block_1.res_path[i].kernel_size[0] for i in (1, 3, 5, 7)] == [3, 3, 3, 1]


def test_loss_terms_at_known_points():
    dvae = DiscreteVae(CONFIG)
    images = bar_images(4)
    outputs = dvae(images, temperature=1.0, beta=0.5)
    assert outputs["loss"].item() == pytest.approx((outputs["mse"] + 0.5 * outputs["kl"]).item(), rel=1e-6)
    with torch.no_grad():  # zero logits: a uniform posterior (KL 0), and every argmax is code 0 (perplexity 1)
        dvae.encoder.blocks.output.conv.weight.zero_()
        dvae.encoder.blocks.output.conv.bias.zero_()
    outputs = dvae(images, temperature=1.0, beta=0.5)
    assert abs(outputs["kl"].item()) < 1e-6 and outputs["perplexity"].item() == pytest.approx(1.0)
    with torch.no_grad():  # bias only on code 5, huge: a one-hot posterior, KL = log V
        dvae.encoder.blocks.output.conv.bias[5] = 100.0
    assert dvae(images, 1.0, 0.0)["kl"].item() == pytest.approx(math.log(16), abs=1e-4)


def test_training_reconstructs_better_and_is_repeatable():
    images = bar_images()
    args = DvaeTrainingArguments(steps=80, batch_size=16, learning_rate=3e-3, kl_weight=0.004, seed=3)
    tokenizer, history = train_dalle_tokenizer(images, CONFIG, args, log_every=10)
    assert isinstance(tokenizer, DalleTokenizer) and not tokenizer.training
    assert not any(p.requires_grad for p in tokenizer.parameters())
    # the untrained model reconstructs by chance; training must do clearly better on the same images
    assert history[-1]["mse"] < 0.5 * history[0]["mse"], history
    assert [h["step"] for h in history] == [0, 10, 20, 30, 40, 50, 60, 70, 79]
    assert history[-1]["hard_mse"] < 0.5 * history[0]["mse"]  # the argmax codes reconstruct too
    assert history[-1]["temperature"] == pytest.approx(1 / 16)
    ids = tokenizer.get_codebook_indices(images)
    assert ids.shape == (96, 16) and ids.unique().numel() >= 2  # bars in different places get different codes
    again, _ = train_dalle_tokenizer(images, CONFIG, args, log_every=10)
    for name, tensor in again.state_dict().items():
        assert torch.equal(tensor, tokenizer.state_dict()[name]), name


def test_training_leaves_the_callers_random_stream_alone():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    train_dalle_tokenizer(bar_images(16), CONFIG, DvaeTrainingArguments(steps=2, batch_size=8))
    assert torch.equal(torch.rand(3), expected)


def test_schedules():
    args = DvaeTrainingArguments(steps=101, kl_weight=0.2)
    assert args.temperature(0) == 1.0 and args.temperature(100) == pytest.approx(1 / 16)
    assert args.temperature(50) == pytest.approx(0.25)  # exponential: the geometric mean halfway
    assert args.beta(0) == 0 and args.beta(25) == pytest.approx(0.1) and args.beta(100) == pytest.approx(0.2)
    assert args.lr_factor(0) == pytest.approx(0.2) and args.lr_factor(4) == 1.0 and args.lr_factor(100) < 1e-3


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="must be \\(N, 3, H, W\\)"):
        train_dalle_tokenizer(torch.zeros(16, 1, 32, 32), CONFIG)
    with pytest.raises(ValueError, match="multiples of the tokenizer's downsampling \\(8\\)"):
        train_dalle_tokenizer(torch.zeros(16, 3, 30, 30), CONFIG)
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        train_dalle_tokenizer(torch.zeros(16, 3, 32, 32), CONFIG)
    broken = bar_images(16)
    broken[3, 0, 5, 5] = float("nan")
    with pytest.raises(RuntimeError, match="diverged at step 0"):
        train_dalle_tokenizer(broken, CONFIG, DvaeTrainingArguments(steps=3, batch_size=16))
    with pytest.raises(ValueError, match="log_every must be >= 1"):
        train_dalle_tokenizer(bar_images(16), CONFIG, DvaeTrainingArguments(steps=1, batch_size=8), log_every=0)
    with pytest.raises(ValueError, match="temperature_end"):
        DvaeTrainingArguments(temperature_end=2.0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        DvaeTrainingArguments(steps=0)


def _png(value: int) -> dict:
    buffer = io.BytesIO()
    PIL.Image.new("L", (12, 12), value).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def test_training_views_skip_corrupt_images(caplog):
    script = load_script("examples/pytorch/pretraining/train_dalle_tokenizer.py")
    transform = script.TwoViewCropTransform.cae_v1(32, second_size=32)
    rows = [{"image": _png(200)}, {"image": {"bytes": b"not an image", "path": "broken.png"}}, {"image": _png(10)}]
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    views = script.training_views(rows, "image", transform, 5, seed=0)
    assert torch.equal(torch.rand(2), expected)  # the caller's stream is untouched
    assert torch.equal(script.training_views(rows, "image", transform, 5, seed=0), views)  # seeded
    assert views.shape == (5, 3, 32, 32)
    assert views.min() >= 0.1 - 1e-6 and views.max() <= 0.9 + 1e-6  # logit-Laplace mapped
    assert "broken.png" in caplog.text
    with pytest.raises(ValueError, match="No decodable image"):
        script.training_views(rows[1:2], "image", transform, 2, seed=0)


def test_script_writes_a_loadable_tokenizer(tmp_path, capsys):
    script = load_script("examples/pytorch/pretraining/train_dalle_tokenizer.py")
    out = tmp_path / "tokenizer"
    argv = ["--output_dir", str(out), "--steps", "3", "--batch_size", "8", "--max_train_samples", "16",
            "--views_per_image", "1", "--vocab_size", "32"]  # fmt: skip
    assert script.main(argv) == 0
    tokenizer = DalleTokenizer.from_pretrained(out)
    assert tokenizer.config.vocab_size == 32 and tokenizer.config.image_size == 32
    summary = json.loads((out / "dvae_history.json").read_text())
    assert summary["views"] == 16 and 1 <= summary["codes_used"] <= 32
    assert summary["dvae_args"]["steps"] == 3 and len(summary["history"]) == 1 + 1  # step 0 and the last
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))
    assert summary["history"][-1]["hard_mse"] > 0 and summary["block_average_mse"] > 0
    # the collapse warning is in the summary exactly when under a quarter of the codes are used (8 of 32)
    printed = capsys.readouterr().out
    assert ("warning: codebook collapse" in printed) == (summary["codes_used"] < 8) == (summary["warning"] is not None)
    with pytest.raises(ValueError, match="--tokenizer_image_size"):
        script.main(["--output_dir", str(tmp_path / "x"), "--image_size", "64"])


def test_codebook_collapse_is_named_with_what_to_try():
    message = codebook_collapse_warning(2, 64)
    assert message.startswith("codebook collapse: the tokenizer uses only 2 of its 64 codes (3%")
    for option in ("--steps", "--temperature_end", "--kl_weight", "--learning_rate"):  # the script's own options
        assert option in message
        assert option.removeprefix("--") in DvaeTrainingArguments.__dataclass_fields__
    assert codebook_collapse_warning(15, 64) is not None
    assert codebook_collapse_warning(16, 64) is None  # a quarter is enough
    assert codebook_collapse_warning(43, 64) is None  # the default recipe on digits


def test_a_tokenizer_with_more_codes_than_the_cae_head_is_refused():
    from hf_mim import CaeConfig, CaeForPreTraining

    model = CaeForPreTraining(CaeConfig.tiny())  # vocab_size 64
    model.set_target_model(DalleTokenizer(DalleTokenizerConfig.tiny(vocab_size=64)))
    with pytest.raises(ValueError, match="has 128 codes but the CAE head predicts 64"):
        model.set_target_model(DalleTokenizer(DalleTokenizerConfig.tiny(vocab_size=128)))


def test_capped_views_come_from_random_images_not_the_first_ones(tmp_path, monkeypatch):
    """A folder sorted by class: the first half dark, the second bright; 8 views of 20 images, one each."""
    script = load_script("examples/pytorch/pretraining/train_dalle_tokenizer.py")
    rows = datasets.Dataset.from_dict({"image": [_png(10)] * 10 + [_png(240)] * 10})
    monkeypatch.setattr(script, "load_training_data", lambda data_args: rows)
    captured = {}

    class Drawn(Exception):
        pass

    def record(views, *args):  # stop once the views are drawn
        captured["views"] = views
        raise Drawn

    monkeypatch.setattr(script, "train_dalle_tokenizer", record)
    with pytest.raises(Drawn):
        script.main(["--output_dir", str(tmp_path / "x"), "--views_per_image", "1", "--max_views", "8"])
    brightness = captured["views"].mean(dim=(1, 2, 3))
    assert len(brightness) == 8
    assert (brightness < 0.3).any() and (brightness > 0.7).any()  # both halves of the folder are drawn from


def test_script_needs_a_sample_count_for_streamed_data(tmp_path, monkeypatch):
    script = load_script("examples/pytorch/pretraining/train_dalle_tokenizer.py")
    streamed = datasets.Dataset.from_dict({"image": [_png(100)] * 4}).to_iterable_dataset()
    monkeypatch.setattr(script, "load_training_data", lambda data_args: streamed)
    with pytest.raises(ValueError, match="needs --max_train_samples"):
        script.main(["--output_dir", str(tmp_path / "x")])
    argv = ["--output_dir", str(tmp_path / "x"), "--max_train_samples", "4", "--steps", "1", "--batch_size", "8",
            "--views_per_image", "2"]  # fmt: skip
    assert script.main(argv) == 0
    assert json.loads((tmp_path / "x" / "dvae_history.json").read_text())["views"] == 8
