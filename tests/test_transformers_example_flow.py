"""Every hf_mim folder works unchanged in transformers' own image-classification example flow.

`flow()` follows transformers' `examples/pytorch/image-classification/run_image_classification.py` step by step:
AutoConfig with the label maps -> AutoModelForImageClassification(ignore_mismatched_sizes=True) ->
AutoImageProcessor -> size from `size["shortest_edge"]` (or height/width) -> torchvision RandomResizedCrop /
Resize + CenterCrop + Normalize -> Trainer train / evaluate / save_model / create_model_card; then the two pipelines
on the saved folder. Nothing is edited by hand in between.
"""

import numpy as np
import PIL.Image
import pytest
import torch
from datasets import load_dataset
from torchvision.transforms import (
    CenterCrop,
    Compose,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToTensor,
)
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    Trainer,
    TrainingArguments,
    pipeline,
)

from hf_mim import (
    CapiConfig,
    CapiForPreTraining,
    CapiImageProcessor,
    IJepaConfig,
    IJepaForPreTraining,
    IJepaImageProcessor,
)

from .helpers import FIXTURES, convert_capi_fixture, run_script
from .model_test_mixin import ModelTesterMixin

LABELS = ("circle", "square", "stripes")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A tiny offline image-classification data set (3 drawn shapes), in the `imagefolder` layout."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("validation", 2)):
        for label in LABELS:
            (root / split / label).mkdir(parents=True)
            for index in range(count):
                y, x = np.mgrid[0:72, 0:90]
                if label == "circle":
                    mask = (x - 45) ** 2 + (y - 36) ** 2 < (20 + 3 * index) ** 2
                elif label == "square":
                    mask = (abs(x - 45) < 18 + index) & (abs(y - 36) < 18 + index)
                else:
                    mask = (x // (6 + index)) % 2 == 0
                image = np.where(mask[..., None], [230, 60, 40], [30, 80, 200]) + rng.normal(0, 12, (72, 90, 3))
                PIL.Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
                    root / split / label / f"{index}.png"
                )
    return root


def flow(model_dir, image_folder, output_dir):
    """transformers' run_image_classification.py, condensed; returns (metrics, trained folder)."""
    dataset = load_dataset("imagefolder", data_dir=str(image_folder))
    labels = dataset["train"].features["label"].names
    label2id = {label: str(i) for i, label in enumerate(labels)}
    id2label = {str(i): label for i, label in enumerate(labels)}
    config = AutoConfig.from_pretrained(
        model_dir, num_labels=len(labels), label2id=label2id, id2label=id2label, finetuning_task="image-classification"
    )
    model = AutoModelForImageClassification.from_pretrained(model_dir, config=config, ignore_mismatched_sizes=True)
    image_processor = AutoImageProcessor.from_pretrained(model_dir)
    if "shortest_edge" in image_processor.size:
        size = image_processor.size["shortest_edge"]
    else:
        size = (image_processor.size["height"], image_processor.size["width"])
    normalize = Normalize(mean=image_processor.image_mean, std=image_processor.image_std)
    train_transforms = Compose([RandomResizedCrop(size), RandomHorizontalFlip(), ToTensor(), normalize])
    val_transforms = Compose([Resize(size), CenterCrop(size), ToTensor(), normalize])

    def preprocess(transforms):
        def apply(batch):
            batch["pixel_values"] = [transforms(image.convert("RGB")) for image in batch["image"]]
            return batch

        return apply

    dataset["train"].set_transform(preprocess(train_transforms))
    dataset["validation"].set_transform(preprocess(val_transforms))

    def collate_fn(examples):
        return {
            "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["label"] for e in examples]),
        }

    def compute_metrics(prediction):  # evaluate.load("accuracy") needs the Hub
        return {"accuracy": float((np.argmax(prediction.predictions, axis=1) == prediction.label_ids).mean())}

    args = TrainingArguments(
        output_dir=str(output_dir), remove_unused_columns=False, max_steps=2, per_device_train_batch_size=4,
        per_device_eval_batch_size=4, learning_rate=1e-3, use_cpu=True, report_to=[], save_strategy="no",
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset["train"], eval_dataset=dataset["validation"],
        compute_metrics=compute_metrics, processing_class=image_processor, data_collator=collate_fn,
    )  # fmt: skip
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model()
    trainer.create_model_card(
        finetuned_from=str(model_dir), tasks="image-classification", tags=["image-classification"]
    )
    return metrics, output_dir, size


