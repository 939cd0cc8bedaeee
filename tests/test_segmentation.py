"""Dense evaluation: metrics, the k-NN / logistic patch protocols, the linear head, the synthetic segmentation set,
paired transforms, and smoke runs of examples/pytorch/semantic-segmentation/run_semantic_segmentation.py."""

import json
import math
import re

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoBackbone
from transformers.modeling_outputs import BackboneOutput
from transformers.trainer_utils import EvalPrediction

import hf_mim
from hf_mim.data import SegmentationTransform, synthetic_segmentation_dataset, synthetic_segmentation_datasets
from hf_mim.data.segmentation import digit_mask, mask_to_array, reduce_labels, segmentation_collate
from hf_mim.evaluation import (
    FrozenBackboneSegmenter,
    LinearSegmentationHead,
    SegmentationComputeMetrics,
    SegmentationMetrics,
    dense_features,
    fit_logistic_regression,
    knn_segment,
    labelled_prediction_grid,
    patch_feature_bank,
    patch_labels,
    prediction_grid,
    resize_concat,
    upsample_patch_scores,
)

from .helpers import load_script

SCRIPT = "examples/pytorch/semantic-segmentation/run_semantic_segmentation.py"

# ------------------------------------------------------------------------------------------------------- metrics

# Two 2x4 images, 4 classes (class 3 never appears), one ignored pixel (255) whose prediction must not count.
TARGET = torch.tensor([[[0, 0, 1, 255], [1, 2, 2, 0]]])
PREDS = torch.tensor([[[0, 1, 1, 2], [1, 2, 0, 0]]])
# Counted (target, prediction) pairs: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (0,0) -> rows = target, columns = prediction.
CONFUSION = torch.tensor([[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])


def test_metrics_match_a_hand_computed_confusion_matrix():
    metric = SegmentationMetrics(num_labels=4)
    metric.update(PREDS, TARGET)
    # IoU = tp / (row + column - tp): 2 / (3 + 3 - 2), 2 / (2 + 3 - 2), 1 / (2 + 1 - 1), class 3 absent -> NaN.
    expected_iou = [0.5, 2 / 3, 0.5]
    result = metric.compute()
    assert torch.equal(metric.confmat, CONFUSION)
    assert torch.allclose(result["per_class_iou"][:3], torch.tensor(expected_iou))
    assert math.isnan(result["per_class_iou"][3])
    assert result["mean_iou"].item() == pytest.approx(sum(expected_iou) / 3)
    assert result["pixel_accuracy"].item() == pytest.approx(5 / 7)  # the ignored pixel is not counted
    assert torch.allclose(result["per_class_accuracy"][:3], torch.tensor([2 / 3, 1.0, 0.5]))
    assert result["mean_accuracy"].item() == pytest.approx((2 / 3 + 1.0 + 0.5) / 3)

    summary = metric.summary(["bg", "a", "b", "c"])
    assert summary["iou_a"] == pytest.approx(2 / 3) and math.isnan(summary["iou_c"])
    assert summary["accuracy_b"] == pytest.approx(0.5) and summary["pixel_accuracy"] == pytest.approx(5 / 7)

    # sklearn's macro jaccard over the non-ignored pixels (CAPI's metric) gives the same mean IoU.
    from sklearn.metrics import jaccard_score

    keep = TARGET != 255
    sklearn_miou = jaccard_score(TARGET[keep].numpy(), PREDS[keep].numpy(), average="macro")
    assert result["mean_iou"].item() == pytest.approx(sklearn_miou)


def test_metrics_accumulate_and_accept_logits_padding_and_reduced_labels():
    one_shot = SegmentationMetrics(num_labels=4)
    one_shot.update(PREDS, TARGET)
    split = SegmentationMetrics(num_labels=4)
    split.update(PREDS[..., :2], TARGET[..., :2])
    split.update(PREDS[..., 2:], TARGET[..., 2:])
    assert torch.equal(split.confmat, one_shot.confmat)

    # Logits at half resolution are resized to the target and arg-maxed; -100 (Trainer padding) is ignored.
    logits = F.one_hot(torch.tensor([[[0, 1], [2, 3]]]), 4).permute(0, 3, 1, 2).float()
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, -100, 3], [2, 2, 3, 3]]])
    metric = SegmentationMetrics(num_labels=4)
    metric.update(F.interpolate(logits, size=(4, 4), mode="nearest"), target)
    assert metric.compute()["pixel_accuracy"].item() == 1.0 and metric.confmat.sum() == 15
    metric.update(torch.tensor([[-100, 1]]), torch.tensor([[0, 1]]))  # a padded prediction is not counted
    assert metric.confmat.sum() == 16 and metric.compute()["pixel_accuracy"].item() == 1.0

    # reduce_labels (targets only): 0 -> ignored, k -> k - 1.
    metric = SegmentationMetrics(num_labels=3, reduce_labels=True)
    metric.update(torch.tensor([[2, 0, 1, 0]]), torch.tensor([[0, 1, 2, 3]]))  # reduced: [255, 0, 1, 2]
    assert metric.confmat.sum() == 3 and metric.compute()["pixel_accuracy"].item() == pytest.approx(2 / 3)
    assert reduce_labels(np.array([0, 1, 5, 255])).tolist() == [255, 0, 4, 255]


