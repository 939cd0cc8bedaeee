"""The small example scripts that other tests do not cover: k-NN evaluation and the PCA picture."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from .helpers import load_script, run_script


def test_run_knn_on_random_init_capi():
    result = run_script(
        "examples/pytorch/image-classification/run_knn.py", "--config_name", "capi-tiny", "--image_size", "28"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    probes = report["probes"]
    assert report["image_size"] == 28 and set(probes) == {"digits", "transformed_digits"}
    assert "clean digits" in result.stdout and "transformed digits" in result.stdout
    # Clean digits are easy for raw pixels and even random CAPI features beat chance (10 %) there; the transformed
    # digits are the harder probe for pixels.
    assert (
        probes["digits"]["raw_pixels"]["knn_top1"]
        > 0.95
        > 0.85
        > probes["transformed_digits"]["raw_pixels"]["knn_top1"]
    )
    assert 0.2 < probes["digits"]["random capi-tiny"]["pooled"]["knn_top1"] <= 1.0


def write_class_folders(root: Path, count: int = 3) -> None:
    """Two classes of 32-px images: reddish and bluish noise."""
    rng = np.random.default_rng(0)
    for name, channel in (("red", 0), ("blue", 2)):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
            pixels[..., channel] += 170
            PIL.Image.fromarray(pixels).save(root / name / f"{i}.png")


def test_run_knn_on_image_folders_with_the_checkpoints_own_baseline(tmp_path):
    from hf_mim import CapiConfig, CapiImageProcessor, CapiModel
    from hf_mim.image_processing_utils import image_processor_at

    torch.manual_seed(0)
    checkpoint = tmp_path / "backbone"
    CapiModel(CapiConfig.tiny(patch_size=7, image_size=28)).save_pretrained(checkpoint)
    image_processor_at(CapiImageProcessor, 28).save_pretrained(checkpoint)
    data = tmp_path / "data"
    write_class_folders(data / "train")
    write_class_folders(data / "validation")
    script = load_script("examples/pytorch/image-classification/run_knn.py")
    common = ["--model_name_or_path", str(checkpoint), "--k", "1", "--batch_size", "4"]
    folders = script.main([*common, "--train_dir", str(data / "train"), "--validation_dir", str(data / "validation")])
    # The checkpoint's own resolution (its processor's crop) and its own config for the random row (patch 7, 64 wide).
    assert folders["image_size"] == 28 and list(folders["rows"]) == ["random init", "trained"]
    assert all(row["feature_dim"] == 64 and row["train_images"] == row["test_images"] == 6
               for row in folders["rows"].values())  # fmt: skip
    assert folders["knn_top1"] == folders["rows"]["trained"]["knn_top1"] == 1.0  # colour separates the classes
    # The same folders through --dataset_name (the imagefolder builder infers the splits offline) give the same rows.
    named = script.main([*common, "--dataset_name", str(data)])
    assert named["rows"] == folders["rows"]


def test_pca_picture(tmp_path):
    output = tmp_path / "pca.png"
    result = run_script(
        "examples/pytorch/feature-extraction/pca_features.py", "--resolution", "112", "--output_file", str(output)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    image = PIL.Image.open(output)
    assert image.size == (224, 112) and image.mode == "RGB"
    right = image.crop((112, 0, 224, 112)).getextrema()
    assert all(high - low > 100 for low, high in right)  # the PCA half uses the full colour range


def test_pca_picture_against_the_checkpoints_random_init(tmp_path):
    from hf_mim import CapiConfig, CapiImageProcessor, CapiModel
    from hf_mim.image_processing_utils import image_processor_at

    torch.manual_seed(0)
    checkpoint = tmp_path / "backbone"
    CapiModel(CapiConfig.tiny(patch_size=7, image_size=28)).save_pretrained(checkpoint)
    image_processor_at(CapiImageProcessor, 28).save_pretrained(checkpoint)
    script = load_script("examples/pytorch/feature-extraction/pca_features.py")
    output = script.main(["--model_name_or_path", str(checkpoint), "--compare_random_init", "--resolution", "56",
                          "--output_file", str(tmp_path / "pca.png")])  # fmt: skip
    picture = PIL.Image.open(output)
    assert picture.size == (150 + 4 * 160, 3 * 160)  # four bundled photos; input, initialisation, trained rows
