"""The pretraining scripts' loader defaults (issue 24 item 4): worker processes scale with the cores, persistent
workers that still draw each epoch's augmentations, no pinned memory without an accelerator; `--logging_steps` that
follows a short `--max_steps` (issue 27) unless given; and the data-pipeline
speed-ups of benchmarks/benchmark_data.py give the same tensors as the code they replaced."""

import dataclasses
import hashlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import torch
import torchvision.transforms.functional as TF
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from hf_mim.data import PositionalDataset, decode_image
from hf_mim.data.positional import seeded_rng
from hf_mim.data.transforms import IMAGENET_MEAN, IMAGENET_STD, NormalizedTensor, to_tensor
from hf_mim.image_processing_utils import _pil_to_rgb_array
from hf_mim.masking import BlockMasking, InverseBlockMasking
from hf_mim.trainers import arguments as arguments_module
from hf_mim.trainers.arguments import default_dataloader_num_workers
from hf_mim.trainers.run_pretraining import run

from .helpers import load_script

PIN_MEMORY_WARNING = "'pin_memory' argument is set as true but no accelerator is found"


def capi_recipe():
    return load_script("examples/pytorch/pretraining/run_capi.py").CAPI


@pytest.fixture
def images(tmp_path) -> Path:
    """Ten 40 x 48 noise images: five steps an epoch at batch 2."""
    folder = tmp_path / "images" / "class_a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(10):
        PIL.Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "images"


def arguments(data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--train_dir", str(data), "--config_name", "capi-tiny", "--output_dir", str(output),
        "--per_device_train_batch_size", "2", "--learning_report", "False", "--report_to", "none",
        "--seed", "1", "--disable_tqdm", "True", "--save_strategy", "no", *extra,
    ]  # fmt: skip


class _Stop(Exception):
    pass


def training_arguments(argv: list[str]):
    """The TrainingArguments run() hands the trainer for `argv` (the trainer is replaced by one that stops)."""
    seen = {}

    class Capture:
        def __init__(self, *args, **kwargs):
            seen["args"] = kwargs["args"]
            raise _Stop

    with pytest.raises(_Stop):
        run(dataclasses.replace(capi_recipe(), trainer_class=Capture), argv)
    return seen["args"]


# ---------------------------------------------------------------- the defaults
@pytest.mark.parametrize(
    "cores, local_world_size, expected",
    [(64, None, 8), (16, "1", 8), (16, "4", 3), (9, None, 8), (4, "2", 1), (2, None, 1), (1, None, 0), (8, "x", 7)],
)
def test_default_workers_scale_with_the_cores_of_each_process(monkeypatch, cores, local_world_size, expected):
    monkeypatch.setattr(arguments_module.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    if local_world_size is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world_size)
    assert default_dataloader_num_workers() == expected


def test_run_sets_the_loader_defaults(images, tmp_path):
    args = training_arguments(arguments(images, tmp_path / "out"))
    workers = default_dataloader_num_workers()
    assert args.dataloader_num_workers == workers
    assert args.dataloader_persistent_workers == (workers > 0)
    if not torch.accelerator.is_available():
        assert args.dataloader_pin_memory is False


@pytest.mark.parametrize(
    "extra, workers, persistent",
    [
        (("--dataloader_num_workers", "0"), 0, False),
        (("--dataloader_num_workers", "3"), 3, True),
        (("--dataloader_num_workers=2", "--dataloader_persistent_workers", "False"), 2, False),
        (("--dataloader_num_workers", "2", "--augmentation_rng", "global"), 2, False),  # the originals' loaders
    ],
)
def test_given_loader_options_win(images, tmp_path, extra, workers, persistent):
    args = training_arguments(arguments(images, tmp_path / "out", *extra))
    assert (args.dataloader_num_workers, args.dataloader_persistent_workers) == (workers, persistent)


def test_json_arguments_get_the_same_defaults(images, tmp_path):
    argv = arguments(images, tmp_path / "out")
    # a JSON file holds typed values: numbers as numbers (HfArgumentParser.parse_dict does not convert strings)
    settings = {key[2:]: int(value) if value.isdigit() else value for key, value in zip(argv[::2], argv[1::2])}
    settings["learning_report"] = False
    settings["disable_tqdm"] = True
    path = tmp_path / "args.json"
    path.write_text(json.dumps(settings))
    args = training_arguments([str(path)])
    workers = default_dataloader_num_workers()
    assert (args.dataloader_num_workers, args.dataloader_persistent_workers) == (workers, workers > 0)
    path.write_text(json.dumps({**settings, "dataloader_num_workers": 2}))
    args = training_arguments([str(path)])
    assert (args.dataloader_num_workers, args.dataloader_persistent_workers) == (2, True)