def test_trainer_compute_metrics_batches_equal_one_call():
    batched = SegmentationComputeMetrics(4, ["a", "b", "c", "d"])
    assert batched(EvalPrediction(PREDS[..., :2], TARGET[..., :2]), compute_result=False) == {}
    result = batched(EvalPrediction(PREDS[..., 2:], TARGET[..., 2:]), compute_result=True)
    whole = SegmentationComputeMetrics(4, ["a", "b", "c", "d"])(EvalPrediction(PREDS.numpy(), TARGET.numpy()))
    assert result["mean_iou"] == pytest.approx(whole["mean_iou"]) == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    # the state was reset after the result: a new evaluation starts from zero
    again = batched(EvalPrediction(PREDS, TARGET), compute_result=True)
    assert again["pixel_accuracy"] == pytest.approx(5 / 7)


# ------------------------------------------------------------------------------------------------ patch protocols


def test_patch_labels_take_the_modal_label():
    mask = torch.tensor(
        [
            [1, 1, 2, 3],
            [1, 4, 3, 2],
            [255, 255, 5, 255],
            [255, 0, 5, 255],
        ]
    )
    cells = patch_labels(mask[None], (2, 2))
    # top-left: 1 three times; top-right: 2 and 3 tie -> the smaller; bottom-left: ignore wins 3 to 1;
    # bottom-right: 5 and ignore tie -> the real label.
    assert cells.tolist() == [[[1, 2], [255, 5]]]
    # With ignore_index=5, 255 is a real label: it wins the bottom-right tie against the ignored 5s.
    assert patch_labels(mask, (2, 2), ignore_index=5).tolist() == [[[1, 2], [255, 255]]]
    # Sizes that are not multiples of the grid: pixel (y, x) -> cell (y * h // H, x * w // W).
    odd = torch.zeros(5, 5, dtype=torch.long)
    odd[3:, :] = 7  # rows 3, 4 -> cell row 1 (3 * 2 // 5 = 1); rows 0-2 -> cell row 0
    assert patch_labels(odd, (2, 2)).tolist() == [[[0, 0], [7, 7]]]
    assert patch_labels(torch.full((1, 4, 4), -100), (2, 2)).eq(255).all()  # negative padding counts as ignored


def _unit(angle_degrees):
    angle = math.radians(angle_degrees)
    return torch.tensor([math.cos(angle), math.sin(angle)])


def test_knn_segment_matches_a_hand_computed_vote():
    # Train patches: label 1 at 0 deg, label 0 at +-60 deg, and an IGNORED patch at 5 deg (nearest, but excluded).
    train = torch.stack([_unit(0), _unit(60), _unit(-60), _unit(5)]) * torch.tensor([[1.0], [3.0], [0.5], [1.0]])
    labels = torch.tensor([1, 0, 0, 255])
    test = torch.stack([_unit(0), _unit(90)])
    # Query 0 deg, k=3: similarities 1, 0.5, 0.5 -> weights exp(0), exp(-0.5/T), exp(-0.5/T) (T = 0.5).
    w = math.exp(-0.5 / 0.5)
    scores = knn_segment(train, labels, test, num_labels=3, k=3, temperature=0.5)
    assert scores.shape == (2, 3)
    assert scores[0].tolist() == pytest.approx([2 * w / (1 + 2 * w), 1 / (1 + 2 * w), 0.0])
    # Query 90 deg: similarities cos 30 (60 deg), cos 90 (0 deg), cos 150 (-60 deg).
    sims = torch.tensor([math.cos(math.radians(30)), 0.0, math.cos(math.radians(150))])
    weights = ((sims - sims[0]) / 0.5).exp()
    expected = torch.tensor([weights[0] + weights[2], weights[1], 0.0]) / weights.sum()
    assert torch.allclose(scores[1], expected, atol=1e-6)
    # Unweighted vote (CAPI's mode) and k=1.
    plain = knn_segment(train, labels, test, num_labels=3, k=3, temperature=None)
    assert plain[0].tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])
    assert knn_segment(train, labels, test, num_labels=3, k=1)[0].tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="num_labels"):
        knn_segment(train, labels, test, num_labels=1)
    with pytest.raises(ValueError, match="ignored"):
        knn_segment(train, torch.full((4,), 255), test, num_labels=3)


def test_patch_scores_are_repeated_over_their_pixels():
    scores = torch.arange(8, dtype=torch.float32).view(1, 2, 2, 2)
    pixels = upsample_patch_scores(scores, (4, 6))
    assert pixels.shape == (1, 2, 4, 6)
    assert torch.equal(pixels[0, 1, :2, :3], torch.full((2, 3), 4.0))
    assert torch.equal(pixels[0, 1, :2, 3:], torch.full((2, 3), 5.0))
    assert torch.equal(pixels[0, 0, 2:, 3:], torch.full((2, 3), 3.0))
    smooth = upsample_patch_scores(scores, (4, 4), mode="bilinear")
    assert torch.allclose(smooth.mean(dim=(2, 3)), scores.mean(dim=(2, 3)))


