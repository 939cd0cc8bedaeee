"""One decoding path for every example (issue 23, item 5): `hf_mim.data.transforms.decode_image` applies the EXIF
orientation, closes the files it opens and refuses truncated files; fine-tuning (train and eval), k-NN, segmentation
(train and eval, image or mask unreadable) and the dVAE tokenizer's views skip unreadable files, name each once and
print a total at the end. Every data folder holds one good JPEG, one truncated JPEG, one non-image file with an
image extension and one JPEG whose EXIF orientation (6) turns it a quarter: stored 64 x 32 with a red left half and
a blue right half, shown 32 x 64 with red on top."""

import logging
import os
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageFile
import pytest
import torch

from hf_mim.data.transforms import DECODE_ERRORS, SafeImageTransform, decode_image

from .helpers import load_script

SKIP_LOGGER = "hf_mim.data.skipped"
ORIENTATION = 0x0112


# ------------------------------------------------------------------------------------------------------ the files


def write_good(path: Path, seed: int = 0, size=(64, 48)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return path


def write_truncated(path: Path) -> Path:
    """A valid JPEG cut in half: the header reads, the pixels do not."""
    write_good(path, seed=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_not_an_image(path: Path) -> Path:
    path.write_bytes(b"plain text with an image extension\n" * 20)
    return path


def write_rotated(path: Path) -> Path:
    """Stored 64 wide x 32 high, red left / blue right, with EXIF orientation 6: shown 32 x 64, red top / blue bottom."""
    pixels = np.zeros((32, 64, 3), dtype=np.uint8)
    pixels[:, :32, 0] = 255
    pixels[:, 32:, 2] = 255
    exif = PIL.Image.Exif()
    exif[ORIENTATION] = 6
    PIL.Image.fromarray(pixels).save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def classification_folder(root: Path) -> dict[str, Path]:
    """Two classes; sorted, the two bad files come last and together (one whole batch of 2 in evaluation)."""
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    return {
        "good": write_good(root / "a" / "good.jpg"),
        "rotated": write_rotated(root / "a" / "rotated.jpg"),
        "not_an_image": write_not_an_image(root / "b" / "not_an_image.jpg"),
        "truncated": write_truncated(root / "b" / "truncated.jpg"),
    }


def top_is_red(pixels: torch.Tensor) -> bool:
    """(3, H, W) (normalised or not): red dominates the top quarter and blue the bottom quarter."""
    quarter = pixels.shape[-2] // 4
    top, bottom = pixels[:, :quarter].mean(dim=(1, 2)), pixels[:, -quarter:].mean(dim=(1, 2))
    return bool(top[0] > top[2] + 0.5 and bottom[2] > bottom[0] + 0.5)


def open_files_under(root: Path) -> list[str]:
    """Files under `root` this process holds open (psutil when installed, else /proc/self/fd)."""
    try:
        import psutil

        paths = [entry.path for entry in psutil.Process().open_files()]
    except ImportError:
        paths = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                paths.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
    return sorted(path for path in paths if path.startswith(str(root)))


def assert_named_once(caplog, capsys_out: str, bad: list[Path]) -> None:
    """Each bad file in exactly one warning, the end-of-run line once with the right total, naming them all."""
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    for path in bad:
        assert sum(str(path) in message for message in warnings) == 1, (path, warnings)
    lines = [line for line in capsys_out.splitlines() if line.startswith("Skipped ")]
    assert len(lines) == 1, capsys_out
    assert lines[0].startswith(f"Skipped {len(bad)} unreadable image(s): ")
    assert all(str(path) in lines[0] for path in bad)


@pytest.fixture
def caplog_skips(caplog):
    caplog.set_level(logging.WARNING)
    return caplog


# --------------------------------------------------------------------------------------------------- decode_image


def test_decode_image_applies_the_exif_orientation(tmp_path):
    rotated = write_rotated(tmp_path / "rotated.jpg")
    truncated = write_truncated(tmp_path / "truncated.jpg")
    image = decode_image(str(write_good(tmp_path / "good.jpg")))
    assert image.mode == "RGB" and image.size == (64, 48)
    for value in (str(rotated), {"bytes": rotated.read_bytes(), "path": None}, {"bytes": None, "path": str(rotated)}):
        shown = decode_image(value)
        assert shown.size == (32, 64)  # EXIF orientation 6 applied, as datasets' own decoder does
        assert top_is_red(torch.from_numpy(np.asarray(shown, dtype=np.float32) / 255).permute(2, 0, 1))

    # SafeImageTransform (pretraining) decodes the same way and keeps its fields and messages
    columns = SafeImageTransform(lambda image: torch.tensor(image.size))({"image": [str(rotated), str(truncated)]})
    assert list(columns) == ["pixel_values", "decode_error"]
    assert columns["pixel_values"][0].tolist() == [32, 64] and columns["pixel_values"][1] is None
    assert columns["decode_error"][0] is None and columns["decode_error"][1].startswith(f"{truncated}: OSError: ")


def test_decode_image_closes_its_files_and_refuses_truncated_ones(tmp_path):
    truncated = write_truncated(tmp_path / "truncated.jpg")
    not_an_image = write_not_an_image(tmp_path / "not_an_image.jpg")
    rotated = write_rotated(tmp_path / "rotated.jpg")
    shown = decode_image(str(rotated))
    assert open_files_under(tmp_path) == []
    assert np.asarray(shown).sum() > 0  # loaded, owns its pixels after its file was closed
    for bad in (truncated, not_an_image):
        for value in (str(bad), {"bytes": None, "path": str(bad)}, {"bytes": bad.read_bytes(), "path": str(bad)}):
            with pytest.raises(DECODE_ERRORS) as caught:
                decode_image(value)
            # the exception (and its traceback) is still alive here: the file must be closed all the same
            assert open_files_under(tmp_path) == [], (bad, caught.value)
    with pytest.raises(OSError, match="truncated"):
        decode_image(str(truncated))
    assert PIL.ImageFile.LOAD_TRUNCATED_IMAGES is False  # never switched on globally


def test_skipped_files_names_each_file_once(caplog_skips):
    from hf_mim.data.skipped import SkippedFiles, SkippingCollator, readable_part

    skipped = SkippedFiles()
    assert skipped.add("a.jpg", OSError("image file is truncated")) is True
    assert skipped.add("a.jpg", OSError("image file is truncated")) is False
    assert skipped.update([("b.jpg", "UnidentifiedImageError: no"), ("a.jpg", "again"), "c.jpg: OSError: x"]) == 2
    assert len(skipped) == 3 and "b.jpg" in skipped and list(skipped) == ["a.jpg", "b.jpg", "c.jpg: OSError: x"]
    assert skipped.errors["a.jpg"] == "OSError: image file is truncated"
    assert skipped.summary().startswith("Skipped 3 unreadable image(s): a.jpg (OSError: image file is truncated), ")
    assert SkippedFiles().summary() == "Skipped 0 unreadable image(s)."
    messages = [record.getMessage() for record in caplog_skips.records if record.name == SKIP_LOGGER]
    assert [message.count("a.jpg") for message in messages] == [1, 0, 0]
    assert skipped.gathered() is skipped  # not distributed

    collate = SkippingCollator({"pixel_values": torch.zeros(3, 2, 2), "labels": -100})
    good = {"pixel_values": torch.ones(3, 2, 2), "labels": 4, "skipped_file": None}
    bad = {"pixel_values": None, "labels": 1, "skipped_file": ("d.jpg", "OSError: x")}
    batch = collate([good, bad])
    assert batch["labels"].tolist() == [4, -100] and batch["readable"].tolist() == [True, False]
    assert batch["pixel_values"][1].abs().sum() == 0 and batch["skipped_files"] == [("d.jpg", "OSError: x")]
    part = readable_part(batch, skipped)
    assert part["labels"].tolist() == [4] and set(part) == {"pixel_values", "labels"} and "d.jpg" in skipped
    assert readable_part(collate([bad, bad]), skipped) is None  # a batch of failures is skipped


# ---------------------------------------------------------------------------------------------------- fine-tuning


def test_finetuning_example_skips_unreadable_files_in_train_and_eval(tmp_path, capsys, caplog_skips):
    script = load_script("examples/pytorch/image-classification/run_image_classification.py")
    data = tmp_path / "data"
    train, validation = classification_folder(data / "train"), classification_folder(data / "val")
    argv = ["--train_dir", str(data / "train"), "--validation_dir", str(data / "val"), "--config_name", "ijepa-tiny",
            "--image_size", "28", "--num_train_epochs", "3", "--per_device_train_batch_size", "2",
            "--per_device_eval_batch_size", "2", "--save_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "true",
            "--report_to", "none", "--dataloader_num_workers", "0", "--output_dir", str(tmp_path / "out")]  # fmt: skip
    result = script.main(argv)  # three epochs, an evaluation after each: every bad file met several times
    out = capsys.readouterr().out
    bad = [files[name] for files in (train, validation) for name in ("not_an_image", "truncated")]
    assert_named_once(caplog_skips, out, bad)
    assert result["skipped_images"] == 4 and result["train_images"] == 4 and np.isfinite(result["train_loss"])
    assert 0.0 <= result["top1"] <= 1.0  # over the two readable validation images; the batch of two failures skipped
    assert open_files_under(data) == []

    # the transform the example uses turns the EXIF image upright
    from hf_mim.finetuning import ClassificationExamples, finetuning_eval_transform

    transform = ClassificationExamples(finetuning_eval_transform(28, (0, 0, 0), (1, 1, 1), crop_pct=1.0))
    example = transform({"image": [{"bytes": None, "path": str(train["rotated"])}], "label": [0]})
    assert top_is_red(example["pixel_values"][0])


def test_finetuning_trainer_refills_a_training_batch_of_failures_and_skips_such_an_eval_batch(tmp_path):
    import datasets

    import hf_mim
    from hf_mim.data.transforms import without_decoding
    from hf_mim.finetuning import (
        ClassificationExamples,
        FinetuningArguments,
        FinetuningTrainer,
        classification_collator,
        finetuning_eval_transform,
    )

    files = classification_folder(tmp_path / "data")
    rows = datasets.Dataset.from_dict(
        {"image": [str(files[name]) for name in ("not_an_image", "truncated", "good", "rotated")],
         "label": [1, 1, 0, 0]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )  # fmt: skip
    dataset = without_decoding(rows, "image").with_transform(ClassificationExamples(finetuning_eval_transform(28)))
    collate = classification_collator(28)
    model = hf_mim.IJepaForImageClassification(hf_mim.IJepaConfig.tiny(num_labels=2))
    args = FinetuningArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", mixup_alpha=0.0,
                               cutmix_alpha=0.0, eval_strategy="no")  # fmt: skip
    trainer = FinetuningTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
    trainer.current_gradient_accumulation_steps = 1  # what train() sets before its training steps
    failures = collate([dataset[0], dataset[1]])
    assert failures["readable"].tolist() == [False, False]
    loss = trainer.training_step(model, failures)  # refilled from the readable rows
    assert torch.isfinite(loss) and float(loss) > 0
    assert trainer.prediction_step(model, collate([dataset[0], dataset[1]]), prediction_loss_only=False) == (
        None, None, None,
    )  # fmt: skip
    loss, logits, labels = trainer.prediction_step(model, collate([dataset[1], dataset[2]]), False)
    assert logits.shape == (2, 2) and labels.tolist() == [-100, 0] and torch.isfinite(loss)
    assert sorted(trainer.skipped_files) == sorted(str(files[name]) for name in ("not_an_image", "truncated"))


# ------------------------------------------------------------------------------------------------------------ k-NN


def test_knn_example_skips_unreadable_files(tmp_path, capsys, caplog_skips):
    script = load_script("examples/pytorch/image-classification/run_knn.py")
    data = tmp_path / "data"
    train, test = classification_folder(data / "train"), classification_folder(data / "test")
    result = script.main(["--config_name", "capi-tiny", "--train_dir", str(data / "train"), "--test_dir",
                          str(data / "test"), "--image_size", "28", "--batch_size", "2", "--k", "1"])  # fmt: skip
    out = capsys.readouterr().out
    bad = [files[name] for files in (train, test) for name in ("not_an_image", "truncated")]
    assert_named_once(caplog_skips, out, bad)
    assert result["skipped_images"] == 4 and result["train_images"] == 2 and result["test_images"] == 2
    assert 0.0 <= result["knn_top1"] <= 1.0
    assert open_files_under(data) == []

    from hf_mim import CapiImageProcessor
    from hf_mim.data.labelled import ProcessedExamples

    side = {"height": 28, "width": 28}
    processor = CapiImageProcessor(size=side, crop_size=side, do_center_crop=False)
    example = ProcessedExamples(processor)({"image": [{"bytes": None, "path": str(train["rotated"])}], "label": [0]})
    assert top_is_red(example["pixel_values"][0])


# ---------------------------------------------------------------------------------------------------- segmentation


def segmentation_folder(root: Path) -> dict[str, Path]:
    """images/ + masks/: a good pair, the EXIF-rotated image with a mask drawn upright (1 on top, 2 below), a
    truncated image and an unreadable mask; sorted, the two bad pairs come last and together."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()

    def mask(name, height, width):
        labels = np.ones((height, width), dtype=np.uint8)
        labels[height // 2 :] = 2
        PIL.Image.fromarray(labels).save(root / "masks" / f"{name}.png")

    write_good(root / "images" / "a_good.jpg")
    mask("a_good", 48, 64)
    write_rotated(root / "images" / "b_rotated.jpg")
    mask("b_rotated", 64, 32)  # the shown orientation: only an upright image fits it
    write_truncated(root / "images" / "c_truncated.jpg")
    mask("c_truncated", 48, 64)
    write_good(root / "images" / "d_bad_mask.jpg", seed=3)
    write_not_an_image(root / "masks" / "d_bad_mask.png")
    return {
        "rotated": root / "images" / "b_rotated.jpg",
        "rotated_mask": root / "masks" / "b_rotated.png",
        "truncated": root / "images" / "c_truncated.jpg",
        "bad_mask": root / "masks" / "d_bad_mask.png",
    }


@pytest.mark.parametrize("protocol", ["linear", "knn"])  # Trainer training + evaluation; patch bank + evaluation
def test_segmentation_example_skips_pairs_with_an_unreadable_image_or_mask(tmp_path, capsys, caplog_skips, protocol):
    script = load_script("examples/pytorch/semantic-segmentation/run_semantic_segmentation.py")
    data = tmp_path / "data"
    train, validation = segmentation_folder(data / "train"), segmentation_folder(data / "val")
    result = script.main(
        ["--protocol", protocol, "--config_name", "vicregl-tiny", "--train_dir", str(data / "train"),
         "--validation_dir", str(data / "val"), "--image_size", "32", "--per_device_train_batch_size", "2",
         "--per_device_eval_batch_size", "2", "--num_train_epochs", "3", "--num_visualized", "2", "--disable_tqdm",
         "True", "--save_strategy", "no", "--use_cpu", "True", "--output_dir", str(tmp_path / "out")]
    )  # fmt: skip
    out = capsys.readouterr().out
    bad = [files[name] for files in (train, validation) for name in ("truncated", "bad_mask")]
    assert_named_once(caplog_skips, out, bad)
    assert result["skipped_images"] == 4 and 0.0 <= result["mean_iou"] <= 1.0
    assert open_files_under(data) == []

    from hf_mim.data.segmentation import SegmentationExamples, SegmentationTransform

    examples = SegmentationExamples(SegmentationTransform(32, mean=(0, 0, 0), std=(1, 1, 1)))
    pair = {"bytes": None, "path": str(train["rotated"])}, {"bytes": None, "path": str(train["rotated_mask"])}
    output = examples({"image": [pair[0]], "label": [pair[1]]})
    pixels, labels = output["pixel_values"][0], output["labels"][0]
    assert top_is_red(pixels) and labels[:16].eq(1).all() and labels[16:].eq(2).all()  # image and mask aligned


# ------------------------------------------------------------------------------------------- the dVAE tokenizer


def test_dalle_tokenizer_views_skip_unreadable_files(tmp_path, capsys, caplog_skips):
    script = load_script("examples/pytorch/pretraining/train_dalle_tokenizer.py")
    data = tmp_path / "data"
    files = classification_folder(data)
    out_dir = tmp_path / "tokenizer"
    argv = ["--output_dir", str(out_dir), "--train_dir", str(data), "--steps", "1", "--batch_size", "4",
            "--views_per_image", "3", "--vocab_size", "16", "--hidden_size", "4"]  # fmt: skip
    assert script.main(argv) == 0  # 12 views from 2 readable images: the bad files are met 6 times each
    out = capsys.readouterr().out
    bad = [files["not_an_image"], files["truncated"]]
    assert_named_once(caplog_skips, out, bad)
    assert open_files_under(data) == []

    transform = script.TwoViewCropTransform.cae_v1(32, second_size=32, scale=(1.0, 1.0), hflip=False)
    rows = [{"image": {"bytes": None, "path": str(files["rotated"])}}]
    views = script.training_views(rows, "image", transform, 1, seed=0)
    assert top_is_red(views[0])
