"""hf_mim's data transforms against the originals' own transform code: CAE v1 / v2 (Atten4Vis/CAE
`DataAugmentationForCAE`) and VICRegL (`MultiCropTrainDataTransform`).

`tests/fixtures/transforms_{cae,vicregl}` were recorded by `scripts/trajectory/record_transforms.py`, which runs the
originals' code on scikit-image photos (one not square, one grayscale of odd size) with fixed seeds. Compared here:

* CAE: the original draws its crop box from Python's `random`, hf_mim from torch, so the recorded box is handed to
  `TwoViewCropTransform(image, crop_box=...)`; the colour jitter (v2) and the flip are drawn from torch in both, in
  the same order, so the same `torch.manual_seed` gives the same jitter and flip. Both views must be bit-exact: PIL
  bicubic encoder view + ImageNet mean/std, PIL lanczos tokenizer view + DALL-E `map_pixels` (v1), PIL bicubic CLIP
  view + CLIP mean/std (v2). The box distribution (1000 boxes of hf_mim's sampler vs 1000 of the original's
  `get_params`, two image shapes) must agree by a two-sample Kolmogorov-Smirnov test on the area fraction and the
  log aspect ratio, and the block masks of the CAE model's own generator (256 vs the original's 256, 14 x 14 grid)
  by their block count and boundary length (|z| < 4; the draws differ: Python's `random` vs torch).
* VICRegL: the box sampler, flip, colour pipeline and blur (`blur_rng="numpy"`) draw the same numbers in the same
  order as the original, so the same seeds give the same crops: the views must be bit-exact (colour augmentation ON:
  jitter, grayscale, blur, solarize), and the grids equal the original's `_location_to_NxN_grid` within float32
  rounding (measured: at most 6.1e-5 px on boxes of 512 px photos; the original sums in float32, hf_mim in closed
  form). The original hard-codes 7 x 7 / 3 x 3 grids whatever the crop size, hf_mim uses crop_size //
  feature_stride: the same at the recipe's 224 / 96 px and stride 32 (the `full_*` runs); at the small recorded
  sizes the original's grids are compared with hf_mim's grid function on the recorded boxes.
* The constants as the originals' transform objects hold them: sizes, interpolation, mean / std, crop scale and
  ratio ranges, colour probabilities, mask settings.

Every check is also run on injected faults (wrong interpolation, mean / std, normalisation of the second view,
flip, jitter, crop scale, mask generator, unflipped grids, blur RNG) and must fail on each, with the constant
checks switched off too, so that the comparison of outputs catches the fault and not only the constants.
"""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file
from skimage.measure import label
from torchvision.transforms.functional import pil_modes_mapping

from hf_mim import CaeConfig, CaeForPreTraining
from hf_mim.data import CLIP_MEAN, CLIP_STD, MultiCropTransform, TwoViewCropTransform, crop_location_grid
from hf_mim.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hf_mim.masking import BlockMasking

from .helpers import FIXTURES

KS_CRITICAL = 0.0872  # two-sample KS at alpha = 1e-3 with 1000 + 1000 draws: 1.949 * sqrt(2 / 1000)
MASK_Z = 4.0  # difference of means, in standard errors
GRID_ATOL = 1e-4  # px: float32 running sums (original) vs closed form (hf_mim)


def load(folder: str) -> tuple[dict, dict]:
    record = json.loads((FIXTURES / folder / "record.json").read_text())
    tensors = {run: load_file(FIXTURES / folder / f"{run}.safetensors") for run in record["runs"]}
    return record, tensors


def rebuild_photos(record: dict) -> dict[str, PIL.Image.Image]:
    """The recorded photos, in their own mode (camera stays grayscale: hf_mim's transforms decode it to RGB)."""
    import skimage.data

    photos = {}
    for photo in record["photos"]:
        image = PIL.Image.fromarray(getattr(skimage.data, photo["name"])())
        photos[photo["name"]] = image.crop(tuple(photo["crop"])) if photo["crop"] else image
    return photos