def test_logistic_regression_matches_sklearn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(300, 5, generator=generator) * torch.tensor([1.0, 5.0, 0.1, 2.0, 1.0]) + 3.0
    labels = (features[:, 0] + features[:, 3] > 6.0).long() + (features[:, 1] > 5.0).long()
    ignored = labels.clone()
    ignored[:20] = 255  # left out of the fit
    probe = fit_logistic_regression(features, ignored, num_labels=3, C=0.5)
    scaler = StandardScaler().fit(features[20:].double().numpy())
    reference = LogisticRegression(C=0.5, tol=1e-10, max_iter=5000).fit(
        scaler.transform(features[20:].double().numpy()), labels[20:].numpy()
    )
    ours = probe(features).softmax(dim=-1)
    theirs = torch.from_numpy(reference.predict_proba(scaler.transform(features.double().numpy()))).float()
    assert (ours - theirs).abs().max() < 2e-3
    assert not any(p.requires_grad for p in probe.parameters())


class ColourBackbone(torch.nn.Module):
    """An oracle 'backbone': the mean colour of every 8x8 patch (so features name the class when colour does)."""

    channels = [3]

    def forward(self, pixel_values):
        return BackboneOutput(feature_maps=(F.avg_pool2d(pixel_values, 8),))


def test_patch_protocols_are_perfect_with_oracle_features():
    # 8x8 blocks of one class each, coloured by class along distinct directions (cosine separates them).
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    generator = torch.Generator().manual_seed(3)

    def batch(count):
        blocks = torch.randint(0, 4, (count, 4, 4), generator=generator)
        masks = blocks.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)
        return {"pixel_values": colours[masks].permute(0, 3, 1, 2), "labels": masks}

    backbone = ColourBackbone()
    train = [batch(4), batch(4)]
    features, labels = patch_feature_bank(backbone, train, device="cpu")
    assert features.shape == (2 * 4 * 16, 3) and labels.shape == (128,)
    probe = fit_logistic_regression(features, labels, num_labels=4, C=100.0, max_iter=200)
    test = batch(3)
    dense = dense_features(backbone, test["pixel_values"])  # (3, 3, 4, 4)
    flat = dense.permute(0, 2, 3, 1).reshape(-1, 3)
    for scores in (knn_segment(features, labels, flat, num_labels=4, k=5), probe(flat).softmax(-1)):
        scores = scores.view(3, 4, 4, 4).permute(0, 3, 1, 2)
        metric = SegmentationMetrics(4)
        metric.update(upsample_patch_scores(scores, (32, 32)), test["labels"])
        assert metric.compute()["mean_iou"].item() == 1.0


def test_trainer_learns_a_linear_head_on_oracle_features(tmp_path):
    from transformers import Trainer, TrainingArguments

    from hf_mim.evaluation import argmax_logits

    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    generator = torch.Generator().manual_seed(0)

    def examples(count):
        blocks = torch.randint(0, 4, (count, 4, 4), generator=generator)
        masks = blocks.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)
        return [{"pixel_values": p, "labels": m} for p, m in zip(colours[masks].permute(0, 3, 1, 2), masks)]

    model = FrozenBackboneSegmenter(ColourBackbone(), LinearSegmentationHead([3], 4))
    args = TrainingArguments(
        str(tmp_path), max_steps=60, learning_rate=0.1, per_device_train_batch_size=8, report_to="none",
        batch_eval_metrics=True, remove_unused_columns=False, save_strategy="no", disable_tqdm=True,
        logging_strategy="no", use_cpu=True,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=examples(64), eval_dataset=examples(16),
        data_collator=segmentation_collate, compute_metrics=SegmentationComputeMetrics(4),
        preprocess_logits_for_metrics=argmax_logits,
    )  # fmt: skip
    trainer.train()
    # Not 1.0: the 4x4 logits are upsampled bilinearly, so pixels along block edges blend two classes.
    assert trainer.evaluate()["eval_mean_iou"] > 0.85


# ------------------------------------------------------------------------------------------------- linear head


