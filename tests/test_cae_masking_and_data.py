"""CAE's block-wise / random masking (`hf_mim.masking.block`) and two-view data pipeline (`hf_mim.data.two_view`)."""

import io
import math
import random

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

import hf_mim.masking.block as block_module
from hf_mim.data import (
    CLIP_MEAN,
    CLIP_STD,
    SafeImageTransform,
    TwoViewCollator,
    TwoViewCropTransform,
)
from hf_mim.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hf_mim.masking import BlockMasking, BoolMasks, RandomMasking


# ------------------------------------------------------------------------------------------------ helpers
def components(mask: torch.Tensor) -> int:
    """Number of 4-connected components of True cells in an (h, w) bool map."""
    height, width = mask.shape
    cells = mask.tolist()
    seen = [[False] * width for _ in range(height)]
    count = 0
    for i in range(height):
        for j in range(width):
            if cells[i][j] and not seen[i][j]:
                count += 1
                stack, seen[i][j] = [(i, j)], True
                while stack:
                    a, b = stack.pop()
                    for c, d in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                        if 0 <= c < height and 0 <= d < width and cells[c][d] and not seen[c][d]:
                            seen[c][d] = True
                            stack.append((c, d))
    return count


def original_block_mask(rng: random.Random, grid, num_masking_patches, min_num_patches=16, min_aspect=0.3):
    """A transcription of the original's algorithm (CAE `MaskingGenerator`, Python `random`), for comparing
    distributions only; it terminates at the settings used here."""
    height, width = grid
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    mask = np.zeros((height, width), dtype=np.int64)
    count = 0
    while count != num_masking_patches:
        max_mask = num_masking_patches - count
        delta = 0
        for _ in range(10):
            area = rng.uniform(min_num_patches, max_mask)
            aspect = math.exp(rng.uniform(*log_aspect))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if w < width and h < height:
                top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                new = h * w - mask[top : top + h, left : left + w].sum()
                if 0 < new <= max_mask:
                    mask[top : top + h, left : left + w] = 1
                    delta += new
            if delta > 0:
                break
        count += delta
    return torch.from_numpy(mask.astype(bool))