@pytest.fixture(scope="module")
def cae():
    record, tensors = load("transforms_cae")
    return record, tensors, rebuild_photos(record)


@pytest.fixture(scope="module")
def vicregl():
    record, tensors = load("transforms_vicregl")
    return record, tensors, rebuild_photos(record)


def assert_equal(ours: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert ours.shape == expected.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(expected.shape)}"
    gap = (ours.double() - expected.double()).abs().max().item()
    assert torch.equal(ours, expected), f"{what} differs from the original by up to {gap:.3g}"


def assert_float32_equal(ours, expected, what: str) -> None:
    """Constants compared as the originals hold them (float32 tensors in CAE's Normalize)."""
    assert torch.equal(torch.tensor(ours, dtype=torch.float32), torch.tensor(expected, dtype=torch.float32)), (
        f"{what}: {ours} != the original's {expected}"
    )


# ------------------------------------------------------------------------------------------------------------ CAE
def cae_transform(version: str, **changes) -> TwoViewCropTransform:
    """hf_mim's CAE recipe transform at the recorded 32 px view size."""
    recipe = TwoViewCropTransform.cae_v1 if version == "v1" else TwoViewCropTransform.cae_v2
    return recipe(image_size=32, **changes)


def cae_masking(record: dict, version: str) -> BlockMasking:
    """The mask generator hf_mim's CAE model builds from its config (`CaeForPreTraining.build_mask_generator`)."""
    masks = record["runs"][version]["masks"]
    config = CaeConfig(num_masking_patches=masks["num_masking_patches"])
    return CaeForPreTraining.build_mask_generator(config)


def check_cae_outputs(run: dict, tensors: dict, photos: dict, transform: TwoViewCropTransform) -> None:
    for k, sample in enumerate(run["samples"]):
        torch.manual_seed(sample["seed"])
        out = transform(photos[sample["image"]], crop_box=sample["box"])
        what = f"{sample['image']} (seed {sample['seed']}, flip {sample['flip']})"
        assert_equal(out["pixel_values"], tensors[f"pixel_values.{k}"], f"encoder view of {what}")
        assert_equal(out["target_pixel_values"], tensors[f"target_pixel_values.{k}"], f"target view of {what}")


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    values = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), values, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), values, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def check_cae_boxes(run: dict, tensors: dict, transform: TwoViewCropTransform) -> None:
    torch.manual_seed(0)
    for height, width in run["crop"]["box_shapes"]:
        expected = tensors[f"boxes.{height}x{width}"].double().numpy()
        canvas = PIL.Image.new("RGB", (width, height))
        ours = np.array([transform.crop_box(canvas) for _ in range(len(expected))], dtype=np.float64)
        for boxes in (ours, expected):  # inside the image
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= height).all()
            assert (boxes[:, 1] + boxes[:, 3] <= width).all() and (boxes[:, 2:] >= 1).all()
        for name, statistic in (
            ("area fraction", lambda b, area=height * width: b[:, 2] * b[:, 3] / area),
            ("log aspect ratio", lambda b: np.log(b[:, 3] / b[:, 2])),
        ):
            distance = ks_distance(statistic(ours), statistic(expected))
            print(f"box {name} on {height}x{width}: KS distance {distance:.3f} (bound {KS_CRITICAL})")
            assert distance < KS_CRITICAL, f"box {name} on {height}x{width}: KS distance {distance:.3f}"


def mask_statistics(masks: np.ndarray, grid: tuple[int, int]) -> dict[str, np.ndarray]:
    masks = masks.reshape(-1, *grid)
    return {
        "blocks": np.array([label(mask, connectivity=1, return_num=True)[1] for mask in masks], dtype=np.float64),
        "boundary": ((masks[:, 1:] != masks[:, :-1]).sum((1, 2)) + (masks[:, :, 1:] != masks[:, :, :-1]).sum((1, 2))),
    }


