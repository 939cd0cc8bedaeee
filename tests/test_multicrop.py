"""VICRegL multi-crop transform, location grids and collator (`hf_mim.data.multicrop`)."""

import io
import random

import numpy as np
import PIL.Image
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import ImageFilter, ImageOps

from hf_mim.data import (
    VICREGL_STD,
    MultiCropCollator,
    MultiCropTransform,
    SafeImageTransform,
    bundled_photos,
    crop_location_grid,
    pretraining_transform,
)
from hf_mim.data.multicrop import PILGaussianBlur, PILSolarize


@pytest.fixture(scope="module")
def photos():
    return bundled_photos()


@pytest.fixture(scope="module")
def astronaut(photos):
    image = photos[0]
    assert image.mode == "RGB" and image.size == (512, 512)
    return image


def small(**kwargs):
    """The ConvNeXt recipe at test sizes: 2 x 64 (grid 2) + 6 x 32 (grid 1) at stride 32."""
    return MultiCropTransform.convnext_default(size_crops=(64, 32), **kwargs)


def boxes_for(transform, image, seed):
    """The crop boxes a seeded call draws: boxes come first in the RNG stream, so re-drawing them after the same seed
    gives the ones the call used."""
    torch.manual_seed(seed)
    boxes = []
    for _, sampler, _ in transform.crops:
        params = sampler.make_params([image])
        boxes.append((params["top"], params["left"], params["height"], params["width"]))
    return boxes


# ------------------------------------------------------------------------------------------------ shapes
def test_small_recipes_shapes(astronaut):
    out = small()(astronaut)
    assert set(out) == {"pixel_values", "locations", "local_pixel_values", "local_locations"}
    assert out["pixel_values"].shape == (2, 3, 64, 64) and out["locations"].shape == (2, 2, 2, 2)
    assert out["local_pixel_values"].shape == (6, 3, 32, 32) and out["local_locations"].shape == (6, 1, 1, 2)
    assert all(v.dtype == torch.float32 for v in out.values())

    out = MultiCropTransform.resnet_default(size_crops=(64,))(astronaut)
    assert set(out) == {"pixel_values", "locations"}
    assert out["pixel_values"].shape == (2, 3, 64, 64) and out["locations"].shape == (2, 2, 2, 2)

    # A second group with no crops gives no local entries either.
    out = MultiCropTransform((64, 32), (3, 0), (0.4, 0.1), (1.0, 0.4))(astronaut)
    assert set(out) == {"pixel_values", "locations"} and out["pixel_values"].shape[0] == 3


def test_full_size_recipes_on_a_photo(photos):
    image = photos[3]  # 451 x 300, not square
    out = MultiCropTransform.convnext_default()(image)
    assert out["pixel_values"].shape == (2, 3, 224, 224) and out["locations"].shape == (2, 7, 7, 2)
    assert out["local_pixel_values"].shape == (6, 3, 96, 96) and out["local_locations"].shape == (6, 3, 3, 2)
    resnet = MultiCropTransform.resnet_default()
    assert (resnet.size_crops, resnet.num_crops, resnet.min_scale, resnet.max_scale) == ((224,), (2,), (0.08,), (1.0,))
    out = resnet(image)
    assert set(out) == {"pixel_values", "locations"} and out["locations"].shape == (2, 7, 7, 2)


def test_defaults_are_the_original_pretraining_recipe():
    t = MultiCropTransform()
    assert (t.size_crops, t.num_crops, t.min_scale, t.max_scale) == ((224, 96), (2, 6), (0.4, 0.08), (1.0, 0.4))
    assert t.std == VICREGL_STD == (0.228, 0.224, 0.225) and t.mean == (0.485, 0.456, 0.406)
    assert t.flip_grid and t.feature_stride == 32 and t.grid_sizes == (7, 3)
    assert t.interpolation == T.InterpolationMode.BICUBIC
    sampler = t.crops[0][1]
    assert sampler.ratio == pytest.approx((3 / 4, 4 / 3)) and sampler.scale == (0.4, 1.0)
    assert t.crops[2][1].scale == (0.08, 0.4)