def quadrant_image(height=96, width=128) -> PIL.Image.Image:
    """Four distinct flat colours, one per quadrant: any change of crop box or flip is visible."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    array[: height // 2, : width // 2] = (255, 0, 0)
    array[: height // 2, width // 2 :] = (0, 255, 0)
    array[height // 2 :, : width // 2] = (0, 0, 255)
    array[height // 2 :, width // 2 :] = (255, 255, 0)
    return PIL.Image.fromarray(array)


def noise_image(size=(80, 60), seed=0) -> PIL.Image.Image:
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return PIL.Image.fromarray(array)


# ------------------------------------------------------------------------------------------------ block masking
@pytest.mark.parametrize("grid, count", [((14, 14), 98), ((14, 14), 75), ((14, 14), 49), ((14, 14), 30), ((4, 4), 8)])
def test_block_masking_exact_count(grid, count):
    masking = BlockMasking(count)
    for seed in range(4):
        masks = masking(16, grid, torch.Generator().manual_seed(seed))
        assert isinstance(masks, BoolMasks) and list(vars(masks)) == ["bool_masked_pos"]
        mask = masks.bool_masked_pos
        assert mask.dtype == torch.bool and mask.shape == (16, grid[0] * grid[1])
        assert mask.sum(1).tolist() == [count] * 16


def test_block_masking_non_square_grid_row_major():
    masking = BlockMasking(17, min_num_patches=4)
    generator = torch.Generator().manual_seed(0)
    mask = masking(64, (7, 5), generator).bool_masked_pos
    assert mask.shape == (64, 35) and mask.sum(1).tolist() == [17] * 64
    # row-major: one image's (h, w) map flattens to its row of the batch mask
    generator = torch.Generator().manual_seed(3)
    single = masking.sample((7, 5), generator)
    assert single.shape == (7, 5)
    assert torch.equal(masking(1, (7, 5), torch.Generator().manual_seed(3)).bool_masked_pos[0], single.flatten())


@pytest.mark.parametrize("grid, count, kwargs", [((14, 14), 75, {}), ((7, 5), 10, {"min_num_patches": 4})])
def test_block_masking_reaches_every_patch(grid, count, kwargs):
    mask = BlockMasking(count, **kwargs)(300, grid, torch.Generator().manual_seed(0)).bool_masked_pos
    frequency = mask.float().mean(0).reshape(grid)
    assert (frequency > 0).all(), frequency
    assert frequency[-1].min() > 0.02 and frequency[:, -1].min() > 0.02  # last row and column, not just reachable


def test_block_masks_are_blocky():
    """Measured at 14x14 / 98 over 500 draws: block masks have 1.3 connected components on average (max 3), random
    masks 17.6 (min 9)."""
    generator = torch.Generator().manual_seed(0)
    blocks = BlockMasking(98)(100, (14, 14), generator).bool_masked_pos.view(-1, 14, 14)
    randoms = RandomMasking(98)(100, (14, 14), generator).bool_masked_pos.view(-1, 14, 14)
    block_counts = [components(mask) for mask in blocks]
    random_counts = [components(mask) for mask in randoms]
    assert np.mean(block_counts) < 2.0 and max(block_counts) <= 5
    assert np.mean(random_counts) > 12.0 and min(random_counts) >= 6


def test_block_masking_matches_the_original_distribution():
    """Same distribution as a transcription of the original (Python `random`): per-row / per-column masking
    frequencies and the mean number of connected components agree within sampling error (1500 draws each; the
    standard error of a frequency difference is ~0.009 here, the bound is 5 of them)."""
    rng = random.Random(0)
    reference = torch.stack([original_block_mask(rng, (14, 14), 98) for _ in range(1500)]).float()
    ours = BlockMasking(98)(1500, (14, 14), torch.Generator().manual_seed(0)).bool_masked_pos.view(-1, 14, 14).float()
    assert (reference.mean((0, 2)) - ours.mean((0, 2))).abs().max() < 0.045
    assert (reference.mean((0, 1)) - ours.mean((0, 1))).abs().max() < 0.045
    reference_components = np.mean([components(m.bool()) for m in reference[:400]])
    our_components = np.mean([components(m.bool()) for m in ours[:400]])
    assert abs(reference_components - our_components) < 0.2


def test_block_masking_tiny_grid_is_bounded_and_exact():
    """The original would loop forever here: every drawn area is >= 3 but only 1x1 boxes fit a 2x2 grid."""
    masking = BlockMasking(3, min_num_patches=16, max_attempts=20)
    mask = masking(8, (2, 2), torch.Generator().manual_seed(0)).bool_masked_pos
    assert mask.sum(1).tolist() == [3] * 8
    mask = BlockMasking(4, min_num_patches=16)(2, (2, 2)).bool_masked_pos  # whole grid, default max_attempts
    assert mask.all()
    mask = BlockMasking(5, min_num_patches=16)(4, (1, 7)).bool_masked_pos  # one row: no box ever fits
    assert mask.sum(1).tolist() == [5] * 4


def test_block_masking_fallback_unused_when_progress(monkeypatch):
    """At the released settings the original's algorithm runs unchanged: the random fill never triggers."""

    def fail(*args, **kwargs):
        raise AssertionError("fallback used")

    monkeypatch.setattr(block_module, "_fill_random", fail)
    for count in (98, 75):
        BlockMasking(count)(100, (14, 14), torch.Generator().manual_seed(count))
    with pytest.raises(AssertionError, match="fallback used"):
        BlockMasking(3, min_num_patches=16, max_attempts=5)(1, (2, 2))


@pytest.mark.parametrize("masking", [BlockMasking(49), RandomMasking(49)])
def test_masking_seeding(masking):
    first = masking(4, (14, 14), torch.Generator().manual_seed(1)).bool_masked_pos
    again = masking(4, (14, 14), torch.Generator().manual_seed(1)).bool_masked_pos
    other = masking(4, (14, 14), torch.Generator().manual_seed(2)).bool_masked_pos
    assert torch.equal(first, again) and not torch.equal(first, other)
    torch.manual_seed(5)
    global_first = masking(4, (14, 14)).bool_masked_pos
    torch.manual_seed(5)
    assert torch.equal(global_first, masking(4, (14, 14)).bool_masked_pos)  # global RNG when no generator


def test_random_masking_exact_and_uniform():
    mask = RandomMasking(98)(400, (14, 14), torch.Generator().manual_seed(0)).bool_masked_pos
    assert mask.shape == (400, 196) and mask.dtype == torch.bool and mask.sum(1).tolist() == [98] * 400
    frequency = mask.float().mean(0)
    assert (frequency - 0.5).abs().max() < 0.12  # binomial(400, 0.5): std 0.025
    assert RandomMasking(0)(2, (3, 3)).bool_masked_pos.sum() == 0
    assert RandomMasking(9)(2, (3, 3)).bool_masked_pos.all()