def test_linear_head_resize_concat_shapes():
    maps = [torch.randn(2, 4, 16, 16), torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    concat = resize_concat(maps)
    assert concat.shape == (2, 28, 16, 16)
    expected = F.interpolate(maps[2], size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.equal(concat[:, 12:], expected) and torch.equal(concat[:, :4], maps[0])
    head = LinearSegmentationHead([4, 8, 16], num_labels=5, dropout=0.1)
    assert head.norm.num_features == 28 and head.norm.affine
    assert head(maps).shape == (2, 5, 16, 16)
    assert isinstance(head.dropout, torch.nn.Dropout2d)
    with pytest.raises(ValueError, match="channels"):
        head(maps[:2])


@pytest.fixture(scope="module")
def vicregl_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vicregl-tiny")
    torch.manual_seed(0)
    hf_mim.VicreglModel(hf_mim.VicreglConfig.tiny()).save_pretrained(folder)
    return folder


def test_frozen_backbone_segmenter_with_an_hf_mim_backbone(vicregl_folder):
    backbone = AutoBackbone.from_pretrained(vicregl_folder, out_indices=[1, 2, 3, 4])
    assert backbone.channels == [16, 32, 64, 128]
    head = LinearSegmentationHead(backbone.channels, num_labels=3)
    model = FrozenBackboneSegmenter(backbone, head).train()
    assert not model.backbone.training and model.head.training
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 3, (2, 48, 48))
    labels[:, :8] = 255
    output = model(pixel_values=pixel_values, labels=labels)
    assert output.logits.shape == (2, 3, 48, 48)  # upsampled to the labels
    expected = F.cross_entropy(output.logits, labels, ignore_index=255)
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    output.loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert head.classifier.weight.grad is not None and head.norm.weight.grad is not None
    assert model(pixel_values=pixel_values).logits.shape == (2, 3, 64, 64)


# --------------------------------------------------------------------------------------------------- data


def test_synthetic_set_labels_are_exact_and_deterministic():
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = synthetic_segmentation_datasets(num_train=6, num_validation=4, image_size=64, seed=1)
    assert set(data) == {"train", "validation"} and len(data["train"]) == 6 and len(data["validation"]) == 4
    for split in ("train", "validation"):
        for example in data[split]:
            image, mask = np.array(example["image"]), np.array(example["label"])
            assert example["image"].mode == "RGB" and example["label"].mode == "L"
            assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
            assert 1 <= len(example["objects"]) <= 3
            # Re-render the mask from the recorded placements: it must equal the stored labels exactly ...
            expected = np.zeros_like(mask)
            owner = np.full((64, 64), -1)  # which pasted digit shows at each pixel (the last one pasted there)
            for index, obj in enumerate(example["objects"]):
                assert digits.target[obj["digits_index"]] == obj["digit"]
                shape = digit_mask(digits.images[obj["digits_index"]], obj["size"])
                window = (slice(obj["top"], obj["top"] + obj["size"]), slice(obj["left"], obj["left"] + obj["size"]))
                expected[window][shape] = 1 + obj["digit"]
                owner[window][shape] = index
            assert np.array_equal(mask, expected)
            # ... every labelled pixel belongs to a pasted digit and shows that digit's colour.
            assert np.array_equal(owner >= 0, mask > 0)
            for index, obj in enumerate(example["objects"]):
                assert (image[owner == index] == obj["color"]).all()
    # Deterministic per seed, prefix-stable, and the seed matters.
    again = synthetic_segmentation_dataset("train", num_images=3, image_size=64, seed=1)
    other = synthetic_segmentation_dataset("train", num_images=3, image_size=64, seed=2)
    for index in range(3):
        assert np.array_equal(np.array(again[index]["image"]), np.array(data["train"][index]["image"]))
        assert np.array_equal(np.array(again[index]["label"]), np.array(data["train"][index]["label"]))
    assert not np.array_equal(np.array(other[0]["image"]), np.array(again[0]["image"]))
    # The splits draw from disjoint digit pools.
    train_indices = {o["digits_index"] for objs in data["train"]["objects"] for o in objs}
    validation_indices = {o["digits_index"] for objs in data["validation"]["objects"] for o in objs}
    assert not train_indices & validation_indices


def test_paired_transforms_keep_image_and_mask_aligned():
    # An asymmetric label map whose colour encodes the class: image = palette[mask].
    palette = np.array([[0, 0, 0], [250, 0, 0], [0, 250, 0], [0, 0, 250], [250, 250, 0]], dtype=np.uint8)
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[5:30, 3:20], mask[20:45, 30:60], mask[0:10, 40:64], mask[35:48, 0:12] = 1, 2, 3, 4
    image, mask_image = PIL.Image.fromarray(palette[mask]), PIL.Image.fromarray(mask)
    unit = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    exact = SegmentationTransform(32, train=True, scale=(0.2, 1.0), interpolation="nearest", **unit)
    smooth = SegmentationTransform(32, train=True, scale=(0.2, 1.0), interpolation="bilinear", **unit)
    torch.manual_seed(0)
    for _ in range(12):
        for transform in (exact, smooth):
            pixels, labels = transform(image, mask_image)
            assert pixels.shape == (3, 32, 32) and labels.shape == (32, 32) and labels.dtype == torch.long
            colours = torch.from_numpy(palette).float() / 255
            decoded = (pixels.permute(1, 2, 0)[..., None, :] - colours).abs().sum(-1).argmin(-1)
            agreement = (decoded == labels).float().mean().item()
            if transform is exact:
                assert agreement == 1.0
            else:
                assert agreement > 0.9  # bilinear blends colours only along the boundaries
    # The whole image (scale 1, the image's aspect ratio): only the flip varies, and it flips both.
    whole = SegmentationTransform((48, 64), train=True, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), **unit)
    orientations = set()
    for _ in range(10):
        pixels, labels = whole(image, mask_image)
        flipped = bool(torch.equal(labels, torch.from_numpy(mask).long().flip(-1)))
        assert flipped or torch.equal(labels, torch.from_numpy(mask).long())
        expected_pixels = torch.from_numpy(palette[mask]).permute(2, 0, 1).float() / 255
        assert torch.allclose(pixels, expected_pixels.flip(-1) if flipped else expected_pixels)
        orientations.add(flipped)
    assert orientations == {True, False}
    evaluation = SegmentationTransform(40, **unit)
    pixels, labels = evaluation(image, mask_image)
    assert pixels.shape == (3, 40, 40) and set(labels.unique().tolist()) <= {0, 1, 2, 3, 4}
    reduced = SegmentationTransform(40, reduce_labels=True, **unit)(image, mask_image)[1]
    assert torch.equal(reduced, reduce_labels(labels))
    batch = segmentation_collate([{"pixel_values": pixels, "labels": labels}] * 2)
    assert batch["pixel_values"].shape == (2, 3, 40, 40) and batch["labels"].shape == (2, 40, 40)
    with pytest.raises(ValueError, match="class index"):
        mask_to_array(image)