# ---------------------------------------------------------------- logging_steps
@pytest.mark.parametrize(
    "extra, expected",
    [
        (("--max_steps", "40"), 2),  # transformers' 500 would log no loss at all in this run
        (("--max_steps", "1000"), 50),
        (("--max_steps", "100000"), 500),  # never rarer than transformers' default
        (("--max_steps", "40", "--logging_steps", "500"), 500),  # given, even equal to the default, it wins
        (("--max_steps", "40", "--logging_step=7"), 7),  # an abbreviation argparse accepts is a given option too
        ((), 500),  # a run counted in epochs: its length is not known here, transformers' default stays
    ],
)
def test_logging_steps_follow_a_short_run_unless_given(images, tmp_path, extra, expected):
    args = training_arguments(arguments(images, tmp_path / "out", *extra))
    assert args.logging_steps == expected


def test_logging_steps_given_in_a_json_file_win(images, tmp_path):
    path = tmp_path / "args.json"
    common = {"train_dir": str(images), "config_name": "capi-tiny", "output_dir": str(tmp_path / "out"),
              "learning_report": False, "report_to": "none", "save_strategy": "no", "max_steps": 40}  # fmt: skip
    path.write_text(json.dumps(common))
    assert training_arguments([str(path)]).logging_steps == 2
    path.write_text(json.dumps({**common, "logging_steps": 10}))
    assert training_arguments([str(path)]).logging_steps == 10


@pytest.mark.skipif(torch.accelerator.is_available(), reason="the warning is about machines without an accelerator")
def test_cpu_run_prints_no_pin_memory_warning(images, tmp_path, capfd):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        list(DataLoader(list(range(4)), pin_memory=True))  # the warning exists here, without the default
    assert any(PIN_MEMORY_WARNING in str(w.message) for w in caught)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run(capi_recipe(), arguments(images, tmp_path / "out", "--max_steps", "6")) == 0
    assert not [w for w in caught if "pin_memory" in str(w.message)]
    out, err = capfd.readouterr()
    assert "pin_memory" not in out + err


@pytest.mark.skipif(torch.accelerator.is_available(), reason="pinning stays on where an accelerator exists")
def test_every_hf_mim_training_arguments_pins_only_with_an_accelerator(tmp_path):
    from hf_mim.finetuning.trainer import FinetuningArguments
    from hf_mim.trainers import CaeTrainingArguments, CapiTrainingArguments

    segmentation = load_script("examples/pytorch/semantic-segmentation/run_semantic_segmentation.py")
    classes = (CapiTrainingArguments, CaeTrainingArguments, FinetuningArguments,
               segmentation.SegmentationTrainingArguments)  # fmt: skip
    for arguments_class in classes:
        assert arguments_class(output_dir=str(tmp_path)).dataloader_pin_memory is False, arguments_class
        assert arguments_class(output_dir=str(tmp_path), use_cpu=True).dataloader_pin_memory is False


# ---------------------------------------------------------------- persistent workers draw each epoch's crops
def test_persistent_workers_train_exactly_as_the_main_process(images, tmp_path):
    """7 steps over two epochs (5 steps each): one persistent worker gives the weights of workers 0, so its second
    epoch drew the second epoch's crops and masks (with the first epoch's it would not)."""
    common = ("--max_steps", "7", "--use_cpu", "True")
    assert run(capi_recipe(), arguments(images, tmp_path / "main", "--dataloader_num_workers", "0", *common)) == 0
    argv = arguments(images, tmp_path / "worker", "--dataloader_num_workers", "1", *common)
    assert training_arguments(argv).dataloader_persistent_workers
    assert run(capi_recipe(), argv) == 0
    expected, got = (
        load_file(tmp_path / "main" / "model.safetensors"),
        load_file(tmp_path / "worker" / "model.safetensors"),
    )
    assert [name for name in expected if not torch.equal(expected[name], got[name])] == []


class _Noise:
    def __len__(self):
        return 6

    def __getitem__(self, index):
        return {"pixel_values": torch.rand(3)}


def _stack(examples):
    return torch.stack([example["pixel_values"] for example in examples])