def test_empty_batch_and_zero_count():
    assert BlockMasking(5)(0, (4, 4)).bool_masked_pos.shape == (0, 16)
    assert RandomMasking(5)(0, (4, 4)).bool_masked_pos.shape == (0, 16)
    assert BlockMasking(0)(3, (4, 4)).bool_masked_pos.sum() == 0


def test_masking_errors():
    with pytest.raises(ValueError, match="num_masking_patches"):
        BlockMasking(0.5)
    with pytest.raises(ValueError, match="num_masking_patches"):
        RandomMasking(-1)
    with pytest.raises(ValueError, match="num_masking_patches=17 exceeds the 16 patches"):
        BlockMasking(17)(1, (4, 4))
    with pytest.raises(ValueError, match="num_masking_patches=17 exceeds"):
        RandomMasking(17)(1, (4, 4))
    with pytest.raises(ValueError, match="min_num_patches"):
        BlockMasking(8, min_num_patches=-1)
    with pytest.raises(ValueError, match="max_num_patches"):
        BlockMasking(8, max_num_patches=0)
    with pytest.raises(ValueError, match="min_aspect"):
        BlockMasking(8, min_aspect=0)
    with pytest.raises(ValueError, match="max_aspect"):
        BlockMasking(8, min_aspect=0.5, max_aspect=0.4)
    with pytest.raises(ValueError, match="max_attempts"):
        BlockMasking(8, max_attempts=0)
    with pytest.raises(ValueError, match="grid"):
        BlockMasking(8)(1, (4, 0))
    with pytest.raises(ValueError, match="grid"):
        RandomMasking(8)(1, 16)
    with pytest.raises(ValueError, match="batch_size"):
        BlockMasking(8)(-1, (4, 4))
    masking = BlockMasking(98)
    assert masking.max_num_patches == 98 and masking.max_aspect == pytest.approx(1 / 0.3)
    assert "BlockMasking(num_masking_patches=98" in repr(masking)


# ------------------------------------------------------------------------------------------------ two-view crop
def test_presets_shapes_and_settings():
    image = noise_image()
    v1 = TwoViewCropTransform.cae_v1(image_size=64)
    assert (v1.second_size, v1.scale, v1.color_jitter, v1.second_normalization) == (
        32,
        (0.08, 1.0),
        0.0,
        "logit_laplace",
    )
    assert v1.second_interpolation.value == "lanczos" and v1.interpolation.value == "bicubic" and v1.jitter is None
    out = v1(image)
    assert set(out) == {"pixel_values", "target_pixel_values"}
    assert out["pixel_values"].shape == (3, 64, 64) and out["target_pixel_values"].shape == (3, 32, 32)
    assert all(v.dtype == torch.float32 for v in out.values())
    v2 = TwoViewCropTransform.cae_v2(image_size=32)
    assert (v2.second_size, v2.scale, v2.color_jitter, v2.second_normalization) == (32, (0.4, 1.0), 0.4, "clip")
    assert v2.second_interpolation.value == "bicubic" and v2.jitter is not None
    out = v2(image)
    assert out["pixel_values"].shape == (3, 32, 32) and out["target_pixel_values"].shape == (3, 32, 32)
    default = TwoViewCropTransform.cae_v1()
    assert (default.image_size, default.second_size) == (224, 112)
    assert TwoViewCropTransform.cae_v2(64, color_jitter=0.0).jitter is None  # presets accept overrides


def test_pipeline_replay_v1_and_v2():
    """The output equals the documented steps replayed from the same seed: (jitter), flip, one torchvision box,
    PIL resize per view, normalisation."""
    image = noise_image((90, 70))
    for transform in (TwoViewCropTransform.cae_v1(64), TwoViewCropTransform.cae_v2(32)):
        for seed in range(4):
            torch.manual_seed(seed)
            out = transform(image)
            torch.manual_seed(seed)
            replay = transform.jitter(image) if transform.jitter is not None else image
            if torch.rand(1) < 0.5:
                replay = TF.hflip(replay)
            box = transform.crop_box(replay)
            size, second = transform.image_size, transform.second_size
            first = TF.to_tensor(TF.resized_crop(replay, *box, [size, size], transform.interpolation))
            target = TF.to_tensor(TF.resized_crop(replay, *box, [second, second], transform.second_interpolation))
            assert torch.allclose(out["pixel_values"], TF.normalize(first, IMAGENET_MEAN, IMAGENET_STD), atol=1e-6)
            if transform.second_normalization == "logit_laplace":
                expected = 0.8 * target + 0.1
            else:
                expected = TF.normalize(target, CLIP_MEAN, CLIP_STD)
            assert torch.allclose(out["target_pixel_values"], expected, atol=1e-6)


