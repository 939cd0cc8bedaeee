import math

import numpy as np
import pytest
import torch

from hf_mim import CapiConfig, CapiModel, HfMimImageProcessor
from hf_mim.data.labelled import digits_dataset, pixel_values_for
from hf_mim.evaluation import extract_features, knn_accuracy, knn_classify
from hf_mim.evaluation.knn import extract_pooled_features

# ----------------------------------------------------------------------------------------------------- k-NN maths


def _clusters(num_classes, per_class, dim, spread, generator):
    centres = torch.randn(num_classes, dim, generator=generator) * 10
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return features, labels


def test_knn_separated_clusters_are_perfect():
    generator = torch.Generator().manual_seed(0)
    train_x, train_y = _clusters(5, 40, 16, 0.1, generator)
    test_x, test_y = _clusters(5, 20, 16, 0.1, torch.Generator().manual_seed(0))
    test_x = test_x + 0.05 * torch.randn(test_x.shape, generator=generator)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=20) == 1.0
    assert torch.equal(knn_classify(train_x, train_y, test_x, k=5), test_y)
    # Scale does not matter: features are L2-normalised (cosine similarity).
    assert knn_accuracy(train_x * 100, train_y, test_x * 0.01, test_y, k=20) == 1.0


def test_knn_random_labels_is_near_chance():
    generator = torch.Generator().manual_seed(1)
    num_classes = 10
    train_x = torch.randn(2000, 32, generator=generator)
    train_y = torch.randint(0, num_classes, (2000,), generator=generator)
    test_x = torch.randn(2000, 32, generator=generator)
    test_y = torch.randint(0, num_classes, (2000,), generator=generator)
    accuracy = knn_accuracy(train_x, train_y, test_x, test_y, k=20, num_classes=num_classes)
    # Chance is 0.1; with 2000 test points the std of the accuracy is ~0.007.
    assert 0.06 < accuracy < 0.14


def test_knn_chunking_does_not_change_predictions():
    generator = torch.Generator().manual_seed(2)
    train_x, train_y = torch.randn(300, 8, generator=generator), torch.randint(0, 4, (300,), generator=generator)
    test_x = torch.randn(101, 8, generator=generator)
    full = knn_classify(train_x, train_y, test_x, k=10, chunk_size=10_000)
    chunked = knn_classify(train_x, train_y, test_x, k=10, chunk_size=7)
    assert full.shape == (101,) and full.dtype == torch.long
    assert torch.equal(full, chunked)


def _unit(angle_degrees):
    angle = math.radians(angle_degrees)
    return torch.tensor([math.cos(angle), math.sin(angle)])


def test_temperature_weighting_decides_a_crafted_case():
    # Query along the x axis; one class-1 neighbour at cosine 1.0, two class-0 neighbours at cosine ~0.5.
    train_x = torch.stack([_unit(0.0), _unit(60.0), _unit(-60.0)])
    train_y = torch.tensor([1, 0, 0])
    query = _unit(0.0)[None]
    # Majority (and a near-flat weighting) picks class 0 by 2 votes to 1 ...
    assert knn_classify(train_x, train_y, query, k=3, temperature=None).item() == 0
    assert knn_classify(train_x, train_y, query, k=3, temperature=100.0).item() == 0
    # ... the sharp DINO temperature lets the much closer neighbour win: exp(1/0.07) >> 2 exp(0.5/0.07).
    assert knn_classify(train_x, train_y, query, k=3, temperature=0.07).item() == 1
    # k=1 ignores the vote entirely.
    assert knn_classify(train_x, train_y, query, k=1, temperature=None).item() == 1


def test_exact_tie_goes_to_the_lowest_class_and_tiny_temperature_is_finite():
    # Two neighbours at the same similarity with different labels: a genuine tie, broken by the lowest class index.
    train_x = torch.stack([_unit(30.0), _unit(-30.0)])
    train_y = torch.tensor([3, 1])
    query = _unit(0.0)[None]
    assert knn_classify(train_x, train_y, query, k=2, temperature=0.07, num_classes=4).item() == 1
    # Breaking the tie by similarity, with a temperature small enough that a naive exp(sim / T) overflows.
    train_x = torch.stack([_unit(29.0), _unit(-30.0)])
    assert knn_classify(train_x, train_y, query, k=2, temperature=1e-4, num_classes=4).item() == 3


def test_knn_k_larger_than_train_set_and_input_checks():
    train_x = torch.eye(3)
    train_y = torch.tensor([0, 1, 2])
    assert torch.equal(knn_classify(train_x, train_y, torch.eye(3), k=50), train_y)
    with pytest.raises(ValueError, match="num_classes"):
        knn_classify(train_x, train_y, torch.eye(3), num_classes=2)
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(train_x, train_y, torch.eye(3), temperature=0.0)
    with pytest.raises(ValueError, match="Feature sizes"):
        knn_classify(train_x, train_y, torch.ones(2, 4))