@pytest.mark.parametrize(
    "sizes, stride, grids", [((224, 96), 32, (7, 3)), ((64, 32), 32, (2, 1)), ((64, 32), 16, (4, 2)), ((48,), 8, (6,))]
)
def test_grid_size_follows_crop_size_and_stride(astronaut, sizes, stride, grids):
    counts, lows, highs = (1,) * len(sizes), (0.3,) * len(sizes), (1.0,) * len(sizes)
    t = MultiCropTransform(sizes, counts, lows, highs, feature_stride=stride, color_augment=False)
    assert t.grid_sizes == grids
    out = t(astronaut)
    assert out["locations"].shape == (1, grids[0], grids[0], 2)
    if len(sizes) > 1:
        assert out["local_locations"].shape == (1, grids[1], grids[1], 2)


# ------------------------------------------------------------------------------------------------ grids
def test_grid_exact_values_for_a_known_box():
    # box (top 10, left 20, height 70, width 35), N = 7: cells 10 px high, 5 px wide.
    grid = crop_location_grid((10, 20, 70, 35), 7)
    assert grid.shape == (7, 7, 2) and grid.dtype == torch.float32
    rows = torch.tensor([15.0, 25.0, 35.0, 45.0, 55.0, 65.0, 75.0])
    cols = torch.tensor([22.5, 27.5, 32.5, 37.5, 42.5, 47.5, 52.5])
    assert torch.equal(grid[..., 0], rows[:, None].expand(7, 7))
    assert torch.equal(grid[..., 1], cols[None, :].expand(7, 7))
    flipped = crop_location_grid((10, 20, 70, 35), 7, flip=True)
    assert torch.equal(flipped[..., 0], grid[..., 0])
    assert torch.equal(flipped[..., 1], cols.flip(0)[None, :].expand(7, 7))
    # N = 3, odd: the middle column stays, the outer ones swap (as the original's pairwise swap).
    grid3 = crop_location_grid((0, 0, 9, 12), 3, flip=True)
    assert grid3[0, :, 1].tolist() == [10.0, 6.0, 2.0] and grid3[:, 0, 0].tolist() == [1.5, 4.5, 7.5]
    # N = 1: the box centre.
    assert crop_location_grid((4, 6, 10, 20), 1).tolist() == [[[9.0, 16.0]]]


def test_grid_matches_the_originals_running_sums():
    """The original builds the grid with running float32 sums; the closed form agrees to float32 rounding."""
    i, j, h, w, n = 37, 141, 301, 263, 7
    rows, cols = torch.zeros(n, n), torch.zeros(n, n)
    rows[0, :], cols[:, 0] = i + h / n / 2, j + w / n / 2
    for k in range(1, n):
        rows[k, :] = rows[k - 1, :] + h / n
        cols[:, k] = cols[:, k - 1] + w / n
    torch.testing.assert_close(crop_location_grid((i, j, h, w), n), torch.stack([rows, cols], -1), rtol=0, atol=1e-4)


def test_grid_inside_crop_and_image_with_box_spacing(photos):
    t = small(feature_stride=16, color_augment=False)  # grids 4 and 2
    for seed, image in enumerate(photos[:6]):
        width, height = image.size
        boxes = boxes_for(t, image, seed)
        torch.manual_seed(seed)
        out = t(image)
        grids = list(out["locations"]) + list(out["local_locations"])
        assert len(grids) == len(boxes) == 8
        for grid, (top, left, h, w) in zip(grids, boxes):
            n = grid.shape[0]
            rows, cols = grid[..., 0], grid[..., 1]
            assert (rows > top).all() and (rows < top + h).all() and (cols > left).all() and (cols < left + w).all()
            assert (rows >= 0).all() and (rows <= height).all() and (cols >= 0).all() and (cols <= width).all()
            torch.testing.assert_close(rows.diff(dim=0), torch.full((n - 1, n), h / n), rtol=0, atol=1e-4)
            torch.testing.assert_close(cols.diff(dim=1).abs(), torch.full((n, n - 1), w / n), rtol=0, atol=1e-4)
            # Either the plain or the mirrored grid of the box, depending on the flip draw.
            plain = crop_location_grid((top, left, h, w), n)
            assert torch.equal(grid, plain) or torch.equal(grid, plain.flip(1))