def test_both_views_share_the_crop_box():
    """Downsampling the encoder view to the target view's size matches it: measured mean abs error <= 0.017
    (normalised units, 50 seeds) for the same box, >= 0.23 (mean 1.8) between views of different draws."""
    image = quadrant_image()
    transform = TwoViewCropTransform(64, 32, second_normalization="imagenet")
    previous = None
    for seed in range(20):
        torch.manual_seed(seed)
        out = transform(image)
        downsampled = F.interpolate(out["pixel_values"][None], size=32, mode="area")[0]
        assert (downsampled - out["target_pixel_values"]).abs().mean() < 0.05
        if previous is not None and not torch.equal(previous, out["target_pixel_values"]):
            assert (downsampled - previous).abs().mean() > 0.1
        previous = out["target_pixel_values"]


def test_flip_applies_to_both_views():
    """Full-image box (scale = ratio = 1 on a square image): red (top-left) moves to the right in both views or in
    neither."""
    image = quadrant_image(64, 64)
    transform = TwoViewCropTransform(32, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), second_normalization="imagenet")
    flips = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = transform(image)
        red_left = [bool(view[0, 1, 1] > view[0, 1, -2]) for view in (out["pixel_values"], out["target_pixel_values"])]
        assert red_left[0] == red_left[1]
        flips.add(red_left[0])
    assert flips == {True, False}
    no_flip = TwoViewCropTransform(32, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False)
    for seed in range(6):
        torch.manual_seed(seed)
        assert no_flip(image)["pixel_values"][0, 1, 1] > no_flip(image)["pixel_values"][0, 1, -2]


def test_logit_laplace_range():
    array = np.zeros((40, 40, 3), dtype=np.uint8)
    array[:, 20:] = 255  # black and white halves, full-image box keeps both
    transform = TwoViewCropTransform(32, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    target = transform(PIL.Image.fromarray(array))["target_pixel_values"]
    assert target.min().item() == pytest.approx(0.1) and target.max().item() == pytest.approx(0.9)
    for seed in range(5):
        torch.manual_seed(seed)
        target = TwoViewCropTransform.cae_v1(32)(noise_image(seed=seed))["target_pixel_values"]
        assert target.min() >= 0.1 - 1e-6 and target.max() <= 0.9 + 1e-6


@pytest.mark.parametrize(
    "normalization, mean, std",
    [("clip", CLIP_MEAN, CLIP_STD), ("imagenet", IMAGENET_MEAN, IMAGENET_STD)],
)
def test_target_normalisation_values(normalization, mean, std):
    image = PIL.Image.new("RGB", (50, 40), (128, 64, 200))
    out = TwoViewCropTransform(32, 16, second_normalization=normalization)(image)
    for channel, value in enumerate((128, 64, 200)):
        expected = (value / 255 - mean[channel]) / std[channel]
        assert torch.allclose(out["target_pixel_values"][channel], torch.tensor(expected), atol=1e-5)
        encoder = (value / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.allclose(out["pixel_values"][channel], torch.tensor(encoder), atol=1e-5)
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073) and CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_determinism_under_manual_seed():
    image = noise_image()
    transform = TwoViewCropTransform.cae_v2(32)
    torch.manual_seed(7)
    first = transform(image)
    torch.manual_seed(7)
    again = transform(image)
    torch.manual_seed(8)
    other = transform(image)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["pixel_values"], other["pixel_values"])