# ------------------------------------------------------------------------------------------------ the script


@pytest.fixture(scope="module")
def script():
    return load_script(SCRIPT)


def _check_outputs(output_dir, num_labels_names):
    results = json.loads((output_dir / "eval_results.json").read_text())
    combined = json.loads((output_dir / "all_results.json").read_text())
    assert set(results) <= set(combined)
    for key in ("eval_mean_iou", "eval_pixel_accuracy", "eval_mean_accuracy"):
        assert 0.0 <= results[key] <= 1.0
    assert all(f"eval_iou_{name}" in results for name in num_labels_names)
    picture = PIL.Image.open(output_dir / "segmentation_predictions.png")
    assert picture.mode == "RGB" and picture.width >= 3 * 56 and picture.height >= 2 * 56
    return results


SMALL = ["--synthetic_train_images", "8", "--synthetic_validation_images", "4", "--image_size", "56",
         "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--num_visualized", "2",
         "--disable_tqdm", "True", "--save_strategy", "no"]  # fmt: skip
SYNTHETIC_NAMES = ["background"] + [str(d) for d in range(10)]


@pytest.mark.parametrize(
    "protocol, model, extra",
    [
        ("linear", ["--config_name", "vicregl-tiny"], ["--max_steps", "2"]),
        ("upernet", ["--config_name", "capi-tiny", "--config_overrides", "num_hidden_layers=4"],
         ["--max_steps", "2", "--upernet_hidden_size", "16"]),
        ("knn", ["--config_name", "cae-tiny"], ["--k", "3", "--temperature", "none"]),
        ("logistic", ["--config_name", "ijepa-tiny"], ["--logistic_max_iter", "30"]),
    ],
)  # fmt: skip
def test_script_protocols_on_the_synthetic_default(script, tmp_path, protocol, model, extra):
    result = script.main(["--protocol", protocol, *model, *extra, *SMALL, "--output_dir", str(tmp_path)])
    assert result["protocol"] == protocol and result["train_images"] == 8 and result["eval_images"] == 4
    results = _check_outputs(tmp_path, SYNTHETIC_NAMES)
    assert results["eval_mean_iou"] == pytest.approx(result["mean_iou"], abs=1e-4)
    if protocol == "upernet":  # four blocks -> the multi-scale pyramid
        assert result["out_indices"] == [1, 2, 3, 4] and (tmp_path / "config.json").is_file()
        saved = json.loads((tmp_path / "config.json").read_text())
        assert saved["backbone_config"]["backbone_multiscale"] is True
    if protocol == "linear":
        assert result["out_indices"] == [1, 2, 3, 4] and "train_loss" in result


def _small_local_set():
    data = synthetic_segmentation_datasets(num_train=6, num_validation=3, image_size=48, seed=5)
    return data.remove_columns("objects").rename_columns({"image": "pixels", "label": "annotation"})


@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory):
    """A `DatasetDict.save_to_disk` folder with renamed columns and an id2label.json (read by `load_from_disk`)."""
    folder = tmp_path_factory.mktemp("saved-dataset")
    _small_local_set().save_to_disk(str(folder))
    (folder / "id2label.json").write_text(json.dumps(dict(enumerate(SAVED_NAMES))))
    return folder


SAVED_NAMES = ["bg"] + [f"digit{d}" for d in range(10)]


