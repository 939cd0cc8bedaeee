"""The small example scripts that other tests do not cover: k-NN evaluation and the PCA picture."""

import json

import PIL.Image

from .helpers import run_script


def test_run_knn_on_random_init_capi():
    result = run_script("examples/pytorch/image-classification/run_knn.py", "--config_name", "capi-tiny", "--k", "10")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["train_images"] + report["test_images"] == 1797
    # digits are easy: even random CAPI features are far above the 10 % chance level
    assert 0.3 < report["knn_top1"] <= 1.0 and report["effective_rank"] > 1


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