def test_odd_images():
    transform = TwoViewCropTransform.cae_v1(32)
    rgba = PIL.Image.new("RGBA", (30, 20), (10, 200, 30, 0))
    images = [PIL.Image.new("L", (25, 35), 90), rgba, noise_image((10, 10)), PIL.Image.new("I;16", (12, 12), 4000)]
    for image in images:
        out = transform(image)
        assert out["pixel_values"].shape == (3, 32, 32) and out["target_pixel_values"].shape == (3, 16, 16)
        assert torch.isfinite(out["pixel_values"]).all()
    buffer = io.BytesIO()
    noise_image((10, 10)).save(buffer, format="PNG")
    assert transform(buffer.getvalue())["pixel_values"].shape == (3, 32, 32)  # bytes are decoded


def test_transform_errors():
    with pytest.raises(ValueError, match="image_size"):
        TwoViewCropTransform(0)
    with pytest.raises(ValueError, match="second_size"):
        TwoViewCropTransform(32, 16.0)
    with pytest.raises(ValueError, match="scale"):
        TwoViewCropTransform(scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="ratio"):
        TwoViewCropTransform(ratio=(0, 1))
    with pytest.raises(ValueError, match="second_normalization"):
        TwoViewCropTransform(second_normalization="dalle")
    with pytest.raises(ValueError, match="color_jitter"):
        TwoViewCropTransform(color_jitter=-0.1)
    with pytest.raises(ValueError, match="second_interpolation"):
        TwoViewCropTransform(second_interpolation="cubic")
    with pytest.raises(ValueError, match="mean and std"):
        TwoViewCropTransform(std=(0.2, 0.2))
    assert "second_normalization='logit_laplace'" in repr(TwoViewCropTransform.cae_v1(32))


# ------------------------------------------------------------------------------------------------ collator
def test_collator_shapes_masks_and_skipped_images():
    buffer = io.BytesIO()
    noise_image((40, 30)).save(buffer, format="PNG")
    safe = SafeImageTransform(TwoViewCropTransform.cae_v1(64))
    columns = safe({"image": [noise_image(), {"bytes": b"not an image", "path": "broken.jpg"}, buffer.getvalue()]})
    assert columns["pixel_values"][1] is None and columns["target_pixel_values"][1] is None
    examples = [dict(zip(columns, values)) for values in zip(*columns.values())]
    collator = TwoViewCollator(16, BlockMasking(8))
    batch = collator(examples)
    assert batch["pixel_values"].shape == (2, 3, 64, 64) and batch["target_pixel_values"].shape == (2, 3, 32, 32)
    assert batch["bool_masked_pos"].shape == (2, 16) and batch["bool_masked_pos"].dtype == torch.bool
    assert batch["bool_masked_pos"].sum(1).tolist() == [8, 8]
    assert batch["num_skipped"].tolist() == [1] and batch["skipped_files"][0].startswith("broken.jpg")
    # CAE v1 geometry: 224 / 16 -> 14x14 grid, 98 masked
    transform = TwoViewCropTransform.cae_v1()
    full = TwoViewCollator(16, BlockMasking(98))([transform(noise_image(seed=s)) for s in range(2)])
    assert full["bool_masked_pos"].shape == (2, 196) and full["bool_masked_pos"].sum(1).tolist() == [98, 98]
    assert full["target_pixel_values"].shape == (2, 3, 112, 112) and full["num_skipped"].tolist() == [0]
    random_batch = TwoViewCollator(16, RandomMasking(5))(examples)
    assert random_batch["bool_masked_pos"].sum(1).tolist() == [5, 5]


def test_collator_errors():
    broken = {"pixel_values": None, "target_pixel_values": None, "decode_error": "a.jpg: OSError"}
    with pytest.raises(RuntimeError, match="Every image"):
        TwoViewCollator(16, BlockMasking(4))([broken])
    with pytest.raises(ValueError, match="target_pixel_values"):
        TwoViewCollator(16, BlockMasking(4))([{"pixel_values": torch.zeros(3, 32, 32)}])
    with pytest.raises(ValueError, match="patch_size"):
        TwoViewCollator(0, BlockMasking(4))
    with pytest.raises(ValueError, match="patch_size"):
        TwoViewCollator(BlockMasking(4), 16)  # the arguments swapped (PretrainingCollator's order: patch size first)
    with pytest.raises(TypeError, match="mask_generator"):
        TwoViewCollator(16, 4)
    no_masks = TwoViewCollator(16)(
        [{"pixel_values": torch.zeros(3, 32, 32), "target_pixel_values": torch.zeros(3, 16, 16)}]
    )
    assert "bool_masked_pos" not in no_masks and no_masks["target_pixel_values"].shape == (1, 3, 16, 16)