@pytest.mark.parametrize(
    "protocol, extra",
    [("linear", ["--max_steps", "2"]), ("upernet", ["--max_steps", "1", "--upernet_hidden_size", "16"]),
     ("knn", ["--out_indices", "2", "3"]), ("logistic", ["--logistic_max_iter", "30"])],
)  # fmt: skip
def test_script_protocols_on_a_saved_datasets_folder(script, tmp_path, vicregl_folder, saved_dataset, protocol, extra):
    output = tmp_path / "out"
    result = script.main(
        ["--protocol", protocol, "--model_name_or_path", str(vicregl_folder), "--dataset_name", str(saved_dataset),
         "--image_column_name", "pixels", "--label_column_name", "annotation", *extra, *SMALL,
         "--output_dir", str(output)]
    )  # fmt: skip
    assert result["model"] == str(vicregl_folder) and result["train_images"] == 6 and result["eval_images"] == 3
    expected_indices = {"linear": [1, 2, 3, 4], "upernet": [1, 2, 3, 4], "knn": [2, 3], "logistic": [4]}
    assert result["out_indices"] == expected_indices[protocol]
    _check_outputs(output, SAVED_NAMES)


def test_temperature_none_means_an_unweighted_vote(script):
    arguments = script.parse_arguments(["--protocol", "knn", "--temperature", "none"])
    assert arguments[2].temperature is None and arguments[3].learning_rate == 1e-2
    assert script.parse_arguments(["--protocol=upernet"])[3].learning_rate == 1e-4
    assert script.parse_arguments(["--learning_rate", "0.5"])[3].learning_rate == 0.5


def test_script_on_image_and_mask_folders(script, tmp_path):
    data = _small_local_set()
    for split, name in (("train", "train"), ("validation", "val")):
        for sub in ("images", "masks"):
            (tmp_path / name / sub).mkdir(parents=True)
        for index, example in enumerate(data[split]):
            example["pixels"].save(tmp_path / name / "images" / f"{index:03d}.jpg")
            example["annotation"].save(tmp_path / name / "masks" / f"{index:03d}.png")
    output = tmp_path / "out"
    result = script.main(
        ["--protocol", "linear", "--config_name", "vicregl-tiny-resnet", "--train_dir", str(tmp_path / "train"),
         "--validation_dir", str(tmp_path / "val"), "--reduce_labels", "--max_steps", "1", *SMALL,
         "--output_dir", str(output)]
    )  # fmt: skip
    assert result["train_images"] == 6 and result["eval_images"] == 3 and result["out_indices"] == [4]
    # Without id2label the classes are read off the training masks: digits 1 + d, reduced to d.
    results = json.loads((output / "eval_results.json").read_text())
    classes = sorted(int(key[len("eval_iou_") :]) for key in results if key.startswith("eval_iou_"))
    assert classes == list(range(len(classes))) and 1 <= len(classes) <= 10


# ------------------------------------------------------------------------------------- UperNet layer-wise lr decay
def _original_layer_decay(name: str, param: torch.nn.Parameter, num_layers: int, rate: float):
    """(lr scale, decays) of CAE / BEiT's mmseg `LayerDecayOptimizerConstructor` (downstream_tasks/
    semantic_segmentation/mmcv_custom/layer_decay_optimizer_constructor.py), transcribed, after renaming hf_mim's
    parameters to the original backbone's (`blocks.<i>`, `patch_embed`, `cls_token`, `pos_embed`)."""
    parts = name.split(".")
    if parts[0] == "backbone" and len(parts) > 3 and parts[2] == "embeddings":
        rest = ".".join(parts[3:])
        renamed = {"cls_token": "cls_token", "position_embeddings": "pos_embed"}.get(rest)
        name = f"backbone.{renamed}" if renamed else "backbone.patch_embed." + rest.split(".", 1)[-1]
    elif parts[0] == "backbone" and "layers" in parts[:3] or parts[2:4] == ["encoder", "layer"]:
        index = parts.index("layers") if "layers" in parts[:3] else 3
        name = "backbone.blocks." + ".".join(parts[index + 1 :])
    max_layers = num_layers + 2  # `num_layers = paramwise_cfg['num_layers'] + 2`
    if name in ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed"):
        layer_id = 0
    elif name.startswith("backbone.patch_embed"):
        layer_id = 0
    elif name.startswith("backbone.blocks"):
        layer_id = int(name.split(".")[2]) + 1
    else:
        layer_id = max_layers - 1
    no_decay = len(param.shape) == 1 or name.endswith(".bias") or name in ("pos_embed", "cls_token")
    return rate ** (max_layers - layer_id - 1), not no_decay


def _upernet(script, preset, overrides):
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    model_args = script.ModelArguments(config_name=preset, config_overrides=overrides)
    backbone, config = script.build_backbone(model_args, "upernet", 0)
    model = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=config, num_labels=3, hidden_size=16))
    model.backbone = backbone
    return model