def check_cae_masks(run: dict, tensors: dict, masking) -> None:
    settings = run["masks"]
    grid = tuple(settings["grid"])
    expected = np.unpackbits(tensors["masks"].numpy(), axis=1)[:, : grid[0] * grid[1]].astype(bool)
    generator = torch.Generator().manual_seed(0)
    ours = masking(len(expected), grid, generator=generator).bool_masked_pos.numpy()
    assert (ours.sum(1) == settings["num_masking_patches"]).all() and (expected.sum(1) == ours.sum(1)).all()
    for name, (a, b) in zip(
        ("blocks", "boundary"), zip(mask_statistics(ours, grid).values(), mask_statistics(expected, grid).values())
    ):
        z = (a.mean() - b.mean()) / np.sqrt(a.var() / len(a) + b.var() / len(b))
        print(f"mask {name}: mean {a.mean():.2f} vs the original's {b.mean():.2f} (z = {z:.1f})")
        assert abs(z) < MASK_Z, f"mask {name}: mean {a.mean():.2f} vs the original's {b.mean():.2f} (z = {z:.1f})"


def check_cae_constants(run: dict, transform: TwoViewCropTransform, masking) -> None:
    encoder, second, crop, masks = run["encoder"], run["second"], run["crop"], run["masks"]
    assert [transform.image_size] * 2 == encoder["size"] and [transform.second_size] * 2 == second["size"]
    assert pil_modes_mapping[transform.interpolation] == encoder["interpolation"], "encoder view resampling"
    assert pil_modes_mapping[transform.second_interpolation] == second["interpolation"], "second view resampling"
    assert_float32_equal(transform.mean, encoder["mean"], "encoder mean")
    assert_float32_equal(transform.std, encoder["std"], "encoder std")
    if second["steps"] == ["ToTensor", "map_pixels"]:
        assert transform.second_normalization == "logit_laplace"
    else:
        assert transform.second_normalization == "clip", f"second view normalised as {transform.second_normalization}"
        assert_float32_equal(CLIP_MEAN, second["mean"], "CLIP mean")
        assert_float32_equal(CLIP_STD, second["std"], "CLIP std")
    assert transform.color_jitter == run["arguments"]["color_jitter"], "colour jitter strength"
    assert (0.5 if transform.hflip else 0.0) == run["flip_p"], "flip probability"
    assert np.allclose(transform.scale, crop["scale"]) and np.allclose(transform.ratio, crop["ratio"]), "crop ranges"
    assert masking.num_masking_patches == masks["num_masking_patches"]
    assert masking.min_num_patches == masks["min_num_patches"] and masking.max_num_patches == masks["max_num_patches"]
    assert np.allclose(masking.log_aspect_ratio, masks["log_aspect_ratio"])


def check_cae(cae, version: str, transform, masking, constants: bool = True) -> None:
    record, tensors, photos = cae
    run, tensors = record["runs"][version], tensors[version]
    if constants:
        check_cae_constants(run, transform, masking)
    check_cae_outputs(run, tensors, photos, transform)
    check_cae_boxes(run, tensors, transform)
    check_cae_masks(run, tensors, masking)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_cae_transform_matches_the_original(cae, version):
    record = cae[0]
    flips = [sample["flip"] for sample in record["runs"][version]["samples"]]
    assert any(flips) and not all(flips), "the fixture should hold flipped and unflipped samples"
    check_cae(cae, version, cae_transform(version), cae_masking(record, version))


# ------------------------------------------------------------------------------------------------------- VICRegL
def vicregl_transform(run: dict, **changes) -> MultiCropTransform:
    """hf_mim's ConvNeXt recipe transform at the recorded crop sizes (the small run at stride 16: 2 x 2 / 1 x 1 grids),
    the blur sigma from numpy as the original."""
    arguments = run["arguments"]
    options = dict(flip_grid=not arguments["no_flip_grid"], blur_rng="numpy")
    if arguments["size_crops"] != [224, 96]:
        options |= dict(size_crops=tuple(arguments["size_crops"]), num_crops=tuple(arguments["num_crops"]))
        options |= dict(feature_stride=16)
    return MultiCropTransform.convnext_default(**{**options, **changes})