def check_trained_folder(folder, image_folder, hidden_size):
    assert (folder / "README.md").exists() and (folder / "model.safetensors").exists()
    image = PIL.Image.open(next((image_folder / "validation" / "circle").iterdir()))
    predictions = pipeline("image-classification", model=str(folder))(image)
    assert {p["label"] for p in predictions} == set(LABELS)
    assert abs(sum(p["score"] for p in predictions) - 1) < 1e-4
    features = pipeline("image-feature-extraction", model=str(folder))(image, pool=True)
    assert np.asarray(features).shape[-1] == hidden_size


def tiny_folders(tmp_path_factory):
    """A tiny pretraining folder (as a run writes it) per method, with its default processor."""
    folders = {}
    for name, model_class, config, processor in (
        ("capi", CapiForPreTraining, CapiConfig.tiny(), CapiImageProcessor()),
        ("ijepa", IJepaForPreTraining, IJepaConfig.tiny(), IJepaImageProcessor()),
    ):
        folder = tmp_path_factory.mktemp(f"tiny_{name}")
        torch.manual_seed(0)
        model_class(config).save_pretrained(folder)
        processor.save_pretrained(folder)
        folders[name] = (folder, config)
    return folders


@pytest.mark.parametrize("method", ["capi", "ijepa"])
def test_flow_on_tiny_pretraining_folders(method, image_folder, tmp_path_factory, tmp_path):
    folder, config = tiny_folders(tmp_path_factory)[method]
    metrics, trained, size = flow(folder, image_folder, tmp_path / "trained")
    assert size == 256 and size % config.patch_size  # the processor's resize size, not a multiple of the patch
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and np.isfinite(metrics["eval_loss"])
    pooled = config.decoder_hidden_size if method == "capi" else config.hidden_size
    check_trained_folder(trained, image_folder, pooled)


@pytest.fixture(scope="module")
def converted_releases(tmp_path_factory):
    capi = tmp_path_factory.mktemp("capi_release")
    convert_capi_fixture(capi, "--model_name", "capi-vitl14-lvd")
    ijepa = tmp_path_factory.mktemp("ijepa_release")
    result = run_script(
        "scripts/convert/convert_ijepa_to_hf.py", "--checkpoint_path", str(FIXTURES / "ijepa" / "checkpoint.pth.tar"),
        "--output_dir", str(ijepa), "--num_attention_heads", "4", "--model_name", "ijepa-vith14-in1k",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {"capi": capi, "ijepa": ijepa}


@pytest.mark.parametrize("method", ["capi", "ijepa"])
def test_flow_on_converted_release_folders(method, converted_releases, image_folder, tmp_path):
    folder = converted_releases[method]
    _, info, report = ModelTesterMixin.load_quietly(
        AutoModelForImageClassification, folder, num_labels=3, ignore_mismatched_sizes=True
    )
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert all(key.startswith(("classifier", "pooler")) for key in info["missing_keys"]), info
    assert "UNEXPECTED" not in report
    metrics, trained, _ = flow(folder, image_folder, tmp_path / "trained")
    assert np.isfinite(metrics["eval_loss"])
    config = AutoConfig.from_pretrained(folder)
    check_trained_folder(trained, image_folder, getattr(config, "decoder_hidden_size", config.hidden_size))


@pytest.mark.parametrize("side", [224, 256, 250])
def test_patch14_model_takes_224_256_250(side):
    for model_class, config in (
        (CapiForPreTraining, CapiConfig.tiny(patch_size=14)),
        (IJepaForPreTraining, IJepaConfig.tiny(patch_size=14)),
    ):
        backbone = AutoModelForImageClassification.from_config(config).eval()
        with torch.no_grad():
            logits = backbone(torch.randn(2, 3, side, side)).logits
        assert logits.shape == (2, config.num_labels) and torch.isfinite(logits).all(), (model_class, side)