@pytest.mark.parametrize("context", [None, "spawn"])
def test_positional_epoch_reaches_persistent_workers(context):
    def epochs(workers: int) -> list[torch.Tensor]:
        dataset = PositionalDataset(_Noise(), seed=3)
        loader = DataLoader(dataset, batch_size=2, num_workers=workers, persistent_workers=workers > 0,
                            multiprocessing_context=context if workers else None, collate_fn=_stack)  # fmt: skip
        drawn = []
        for epoch in range(3):
            dataset.set_epoch(epoch)
            drawn.append(torch.cat(list(loader)))
        return drawn

    expected, got = epochs(0), epochs(2)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    assert not torch.equal(expected[0], expected[1])


# ---------------------------------------------------------------- the speed-ups change no output
@pytest.mark.parametrize("cached_gaussian", [False, True])
def test_seeded_rng_gives_numpy_its_exact_state_back(cached_gaussian):
    before = np.random.get_state()
    try:
        np.random.seed(11)
        if cached_gaussian:
            np.random.standard_normal()  # the second value of the pair waits in the cache
        state = np.random.get_state()
        with seeded_rng(123):
            inside = np.random.rand(3)
            np.random.standard_normal()  # leaves a cached value of its own
        after = np.random.get_state()
        assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]
        with seeded_rng(123):
            assert np.array_equal(np.random.rand(3), inside)
        reference = np.random.RandomState()
        reference.set_state(state)
        assert np.array_equal(np.random.standard_normal(5), reference.standard_normal(5))
    finally:
        np.random.set_state(before)


def test_seeded_rng_with_another_global_bit_generator():
    before = np.random.get_bit_generator()
    try:
        np.random.set_bit_generator(np.random.PCG64(5))
        state = np.random.get_state(legacy=False)
        with seeded_rng(9):
            np.random.rand(2)
        assert np.random.get_state(legacy=False)["state"] == state["state"]
    finally:
        np.random.set_bit_generator(before)


def _encoded(image: PIL.Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_decode_image_converts_plain_modes_without_numpy_same_pixels():
    rng = np.random.default_rng(1)
    rgb = PIL.Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8))
    exif = PIL.Image.Exif()
    exif[PIL.Image.ExifTags.Base.Orientation] = 6
    sources = [
        _encoded(rgb, "JPEG"),
        _encoded(rgb, "JPEG", exif=exif),
        _encoded(rgb.convert("L"), "JPEG"),
        _encoded(rgb.convert("CMYK"), "JPEG"),
        _encoded(rgb, "PNG"),
        _encoded(rgb.convert("RGBA"), "PNG"),
        _encoded(rgb.convert("P"), "PNG"),
        rgb.convert("YCbCr"),
        rgb.convert("1"),
    ]
    for source in sources:
        decoded = decode_image(source)
        reference = source if isinstance(source, PIL.Image.Image) else PIL.Image.open(io.BytesIO(source))
        reference = PIL.ImageOps.exif_transpose(reference)  # the array path, as decode_image took before
        assert decoded.mode == "RGB" and decoded.info == {}
        assert np.array_equal(np.asarray(decoded), _pil_to_rgb_array(reference))


def test_tensor_conversions_equal_torchvisions():
    rng = np.random.default_rng(2)
    image = PIL.Image.fromarray(rng.integers(0, 255, (33, 47, 3), dtype=np.uint8))
    fast = NormalizedTensor(IMAGENET_MEAN, IMAGENET_STD)(image)
    slow = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    assert fast.is_contiguous() and torch.equal(fast, slow(image))
    gray = image.convert("L")
    assert torch.equal(NormalizedTensor(IMAGENET_MEAN, IMAGENET_STD)(gray), slow(gray))  # falls back
    for picture in (image, gray, image.convert("1")):
        assert torch.equal(to_tensor(picture), TF.to_tensor(picture))


def _digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.contiguous().numpy().tobytes())
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    return digest.hexdigest()[:16]


def test_masks_are_the_ones_drawn_before_the_speed_up():
    """Digests of masks drawn by the torch-tensor implementations these replaced (numpy maps, same torch draws)."""
    generator = torch.Generator().manual_seed(0)
    blocks = BlockMasking(98)(64, (14, 14), generator).bool_masked_pos
    fallback = BlockMasking(3, min_num_patches=16, max_attempts=5)(8, (2, 2), generator).bool_masked_pos
    inverse = InverseBlockMasking(0.65, 0.05)(64, (16, 16), generator)
    assert _digest(blocks, fallback) == "a31e1783eafd18da"
    assert _digest(inverse.visible_indices, inverse.predict_indices) == "b0c44654143ccb90"