def check_vicregl_outputs(run: dict, tensors: dict, photos: dict, transform: MultiCropTransform) -> None:
    counts = run["arguments"]["num_crops"]
    flip_grid = not run["arguments"]["no_flip_grid"]
    for k, sample in enumerate(run["samples"]):
        torch.manual_seed(sample["seed"])
        np.random.seed(sample["seed"])
        out = transform(photos[sample["image"]])
        views = [*out["pixel_values"], *out.get("local_pixel_values", [])]
        grids = [*out["locations"], *out.get("local_locations", [])]
        assert len(views) == sum(counts)
        for v, (box, flip) in enumerate(zip(sample["boxes"], sample["flips"])):
            what = f"crop {v} of {sample['image']} (seed {sample['seed']}, box {box[:4]}, flip {flip})"
            original_grid = tensors[f"grid.{k}.{v}"]
            if grids[v].shape == original_grid.shape:  # the recipe's sizes: 7 x 7 and 3 x 3 on both sides
                torch.testing.assert_close(grids[v], original_grid, atol=GRID_ATOL, rtol=0, msg=f"grid of {what}")
            else:  # the original's hard-coded 7 / 3 grids at small crops: its boxes through hf_mim's grid function
                expected = crop_location_grid(box[:4], original_grid.shape[0], flip=flip and flip_grid)
                torch.testing.assert_close(expected, original_grid, atol=GRID_ATOL, rtol=0, msg=f"grid of {what}")
                ours = crop_location_grid(box[:4], grids[v].shape[0], flip=flip and transform.flip_grid)
                assert_equal(grids[v], ours, f"box / flip behind the grid of {what}")
            if f"view.{k}.{v}" in tensors:
                assert_equal(views[v], tensors[f"view.{k}.{v}"], what)


def check_vicregl_constants(run: dict, transform: MultiCropTransform) -> None:
    arguments = run["arguments"]
    assert (
        list(transform.size_crops) == arguments["size_crops"] and list(transform.num_crops) == arguments["num_crops"]
    )
    assert transform.flip_grid == (not arguments["no_flip_grid"]) and transform.flip_prob == run["flip_p"]
    assert list(transform.mean) == run["mean"] and list(transform.std) == run["std"], "normalisation"
    groups = [g for g, count in enumerate(transform.num_crops) for _ in range(count)]
    for crop, group, pipeline, colour in zip(run["crops"], groups, transform.color_pipelines, run["colour"]):
        assert crop["interpolation"] == transform.interpolation.value, "resampling"
        assert crop["size"] == [transform.size_crops[group]] * 2
        assert np.allclose(crop["scale"], (transform.min_scale[group], transform.max_scale[group])), "crop scale"
        assert np.allclose(crop["ratio"], transform.ratio), "crop aspect ratio"
        jitter, grayscale, blur, solarize = pipeline.transforms
        ours = {"jitter_p": jitter.p, "grayscale_p": grayscale.p, "blur_p": blur.p, "solarize_p": solarize.p}
        assert ours == colour, f"colour pipeline probabilities {ours} != the original's {colour}"


def check_vicregl(vicregl, run_name: str, transform, constants: bool = True) -> None:
    record, tensors, photos = vicregl
    run = record["runs"][run_name]
    if constants:
        check_vicregl_constants(run, transform)
    check_vicregl_outputs(run, tensors[run_name], photos, transform)


@pytest.mark.parametrize("run_name", ["small", "full_no_flip_grid", "full_flip_grid"])
def test_vicregl_transform_matches_the_original(vicregl, run_name):
    run = vicregl[0]["runs"][run_name]
    flips = [flip for sample in run["samples"] for flip in sample["flips"]]
    assert any(flips) and not all(flips), "the fixture should hold flipped and unflipped crops"
    check_vicregl(vicregl, run_name, vicregl_transform(run))


