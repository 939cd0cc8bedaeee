"""Learning you can see: the digits probe (`hf_mim.evaluation.learning`), the main job's before / after report and
PCA picture, the CPU recipes of the embedded default, and the collapse monitor of the training logs."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from hf_mim import CapiConfig, CapiImageProcessor, CapiModel, IJepaConfig, IJepaImageProcessor, IJepaModel
from hf_mim.data.labelled import digits_dataset
from hf_mim.evaluation.learning import (
    PROBE_SPLIT_SEED,
    PROBE_TEST_FRACTION,
    digits_probe_data,
    evaluate_probes,
    format_probe_tables,
    pca_picture,
    pca_rgb,
    pca_shared_scale,
    probe_backbone,
    probe_raw_pixels,
    random_baseline,
    transformed_digits_probe_data,
)
from hf_mim.evaluation.transformed_digits import DigitVariation, draw_digit, transformed_digits_dataset
from hf_mim.presets import CPU_RECIPES
from hf_mim.trainers.feature_health import collapse_warning, warn_if_collapsing

from .helpers import run_script


@pytest.fixture(scope="module")
def probe_data():
    return digits_probe_data(CapiImageProcessor, 28)


def test_probe_data_is_the_held_out_split(probe_data):
    assert probe_data.train_pixels.shape == (1257, 3, 28, 28) and probe_data.test_pixels.shape == (540, 3, 28, 28)
    assert sorted(probe_data.test_labels.unique().tolist()) == list(range(10))
    # The embedded default trains on the probe's training split: no test digit is ever trained on.
    train = digits_dataset("train", 8, test_fraction=PROBE_TEST_FRACTION, seed=PROBE_SPLIT_SEED)
    test = digits_dataset("test", 8, test_fraction=PROBE_TEST_FRACTION, seed=PROBE_SPLIT_SEED)
    train_images = {np.asarray(image).tobytes() for image in train["image"]}
    duplicates_in_data = len(train) - len(train_images)  # load_digits has a few identical images
    shared = sum(np.asarray(image).tobytes() in train_images for image in test["image"])
    assert duplicates_in_data < 20 and shared < 20


def test_raw_pixels_and_a_random_backbone(probe_data):
    raw = probe_raw_pixels(probe_data)
    assert 0.95 < raw["knn_top1"] <= 1.0  # digits are easy for raw pixels: the bar a representation should approach
    torch.manual_seed(0)
    model = CapiModel(CapiConfig.tiny(patch_size=7, image_size=28))
    results = probe_backbone(model, probe_data)
    for feature in ("pooled", "mean_patch"):
        assert 0.1 < results[feature]["knn_top1"] < raw["knn_top1"]
        assert 1.0 < results[feature]["effective_rank"] <= 64
    # A constant representation is at chance and has rank ~1.
    model.embeddings.patch_embeddings.projection.weight.data.zero_()
    collapsed = probe_backbone(model, probe_data)
    assert collapsed["mean_patch"]["effective_rank"] < 1.01
    results = evaluate_probes({"digits": probe_data}, {"initialisation": model})
    table = format_probe_tables(results, {"digits": probe_data})
    assert "clean digits" in table and "raw pixels" in table and "initialisation" in table and "%" in table


def test_transformed_digits_are_seeded_and_harder_for_pixels(probe_data):
    first, again = (transformed_digits_dataset("test", 28) for _ in range(2))
    assert [np.asarray(a).tobytes() for a in first["image"][:50]] == [
        np.asarray(b).tobytes() for b in again["image"][:50]
    ]
    other_seed = transformed_digits_dataset("test", 28, seed=1)
    assert np.asarray(other_seed["image"][0]).tobytes() != np.asarray(first["image"][0]).tobytes()
    assert (
        first["label"] == digits_dataset("test", 8, test_fraction=PROBE_TEST_FRACTION, seed=PROBE_SPLIT_SEED)["label"]
    )
    # Each digit lands somewhere else: the centre of its strokes moves by pixels, not by rounding.
    centres = []
    for image in first["image"][:40]:
        ink = np.asarray(image.convert("L"), dtype=float)
        rows, columns = np.indices(ink.shape)
        centres.append(((rows * ink).sum() / ink.sum(), (columns * ink).sum() / ink.sum()))
    assert np.std(centres, axis=0).min() > 1.5
    rng = np.random.default_rng(0)
    coloured = [draw_digit(np.full((8, 8), 16.0), 16, DigitVariation(colour=True), rng) for _ in range(5)]
    assert len({np.asarray(image).tobytes() for image in coloured}) == 5  # the colour option draws new colours
    # Raw pixels: near-perfect on the clean digits, far below on the transformed ones (same split, same 28 px).
    transformed = transformed_digits_probe_data(CapiImageProcessor, 28)
    assert transformed.test_pixels.shape == probe_data.test_pixels.shape
    assert torch.equal(transformed.test_labels, probe_data.test_labels)
    clean_raw, hard_raw = probe_raw_pixels(probe_data)["knn_top1"], probe_raw_pixels(transformed)["knn_top1"]
    assert clean_raw > 0.95 and 0.3 < hard_raw < 0.85, (clean_raw, hard_raw)


def test_random_baseline_is_the_models_own_config():
    torch.manual_seed(3)
    trained = CapiModel(CapiConfig.tiny(patch_size=7, image_size=28))
    baseline = random_baseline(trained, seed=0)
    assert type(baseline) is CapiModel and baseline.config.to_dict() == trained.config.to_dict()
    assert baseline.config.patch_size == 7  # not capi-tiny's 14
    weight = "embeddings.patch_embeddings.projection.weight"
    assert not torch.equal(baseline.state_dict()[weight], trained.state_dict()[weight])
    assert torch.equal(random_baseline(trained, seed=0).state_dict()[weight], baseline.state_dict()[weight])


def test_pca_rgb_is_shared_over_images():
    features = torch.randn(2, 3, 4, 16)
    colours = pca_rgb(features)
    assert colours.shape == (2, 3, 4, 3) and colours.dtype == np.uint8
    assert colours.min() == 0 and colours.max() == 255  # min-max over all images together
    assert pca_rgb(torch.randn(5, 2)).shape == (5, 3)  # fewer than 3 dimensions: padded


def test_pca_picture_shares_one_colour_scale():
    generator = torch.Generator().manual_seed(0)
    # "structured": three strong directions over a weak 16-d background; "noise": isotropic, no dominant direction.
    structured = torch.randn(2, 6, 6, 3, generator=generator) @ torch.randn(3, 16, generator=generator) * 5.0
    structured = structured + 0.1 * torch.randn(2, 6, 6, 16, generator=generator)
    noise = torch.randn(2, 6, 6, 16, generator=generator)
    shared = pca_shared_scale({"structured": structured, "noise": noise})
    (strong, strong_share), (weak, weak_share) = shared["structured"], shared["noise"]
    assert strong.shape == weak.shape == (2, 6, 6, 3) and strong.dtype == np.uint8
    assert strong_share > 0.99 and weak_share < 0.5
    saturation = {name: np.abs(colours.astype(float) - 127.5).mean() for name, (colours, _) in shared.items()}
    assert saturation["structured"] > 1.5 * saturation["noise"]  # per-row min-max would make both full range
    # Each row is measured in its own feature spread: scaling one model's features changes nothing.
    again = pca_shared_scale({"structured": 7.0 * structured, "noise": noise})
    assert np.array_equal(again["noise"][0], weak) and np.array_equal(again["structured"][0], strong)
    pixels = torch.zeros(2, 3, 24, 24)
    picture = pca_picture({"initialisation": noise, "trained": structured}, pixels, [0.5] * 3, [0.5] * 3, cell=24,
                          caption=["k-NN top-1 ..."])  # fmt: skip
    assert picture.size == (150 + 2 * 24, 3 * 24 + 14 + 8)


def test_collapse_warning_thresholds(caplog):
    assert collapse_warning(20.0, 0.1, batch_size=64, width=64) is None
    assert "effective rank 1.10" in collapse_warning(1.1, 0.1, 64, 64)
    assert "feature std" in collapse_warning(20.0, 1e-6, 64, 64)
    assert collapse_warning(2.5, 0.1, 64, 64) is not None  # below 5 % of 64
    assert collapse_warning(2.5, 0.1, 16, 64) is None  # a batch of 16 allows at most rank 16
    logs = {"effective_rank": 1.0, "feature_std": 0.0}
    with caplog.at_level("WARNING"):
        assert warn_if_collapsing(logs, 8, 32, step=7) is not None
    assert logs["collapse_warning"] == 1.0 and "step 7: Representation collapse?" in caplog.text


def test_cpu_recipes_exist_for_every_method():
    assert set(CPU_RECIPES) == {"capi", "ijepa", "cae", "vicregl"}
    for arguments in CPU_RECIPES.values():
        assert "--max_steps" in arguments and len(arguments) % 2 == 0


def test_main_job_prints_before_after_and_writes_the_picture(tmp_path):
    output = tmp_path / "run"
    result = run_script(
        "examples/pytorch/pretraining/run_ijepa.py",
        "--output_dir", str(output), "--max_steps", "3", "--per_device_train_batch_size", "8",
        "--report_to", "none", "--disable_tqdm", "true",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Learning report: weighted k-NN top-1" in result.stdout and "raw pixels" in result.stdout
    assert "clean digits" in result.stdout and "transformed digits" in result.stdout
    report = json.loads((output / "learning_report.json").read_text())
    probes = report["probes"]
    for probe in ("digits", "transformed_digits"):
        for when in ("initialisation", "trained"):
            for feature in ("pooled", "mean_patch"):
                assert 0.0 < probes[probe][when][feature]["knn_top1"] <= 1.0
    assert (
        probes["digits"]["raw_pixels"]["knn_top1"]
        > 0.95
        > 0.85
        > probes["transformed_digits"]["raw_pixels"]["knn_top1"]
    )
    picture = PIL.Image.open(output / "backbone" / "pca_features.png")
    assert picture.width > picture.height > 0
    card = (output / "backbone" / "README.md").read_text()
    assert "## Learning report" in card and "transformed digits" in card
    # The CPU recipe applied (the embedded default), and the report's "after" is the exported backbone.
    config = IJepaConfig.from_pretrained(output / "backbone")
    recipe = dict(zip(CPU_RECIPES["ijepa"][::2], CPU_RECIPES["ijepa"][1::2]))
    for override in recipe.get("--config_overrides", "").split(","):
        if override:
            key, value = override.split("=")
            assert str(getattr(config, key)) == value, key
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 3  # the command line won
    backbone = IJepaModel.from_pretrained(output / "backbone")
    probe = digits_probe_data(IJepaImageProcessor, config.image_size)
    again = probe_backbone(backbone, probe)
    assert again["pooled"]["knn_top1"] == pytest.approx(probes["digits"]["trained"]["pooled"]["knn_top1"])


def test_no_report_when_disabled_or_on_own_data(tmp_path):
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(images / f"{i}.png")
    common = (
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "2",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    )
    result = run_script("examples/pytorch/pretraining/run_capi.py", "--train_dir", str(tmp_path / "images"),
                        "--output_dir", str(tmp_path / "own"), *common)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Learning report" not in result.stdout and not (tmp_path / "own" / "learning_report.json").exists()
    # Own data keeps the preset as it is (no CPU recipe): capi-tiny's patch 14.
    assert CapiConfig.from_pretrained(tmp_path / "own" / "backbone").patch_size == 14