@pytest.mark.parametrize("flip_grid", [True, False])
def test_flipped_crops_mirror_the_grid_only_with_flip_grid(astronaut, flip_grid):
    t = small(feature_stride=16, flip_prob=1.0, flip_grid=flip_grid, color_augment=False)
    boxes = boxes_for(t, astronaut, 3)
    torch.manual_seed(3)
    out = t(astronaut)
    for grid, box in zip(list(out["locations"]) + list(out["local_locations"]), boxes):
        plain = crop_location_grid(box, grid.shape[0])
        assert torch.equal(grid, plain.flip(1) if flip_grid else plain)
        steps = grid[..., 1].diff(dim=1)
        assert (steps < 0).all() if flip_grid else (steps > 0).all()
    # Never flipping: plain grids whatever flip_grid says.
    t = small(feature_stride=16, flip_prob=0.0, flip_grid=flip_grid, color_augment=False)
    boxes = boxes_for(t, astronaut, 3)
    torch.manual_seed(3)
    out = t(astronaut)
    for grid, box in zip(out["locations"], boxes):
        assert torch.equal(grid, crop_location_grid(box, grid.shape[0]))


def _cell_errors(image_array, crops, grids, cell):
    """Mean |crop cell mean - original-image mean around the grid point| over cells and crops."""
    errors = []
    for crop, grid in zip(crops, grids):
        n = grid.shape[0]
        crop_cells = crop.reshape(3, n, cell, n, cell).mean(dim=(2, 4))
        half_h = float(grid[1, 0, 0] - grid[0, 0, 0]) / 2
        half_w = float((grid[0, 1, 1] - grid[0, 0, 1]).abs()) / 2
        for k in range(n):
            for m in range(n):
                row, col = grid[k, m].tolist()
                region = image_array[
                    round(row - half_h) : round(row + half_h), round(col - half_w) : round(col + half_w)
                ]
                errors.append((crop_cells[:, k, m] - torch.from_numpy(region.mean(axis=(0, 1)))).abs().mean())
    return float(torch.stack(errors).mean())


def test_flipped_crop_content_sits_at_its_grid_locations(astronaut):
    """With flip_grid=True, crop cell (k, l) of a flipped crop shows the original image around grid[k, l]; the
    unmirrored grid (the original code's default) points at the mirrored places."""
    array = np.asarray(astronaut, dtype=np.float32) / 255
    kwargs = dict(feature_stride=16, flip_prob=1.0, color_augment=False, mean=(0, 0, 0), std=(1, 1, 1))
    t = MultiCropTransform((64,), (6,), (0.15,), (0.5,), **kwargs)
    torch.manual_seed(0)
    out = t(astronaut)
    good = _cell_errors(array, out["pixel_values"], out["locations"], cell=16)
    wrong = _cell_errors(array, out["pixel_values"], [g.flip(1) for g in out["locations"]], cell=16)
    assert good < 0.01 and wrong > 10 * good, (good, wrong)

    t = MultiCropTransform((64,), (6,), (0.15,), (0.5,), flip_grid=False, **kwargs)
    torch.manual_seed(0)
    ignored = t(astronaut)
    assert torch.equal(ignored["pixel_values"], out["pixel_values"])  # same crops and flips, only the grids differ
    assert _cell_errors(array, ignored["pixel_values"], ignored["locations"], cell=16) == pytest.approx(wrong)


# ------------------------------------------------------------------------------------------------ colour
def test_color_pipelines_alternate_by_index_within_each_group():
    t = MultiCropTransform.convnext_default()
    pipelines = t.color_pipelines
    assert len(pipelines) == 8
    indices = [0, 1] + [0, 1, 2, 3, 4, 5]  # counted separately in the global and the local group
    for pipeline, j in zip(pipelines, indices):
        jitter, gray, blur, solarize = pipeline.transforms
        assert jitter.p == 0.8
        cj = jitter.transforms[0]
        assert (cj.brightness, cj.contrast, cj.saturation, cj.hue) == ((0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))
        assert type(gray).__name__ == "RandomGrayscale" and gray.p == 0.2
        assert isinstance(blur.transforms[0], PILGaussianBlur) and blur.transforms[0].sigma == (0.1, 2.0)
        assert isinstance(solarize.transforms[0], PILSolarize) and solarize.transforms[0].threshold == 128
        assert (blur.p, solarize.p) == ((1.0, 0.0) if j % 2 == 0 else (0.1, 0.2))
    assert all(p is None for p in MultiCropTransform.resnet_default(color_augment=False).color_pipelines)