# ------------------------------------------------------------------------------------------------------------ faults
def assert_fault_caught(check, name: str, *compared) -> None:
    """A fault must fail the check with and without the constant comparison (caught by the outputs themselves)."""
    for constants in (True, False):
        with pytest.raises(AssertionError) as caught:
            check(*compared, constants=constants)
        print(name, "constants" if constants else "outputs only", "caught:", str(caught.value).splitlines()[0])


CAE_FAULTS = {
    "encoder view bilinear": ("v1", dict(interpolation="bilinear")),
    "tokenizer view bicubic": ("v1", dict(second_interpolation="bicubic")),
    "tokenizer view ImageNet-normalised, not map_pixels": ("v1", dict(second_normalization="imagenet")),
    "encoder view with Inception mean / std": ("v1", dict(mean=(0.5,) * 3, std=(0.5,) * 3)),
    "no flip": ("v1", dict(hflip=False)),
    "CLIP view ImageNet-normalised": ("v2", dict(second_normalization="imagenet")),
    "CLIP view bilinear": ("v2", dict(second_interpolation="bilinear")),
    "no colour jitter": ("v2", dict(color_jitter=0.0)),
    "v1's crop scale in v2": ("v2", dict(scale=(0.08, 1.0))),
}
MASK_FAULTS = {
    "blocks of 4 patches and more": lambda n: BlockMasking(n, min_num_patches=4),
    "block aspect down to 0.1": lambda n: BlockMasking(n, min_num_patches=16, min_aspect=0.1),
}


@pytest.mark.parametrize("fault", list(CAE_FAULTS))
def test_cae_comparison_catches_faults(cae, fault):
    version, changes = CAE_FAULTS[fault]
    transform = cae_transform(version, **changes)
    assert_fault_caught(check_cae, fault, cae, version, transform, cae_masking(cae[0], version))


@pytest.mark.parametrize("fault", list(MASK_FAULTS))
def test_cae_mask_comparison_catches_faults(cae, fault):
    masking = MASK_FAULTS[fault](cae[0]["runs"]["v1"]["masks"]["num_masking_patches"])
    assert_fault_caught(check_cae, fault, cae, "v1", cae_transform("v1"), masking)


VICREGL_FAULTS = {
    "bilinear": ("small", dict(interpolation="bilinear")),
    "ImageNet std 0.229, not the original's 0.228": ("small", dict(std=IMAGENET_STD)),
    "mean 0.5": ("small", dict(mean=(0.5,) * 3)),
    "blur sigma from torch": ("small", dict(blur_rng="torch")),
    "the original class's default scales (0.14, 1) / (0.05, 0.14)": ("small", dict(min_scale=(0.14, 0.05), max_scale=(1.0, 0.14))),
    "grids not flipped": ("full_flip_grid", dict(flip_grid=False)),
    "grids flipped against --no-flip-grid 1": ("full_no_flip_grid", dict(flip_grid=True)),
}  # fmt: skip


@pytest.mark.parametrize("fault", list(VICREGL_FAULTS))
def test_vicregl_comparison_catches_faults(vicregl, fault):
    run_name, changes = VICREGL_FAULTS[fault]
    transform = vicregl_transform(vicregl[0]["runs"][run_name], **changes)
    assert_fault_caught(check_vicregl, fault, vicregl, run_name, transform)


def test_imagenet_constants_are_the_cae_originals(cae):
    """CAE's recipes pass --imagenet_default_mean_and_std: timm's ImageNet constants, which hf_mim's are."""
    encoder = cae[0]["runs"]["v1"]["encoder"]
    assert_float32_equal(IMAGENET_MEAN, encoder["mean"], "ImageNet mean")
    assert_float32_equal(IMAGENET_STD, encoder["std"], "ImageNet std")