@pytest.mark.parametrize(
    "preset, overrides, rate",
    [("cae-tiny", "num_hidden_layers=4", 0.65), ("cae-tiny", "num_hidden_layers=12", 0.65),
     ("capi-tiny", "num_hidden_layers=4", 0.95)],
)  # fmt: skip
def test_upernet_layer_decay_groups_follow_the_original(script, preset, overrides, rate):
    model = _upernet(script, preset, overrides)
    num_layers = model.backbone.config.num_hidden_layers
    groups = script.upernet_layer_decay_groups(model, 2e-4, 0.05, rate)
    params = dict(model.named_parameters())
    trainable = {name for name, p in params.items() if p.requires_grad}
    grouped = [name for group in groups for name in group["param_names"]]
    assert sorted(grouped) == sorted(trainable)  # every trainable parameter once (frozen position table left out)
    seen_ids = set()
    for group in groups:
        layer_id = group["layer_id"]
        seen_ids.add(layer_id)
        assert group["lr_scale"] == rate ** (num_layers + 1 - layer_id)
        assert group["lr"] == 2e-4 * group["lr_scale"]
        for name in group["param_names"]:
            scale, decays = _original_layer_decay(name, params[name], num_layers, rate)
            assert group["lr_scale"] == scale, name
            assert group["weight_decay"] == (0.05 if decays else 0.0), name
            if name.startswith(("decode_head.", "auxiliary_head.")) or ".multiscale." in name:
                assert layer_id == num_layers + 1 and group["lr_scale"] == 1.0, name
            match = re.search(r"\.(?:layers|layer)\.(\d+)\.", name)
            if match:
                assert layer_id == int(match.group(1)) + 1, name
            if ".embeddings." in name:
                assert layer_id == 0 and group["lr_scale"] == rate ** (num_layers + 1), name
    assert seen_ids == set(range(num_layers + 2))
    if num_layers == 12:  # BEiT / CAE-B UperNet: block 0 at 0.65^12, block 11 at 0.65, embeddings at 0.65^13
        block = {g["layer_id"]: g["lr_scale"] for g in groups}
        assert block[1] == pytest.approx(5.6880e-3, rel=1e-4) and block[12] == 0.65
        assert block[0] == pytest.approx(3.6972e-3, rel=1e-4) and block[13] == 1.0


def test_upernet_layer_decay_rejects_what_it_cannot_apply(script):
    with pytest.raises(ValueError, match="--protocol upernet"):
        script.parse_arguments(["--protocol", "linear", "--layer_decay", "0.65"])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        script.parse_arguments(["--protocol", "upernet", "--layer_decay", "1.5"])
    assert script.parse_arguments(["--protocol", "upernet"])[2].layer_decay is None  # default: off
    with pytest.raises(ValueError, match="ViT backbone"):  # ConvNeXt stages are not one indexed block sequence
        script.upernet_layer_decay_groups(_upernet(script, "vicregl-tiny", None), 1e-4, 0.05, 0.65)


@pytest.mark.parametrize("layer_decay", [None, 0.65])
def test_script_upernet_with_layer_decay(script, tmp_path, monkeypatch, layer_decay):
    """A short UperNet run: with --layer_decay the Trainer's optimizer holds the decayed groups and the poly schedule
    scales them alike; without it, transformers' two groups at one lr (the previous behaviour)."""
    optimizers = []
    create = script.SegmentationTrainer.create_optimizer

    def recording(self, model=None):
        optimizers.append(create(self, model))
        return optimizers[-1]

    monkeypatch.setattr(script.SegmentationTrainer, "create_optimizer", recording)
    extra = [] if layer_decay is None else ["--layer_decay", str(layer_decay)]
    result = script.main(
        ["--protocol", "upernet", "--config_name", "capi-tiny", "--config_overrides", "num_hidden_layers=4",
         "--max_steps", "2", "--upernet_hidden_size", "16", "--warmup_steps", "1", *extra, *SMALL,
         "--output_dir", str(tmp_path)]
    )  # fmt: skip
    assert result["protocol"] == "upernet" and math.isfinite(result["train_loss"])
    _check_outputs(tmp_path, SYNTHETIC_NAMES)
    groups = optimizers[-1].param_groups
    if layer_decay is None:
        assert len(groups) == 2 and {g["initial_lr"] for g in groups} == {1e-4}
        return
    assert len(groups) == 2 * (4 + 2)  # layer ids 0..5, each with decayed and not decayed parameters
    factors = set()
    for group in groups:
        assert group["initial_lr"] == pytest.approx(1e-4 * layer_decay ** (4 + 1 - group["layer_id"]), rel=1e-12)
        factors.add(round(group["lr"] / group["initial_lr"], 12))
        if any(name.startswith("decode_head.") for name in group["param_names"]):
            assert group["lr_scale"] == 1.0
    assert len(factors) == 1  # one schedule factor for every group


# ------------------------------------------------------------------------- the embedded default: which backbone


def _dark_columns(picture: PIL.Image.Image, top: int, bottom: int) -> np.ndarray:
    """x positions with text-dark pixels (< 100 in every channel) in rows top..bottom."""
    band = np.asarray(picture.convert("RGB"))[top:bottom]
    return np.flatnonzero((band < 100).all(-1).any(0))