def test_blur_and_solarize_ops():
    image = PIL.Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16).repeat(3).reshape(16, 16, 3))
    solarized = np.asarray(PILSolarize(128)(image))
    values = np.arange(256).reshape(16, 16)
    assert (solarized[..., 0] == np.where(values >= 128, 255 - values, values)).all()
    torch.manual_seed(0)
    sigma = torch.empty(1).uniform_(0.1, 2.0).item()
    torch.manual_seed(0)
    assert np.array_equal(
        np.asarray(PILGaussianBlur()(image)), np.asarray(image.filter(ImageFilter.GaussianBlur(sigma)))
    )


def _original_style_views(image, sizes, counts, lows, highs, mean, std):
    """The original's per-image procedure written with torchvision v1 on PIL (all boxes first, then flip and colour
    per crop; blur sigma from numpy) to check the v2 pipeline draws and computes the same."""

    def numpy_blur(img):
        return img.filter(ImageFilter.GaussianBlur(np.random.rand() * 1.9 + 0.1))

    crops = [(s, lo, hi, j) for s, c, lo, hi in zip(sizes, counts, lows, highs) for j in range(c)]
    boxes = [T.RandomResizedCrop.get_params(image, (lo, hi), (3 / 4, 4 / 3)) for _, lo, hi, _ in crops]
    views = []
    for (size, _, _, j), box in zip(crops, boxes):
        colour = T.Compose(
            [
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
                T.RandomApply([numpy_blur], p=1.0 if j % 2 == 0 else 0.1),
                T.RandomApply([ImageOps.solarize], p=0.0 if j % 2 == 0 else 0.2),
                T.ToTensor(),
                T.Normalize(mean, std),
            ]
        )
        crop = TF.resized_crop(image, *box, [size, size], T.InterpolationMode.BICUBIC)
        if torch.rand(1) < 0.5:
            crop = TF.hflip(crop)
        views.append(colour(crop))
    return views