# ------------------------------------------------------------------------------------------- feature extraction


@pytest.fixture(scope="module")
def tiny_capi():
    torch.manual_seed(0)
    config = CapiConfig.tiny(decoder_hidden_size=48, decoder_num_attention_heads=4)
    return CapiModel(config)


def test_extract_features_shapes_and_poolings(tiny_capi):
    config = tiny_capi.config
    pixel_values = torch.randn(5, 3, 56, 56)
    tiny_capi.train()
    pooled = extract_features(tiny_capi, pixel_values, pooling="pooler", batch_size=2)
    patch_mean = extract_features(tiny_capi, pixel_values, pooling="mean_patch", batch_size=2)
    assert tiny_capi.training  # the training mode is restored
    assert pooled.shape == (5, config.decoder_hidden_size) and pooled.dtype == torch.float32
    assert patch_mean.shape == (5, config.hidden_size) and patch_mean.dtype == torch.float32
    assert not pooled.requires_grad and torch.isfinite(pooled).all() and torch.isfinite(patch_mean).all()

    tiny_capi.eval()
    with torch.no_grad():
        outputs = tiny_capi(pixel_values=pixel_values)
    torch.testing.assert_close(pooled, outputs.pooler_output, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(patch_mean, outputs.feature_map.mean(dim=(1, 2)), rtol=1e-4, atol=1e-5)
    # Batching does not change the features.
    torch.testing.assert_close(extract_features(tiny_capi, pixel_values, batch_size=5), pooled, rtol=1e-4, atol=1e-5)
    # Both poolings from one forward pass per batch (the learning probes' path) equal one pass per pooling.
    tiny_capi.train()
    both = extract_pooled_features(tiny_capi, pixel_values, ("pooler", "mean_patch"), batch_size=2)
    assert tiny_capi.training
    torch.testing.assert_close(both["pooler"], pooled, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both["mean_patch"], patch_mean, rtol=1e-4, atol=1e-5)


def test_extract_features_from_dict_batches(tiny_capi):
    pixel_values = torch.randn(6, 3, 56, 56)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    loader = torch.utils.data.DataLoader(
        [{"pixel_values": p, "labels": y} for p, y in zip(pixel_values, labels)], batch_size=4
    )
    features, collected = extract_features(tiny_capi, loader, pooling="mean_patch", return_labels=True)
    assert features.shape == (6, tiny_capi.config.hidden_size)
    assert torch.equal(collected, labels)
    torch.testing.assert_close(
        features, extract_features(tiny_capi, pixel_values, pooling="mean_patch"), rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ValueError, match="pooling"):
        extract_features(tiny_capi, pixel_values, pooling="cls")


# ---------------------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits16():
    return digits_dataset("train", image_size=16), digits_dataset("test", image_size=16)


def test_digits_splits_are_stratified_and_deterministic(digits16):
    train, test = digits16
    assert len(train) + len(test) == 1797
    assert len(test) == pytest.approx(0.25 * 1797, abs=1)
    assert set(train["label"]) == set(range(10)) and set(test["label"]) == set(range(10))
    train_counts = np.bincount(train["label"], minlength=10)
    test_counts = np.bincount(test["label"], minlength=10)
    np.testing.assert_allclose(test_counts / (train_counts + test_counts), 0.25, atol=0.02)
    assert isinstance(train[0]["label"], int)
    image = train[0]["image"]
    assert image.mode == "RGB" and image.size == (16, 16)
    array = np.asarray(image)
    assert array.min() == 0 and array.max() == 255 and (array[..., 0] == array[..., 2]).all()
    # Same arguments, same rows; another seed, another split.
    assert digits_dataset("test", image_size=16)["label"] == test["label"]
    assert digits_dataset("test", image_size=16, seed=1)["label"] != test["label"]


def test_digits_image_size_and_processor_pixel_values():
    test = digits_dataset("test", image_size=56, resample="bicubic")
    assert test[0]["image"].size == (56, 56)
    processor = HfMimImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    pixel_values = pixel_values_for(test.select(range(7)), processor, batch_size=3)
    assert pixel_values.shape == (7, 3, 56, 56) and pixel_values.dtype == torch.float32


def test_knn_on_raw_digit_pixels_is_accurate(digits16):
    # End to end on real data: raw pixels already separate the digits well, so the protocol must score high.
    train, test = digits16
    processor = HfMimImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    train_x = pixel_values_for(train, processor).flatten(1)
    test_x = pixel_values_for(test, processor).flatten(1)
    accuracy = knn_accuracy(train_x, torch.tensor(train["label"]), test_x, torch.tensor(test["label"]), k=10)
    assert accuracy > 0.9