def test_labelled_prediction_grid_titles_each_column_and_draws_caption_and_legend():
    generator = torch.Generator().manual_seed(0)
    images = [np.broadcast_to(np.array([200, 30, 90], np.uint8), (40, 40, 3))] * 2
    labels = [torch.randint(0, 3, (40, 40), generator=generator) for _ in range(2)]
    columns = {"random-init prediction": [torch.zeros(40, 40)] * 2, "pretrained prediction": labels}
    plain = prediction_grid(images, labels, columns["pretrained prediction"], 3)
    titled = labelled_prediction_grid(images, labels, columns, 3, caption=["mean IoU 0.1 vs 0.5"], label_names="abc")
    # Four columns where the plain picture has three, each at least a tile wide (wider where its title is), and a
    # title row, a caption and a legend above / below the tiles.
    assert titled.width >= 4 * 40 + 6 > plain.width and titled.height > plain.height + 3 * 8
    # A title row of black text on white over every column, where the plain picture starts with the coloured image.
    title_row = _dark_columns(titled, 0, 10)
    assert len(title_row) and title_row.min() < 40 and title_row.max() > 3 * 40
    band = np.asarray(titled)[:10].astype(int)
    assert (band.max(-1) - band.min(-1) == 0).all() and (np.asarray(plain)[:10, :40] == (200, 30, 90)).all()
    # Caption text is drawn: another caption changes the picture, at the same size.
    other = labelled_prediction_grid(images, labels, columns, 3, caption=["mean IoU 0.2 vs 0.6"], label_names="abc")
    assert other.size == titled.size and not np.array_equal(np.asarray(other), np.asarray(titled))
    with pytest.raises(ValueError, match="one entry per example"):
        labelled_prediction_grid(images, labels, {"prediction": labels[:1]}, 3)


@pytest.fixture(scope="module")
def main_job_backbone(tmp_path_factory):
    """A stand-in for `run_capi.py`'s output: a random tiny CAPI (patch 7, as its CPU recipe) in <dir>/backbone."""
    folder = tmp_path_factory.mktemp("capi-pretraining") / "backbone"
    torch.manual_seed(0)
    hf_mim.CapiModel(hf_mim.CapiConfig.tiny(patch_size=7)).save_pretrained(folder)
    return folder


def _check_comparison(result, output_dir, backbone):
    runs = result["runs"]
    assert runs["pretrained"]["model"] == str(backbone) and runs["random-init"]["model"] == f"random {backbone}"
    assert result["mean_iou_random_init"] == runs["random-init"]["mean_iou"]
    assert result["mean_iou_pretrained"] == runs["pretrained"]["mean_iou"]
    for label in ("random-init", "pretrained"):
        assert set(runs[label]["iou"]) == set(SYNTHETIC_NAMES)
        assert json.loads((output_dir / label / "eval_results.json").read_text())["eval_mean_iou"] == pytest.approx(
            runs[label]["mean_iou"], abs=1e-4
        )
    saved = json.loads((output_dir / "comparison_results.json").read_text())
    assert json.dumps(saved["runs"], sort_keys=True) == json.dumps(runs, sort_keys=True)  # NaN: classes never seen
    picture = PIL.Image.open(output_dir / "segmentation_predictions.png")
    # image | ground truth | random-init prediction | pretrained prediction, titled, two rows, caption and legend
    assert picture.width >= 4 * 56 and picture.height >= 2 * 56 + 4 * 8
    assert len(_dark_columns(picture, 0, 10)) and _dark_columns(picture, 0, 10).max() > 3 * 56


def test_default_reuses_the_main_jobs_backbone_without_pretraining(
    script, tmp_path, main_job_backbone, monkeypatch, capsys
):
    def refuse(*args):
        raise AssertionError("pretrained although the main job's backbone exists")

    monkeypatch.setattr(script, "pretrain_default_backbone", refuse)
    result = script.main(
        ["--max_steps", "2", *SMALL, "--main_job_backbone", str(main_job_backbone), "--output_dir", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"Backbone: {main_job_backbone}, the main job's CAPI backbone")
    assert re.search(r"^metric +random-init +pretrained$", out, re.M) and re.search(
        r"^mean IoU +0\.\d+ +0\.\d+$", out, re.M
    )
    _check_comparison(result, tmp_path, main_job_backbone)
    # The two runs differ only by the weights: same head seed and data order, same protocol.
    assert result["runs"]["random-init"]["out_indices"] == result["runs"]["pretrained"]["out_indices"] == [2]


def test_default_pretrains_a_short_capi_run_when_the_main_job_has_not_run(script, tmp_path, capsys):
    output = tmp_path / "out"
    argv = ["--max_steps", "1", *SMALL, "--default_pretraining_steps", "1", "--output_dir", str(output),
            "--main_job_backbone", str(tmp_path / "not-run" / "backbone")]  # fmt: skip
    result = script.main(argv)
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("Backbone: no --model_name_or_path and no main-job backbone at ")
    assert "a short CAPI pretraining (1 steps of run_capi.py's CPU recipe" in out.splitlines()[0]
    backbone = output / "capi-pretraining-1steps-seed42" / "backbone"
    assert json.loads((backbone.parent / "trainer_state.json").read_text())["global_step"] == 1
    _check_comparison(result, output, backbone)
    # A second run finds this pretraining and says so, instead of training again.
    model_args = script.parse_arguments(argv)[0]
    found, to_train, statement = script.default_backbone(model_args, str(output), 42)
    assert found == backbone and to_train is None and "earlier 1-step CAPI pretraining" in statement