def test_same_pixels_as_the_original_procedure_with_numpy_blur(photos):
    t = small(blur_rng="numpy")
    for seed, image in zip(range(4), [photos[0], photos[3], photos[5].convert("RGB"), photos[-1]]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        out = t(image)
        torch.manual_seed(seed)
        np.random.seed(seed)
        expected = _original_style_views(image, (64, 32), (2, 6), (0.4, 0.08), (1.0, 0.4), t.mean, t.std)
        assert torch.equal(out["pixel_values"], torch.stack(expected[:2]))
        assert torch.equal(out["local_pixel_values"], torch.stack(expected[2:]))


# ------------------------------------------------------------------------------------------------ RNG
def test_seeded_determinism_uses_torch_rng_only(astronaut):
    t = small()
    torch.manual_seed(7)
    first = t(astronaut)
    random.seed(123)
    np.random.seed(123)
    torch.manual_seed(7)
    second = t(astronaut)
    random.seed(999)
    np.random.seed(999)
    torch.manual_seed(8)
    third = t(astronaut)
    for key in first:
        assert torch.equal(first[key], second[key])
    assert not torch.equal(first["pixel_values"], third["pixel_values"])
    assert not torch.equal(first["locations"], third["locations"])


# ------------------------------------------------------------------------------------------------ odd images
@pytest.mark.parametrize(
    "mode, size", [("L", (40, 30)), ("RGBA", (50, 70)), ("RGB", (10, 10)), ("RGB", (1, 1)), ("I;16", (33, 20))]
)
def test_odd_images_give_the_right_shapes(mode, size):
    array = (np.arange(size[0] * size[1]) % 251).reshape(size[1], size[0])
    if mode == "I;16":
        image = PIL.Image.fromarray((array * 200).astype(np.uint16))
    elif mode == "L":
        image = PIL.Image.fromarray(array.astype(np.uint8))
    else:
        channels = 4 if mode == "RGBA" else 3
        image = PIL.Image.fromarray(np.stack([array] * channels, -1).astype(np.uint8), mode=mode)
    out = small()(image)
    assert out["pixel_values"].shape == (2, 3, 64, 64) and out["local_pixel_values"].shape == (6, 3, 32, 32)
    assert out["locations"].shape == (2, 2, 2, 2) and out["local_locations"].shape == (6, 1, 1, 2)
    assert torch.isfinite(out["pixel_values"]).all()
    assert (out["locations"] >= 0).all() and (out["locations"][..., 0] <= size[1]).all()
    assert (out["locations"][..., 1] <= size[0]).all()


# ------------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_crops=(2,)), "one entry per size group"),
        (dict(min_scale=(0.4, 0.08, 0.1)), "one entry per size group"),
        (dict(size_crops=(224, 96, 64), num_crops=(2, 6, 1), min_scale=(0.4,) * 3, max_scale=(1,) * 3), "size groups"),
        (dict(size_crops=(224, 16)), "multiple of feature_stride"),
        (dict(size_crops=(224, 100)), "multiple of feature_stride"),
        (dict(feature_stride=0), "feature_stride"),
        (dict(min_scale=(0.0, 0.08)), r"\(0, 1\]"),
        (dict(max_scale=(1.2, 0.4)), r"\(0, 1\]"),
        (dict(min_scale=(0.4, 0.5)), "min_scale must be <= max_scale"),
        (dict(num_crops=(0, 6)), "at least one crop"),
        (dict(num_crops=(2, -1)), "non-negative"),
        (dict(size_crops=224), "sequence"),
        (dict(std=(0.2, 0.2)), "mean and std"),
        (dict(interpolation="cubic-ish"), "interpolation"),
        (dict(blur_rng="python"), "blur_rng"),
        (dict(flip_prob=1.5), "flip_prob"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiCropTransform(**kwargs)


# ------------------------------------------------------------------------------------------------ collator
def _png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_safe_transform_spreads_dicts_and_collator_stacks(photos):
    safe = SafeImageTransform(small())
    images = [photos[0], b"\x89PNG definitely not a png", {"bytes": _png_bytes(photos[3]), "path": "b.png"}]
    columns = safe({"image": images})
    assert set(columns) == {"pixel_values", "locations", "local_pixel_values", "local_locations", "decode_error"}
    assert columns["pixel_values"][1] is None and columns["locations"][1] is None and columns["decode_error"][1]
    examples = [{key: values[i] for key, values in columns.items()} for i in range(3)]
    batch = MultiCropCollator()(examples)
    assert batch["pixel_values"].shape == (2, 2, 3, 64, 64) and batch["locations"].shape == (2, 2, 2, 2, 2)
    assert batch["local_pixel_values"].shape == (2, 6, 3, 32, 32) and batch["local_locations"].shape == (2, 6, 1, 1, 2)
    assert torch.equal(batch["pixel_values"][1], examples[2]["pixel_values"])
    assert torch.equal(batch["local_locations"][0], examples[0]["local_locations"])
    assert batch["num_skipped"].tolist() == [1] and len(batch["skipped_files"]) == 1
    assert "UnidentifiedImageError" in batch["skipped_files"][0]

    with pytest.raises(RuntimeError, match="failed to decode"):
        MultiCropCollator()([examples[1], {"pixel_values": None, "decode_error": "x.png: OSError"}])


def test_collator_with_a_datasets_dataset_and_the_resnet_recipe(tmp_path, photos):
    import datasets

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    rows = [{"bytes": _png_bytes(photos[i]), "path": None} for i in range(3)] + [{"bytes": None, "path": str(bad)}]
    dataset = datasets.Dataset.from_dict(
        {"image": rows}, features=datasets.Features({"image": datasets.Image(decode=False)})
    )
    dataset = dataset.with_transform(SafeImageTransform(MultiCropTransform.resnet_default(size_crops=(64,))))
    batch = MultiCropCollator()([dataset[i] for i in range(4)])
    assert set(batch) == {"pixel_values", "locations", "num_skipped", "skipped_files"}
    assert batch["pixel_values"].shape == (3, 2, 3, 64, 64) and batch["locations"].shape == (3, 2, 2, 2, 2)
    assert batch["num_skipped"].tolist() == [1] and "bad.jpg" in batch["skipped_files"][0]
    # Raw transform outputs are valid examples too.
    t = small()
    batch = MultiCropCollator()([t(photos[0]), t(photos[1])])
    assert batch["local_pixel_values"].shape == (2, 6, 3, 32, 32) and batch["num_skipped"].tolist() == [0]


def test_safe_transform_tensor_path_is_unchanged(photos):
    columns = SafeImageTransform(pretraining_transform(32))({"image": [photos[0], b"junk"]})
    assert list(columns) == ["pixel_values", "decode_error"]
    assert columns["pixel_values"][0].shape == (3, 32, 32) and columns["pixel_values"][1] is None
    assert columns["decode_error"][0] is None and columns["decode_error"][1]
