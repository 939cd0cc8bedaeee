"""Multi-crop views with location grids for VICRegL pretraining.

One PIL image -> a few large ("global") crops and optionally several small ("local") crops, each with an N x N grid
giving, for every cell of the crop's feature map, the pixel location in the ORIGINAL image that the cell centre shows.
VICRegL's local loss matches feature vectors of two views by these locations.

Per crop, as in the original (facebookresearch/VICRegL, `transforms.py: MultiCropTrainDataTransform`):

1. RandomResizedCrop box (i, j, h, w) (ratio 3/4-4/3, 10 tries, centre-crop fallback), crop + resize of the PIL image
   (PIL bicubic by default);
2. horizontal flip with probability 0.5, remembered for the grid;
3. colour pipeline, alternating by the crop's index j within its size group: even j: ColorJitter(0.4, 0.4, 0.2, 0.1)
   with p=0.8, RandomGrayscale(p=0.2), PIL Gaussian blur (sigma ~ U(0.1, 2.0)) with p=1.0, solarize with p=0.0;
   odd j: same jitter and grayscale, blur with p=0.1, solarize (PIL, threshold 128) with p=0.2;
4. ToTensor + Normalize. The default std (0.228, 0.224, 0.225) is the original pretraining's (0.228 is a typo there
   for ImageNet's 0.229, kept so pixel values match its runs); pass `std=IMAGENET_STD` for the usual one.

Location grid: N = crop_size // feature_stride cells per side (224 -> 7, 96 -> 3 at stride 32); cell (k, l) centre is
(i + (k + 0.5) * h / N, j + (l + 0.5) * w / N) as (row, col) in original-image pixels. With `flip_grid=True` (the
paper's intent) a flipped crop's grid columns are mirrored, so cell (k, l) holds the location the flipped crop shows
there. `flip_grid=False` reproduces the original code's default (`--no-flip-grid 1`): grids ignore flips.

Random draws, in this order (the original's order, so a seeded run draws the same numbers):

* all crop boxes first, crop after crop (large crops, then small ones): torch's global RNG, exactly the draws of
  `torchvision.transforms.v2.RandomResizedCrop.make_params` (= v1 `RandomResizedCrop.get_params`);
* then for each crop in turn: the flip (`torch.rand(1)`), then the colour pipeline: one `torch.rand(1)` per
  RandomApply / RandomGrayscale (drawn even when p is 0 or 1), and when ColorJitter runs `torch.randperm(4)` and four
  `uniform_` draws (torchvision v2's draws, identical to v1's); the blur sigma is drawn, when the blur runs, from
  torch's global RNG (`blur_rng="torch"`, default) or from numpy's global RNG (`blur_rng="numpy"`, the original's
  `np.random.rand() * 1.9 + 0.1`, for bit-exact comparisons with it).

Python's `random` module is not used. So `torch.manual_seed` alone (plus `np.random.seed` with `blur_rng="numpy"`)
makes the output deterministic; in DataLoader workers torch seeds each worker's RNG itself.
"""

from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch
import torchvision.transforms.functional as TF
from PIL import ImageFilter, ImageOps
from torchvision.transforms import v2

from .positional import unreadable_files
from .transforms import IMAGENET_MEAN, decode_image, to_tensor

# The original pretraining normalisation: ImageNet mean, and std with 0.228 (a typo for 0.229) in the red channel.
VICREGL_MEAN = IMAGENET_MEAN
VICREGL_STD = (0.228, 0.224, 0.225)

MULTICROP_FIELDS = ("pixel_values", "locations", "local_pixel_values", "local_locations")


class PILGaussianBlur:
    """PIL Gaussian blur with sigma ~ U(sigma_min, sigma_max), drawn from torch's global RNG ("torch") or, like the
    original, from numpy's global RNG ("numpy")."""

    def __init__(self, sigma: tuple[float, float] = (0.1, 2.0), rng: str = "torch"):
        if rng not in ("torch", "numpy"):
            raise ValueError(f"blur rng must be 'torch' or 'numpy', got {rng!r}")
        self.sigma = (float(sigma[0]), float(sigma[1]))
        self.rng = rng

    def __call__(self, image: PIL.Image.Image) -> PIL.Image.Image:
        low, high = self.sigma
        if self.rng == "numpy":
            sigma = np.random.rand() * (high - low) + low
        else:
            sigma = torch.empty(1).uniform_(low, high).item()
        return image.filter(ImageFilter.GaussianBlur(sigma))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma}, rng={self.rng!r})"


class PILSolarize:
    """PIL `ImageOps.solarize`: inverts every channel value >= threshold."""

    def __init__(self, threshold: int = 128):
        self.threshold = threshold

    def __call__(self, image: PIL.Image.Image) -> PIL.Image.Image:
        return ImageOps.solarize(image, self.threshold)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.threshold})"


def vicregl_color_pipeline(index: int, blur_rng: str = "torch") -> v2.Compose:
    """The colour augmentation of crop `index` within its size group: even indices always blur and never solarize,
    odd ones blur with p=0.1 and solarize with p=0.2. Works on PIL images."""
    blur_p, solarize_p = (1.0, 0.0) if index % 2 == 0 else (0.1, 0.2)
    return v2.Compose(
        [
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([PILGaussianBlur((0.1, 2.0), rng=blur_rng)], p=blur_p),
            v2.RandomApply([PILSolarize(128)], p=solarize_p),
        ]
    )


def crop_location_grid(box: Sequence[float], grid_size: int, flip: bool = False) -> torch.Tensor:
    """(grid_size, grid_size, 2) float32 grid of cell centres of crop `box` = (top, left, height, width) in original
    image pixels: [k, l] = (top + (k + 0.5) * height / N, left + (l + 0.5) * width / N) as (row, col). With
    `flip=True` the columns are mirrored ([:, l] <- [:, N - 1 - l]), the grid of the horizontally flipped crop.

    The original builds the same values by running float32 sums; this closed form differs from it by float32
    rounding only (~1e-5 px)."""
    if grid_size < 1:
        raise ValueError(f"grid_size must be >= 1, got {grid_size}")
    top, left, height, width = (float(v) for v in box[:4])
    centres = torch.arange(grid_size, dtype=torch.float64) + 0.5
    rows = top + centres * height / grid_size
    cols = left + centres * width / grid_size
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).to(torch.float32)
    return grid.flip(1) if flip else grid


def _pair(values, name: str) -> tuple:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"{name} must be a sequence (one entry per crop size), got {values!r}")
    return tuple(values)


class MultiCropTransform:
    """VICRegL multi-crop transform: callable on one PIL image, returns
    `{"pixel_values": (V_g, 3, S, S), "locations": (V_g, N, N, 2), "local_pixel_values": (V_l, 3, s, s),
    "local_locations": (V_l, n, n, 2)}` with N = S // feature_stride, n = s // feature_stride. The first size group
    gives the global views; the local entries are absent when there is no second group or it has no crops.

    Args:
        size_crops: crop side per size group (one or two groups), e.g. (224, 96).
        num_crops: crops per group, e.g. (2, 6); the first group needs at least one.
        min_scale / max_scale: RandomResizedCrop area-scale range per group, in (0, 1], min <= max.
        feature_stride: the backbone's output stride (32 for ResNet-50 and ConvNeXt); each crop size must be a
            multiple of it, and the grid has crop_size // feature_stride cells per side.
        flip_grid: mirror the grid of a flipped crop (True, the paper's intent) or ignore flips (False, the original
            code's default `--no-flip-grid 1`).
        mean / std: normalisation; the default std is the original pretraining's (0.228, 0.224, 0.225).
        interpolation: crop resize ("bicubic" as the original; PIL resampling).
        flip_prob: probability of the horizontal flip (0.5).
        color_augment: False skips the colour pipeline entirely (no RNG draws), e.g. to check geometry in tests.
        blur_rng: "torch" (default) draws the blur sigma from torch's RNG; "numpy" from numpy's, as the original.
    """

    def __init__(
        self,
        size_crops: Sequence[int] = (224, 96),
        num_crops: Sequence[int] = (2, 6),
        min_scale: Sequence[float] = (0.4, 0.08),
        max_scale: Sequence[float] = (1.0, 0.4),
        feature_stride: int = 32,
        flip_grid: bool = True,
        mean: Sequence[float] = VICREGL_MEAN,
        std: Sequence[float] = VICREGL_STD,
        interpolation: str = "bicubic",
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        flip_prob: float = 0.5,
        color_augment: bool = True,
        blur_rng: str = "torch",
    ):
        size_crops, num_crops = _pair(size_crops, "size_crops"), _pair(num_crops, "num_crops")
        min_scale, max_scale = _pair(min_scale, "min_scale"), _pair(max_scale, "max_scale")
        lengths = {len(size_crops), len(num_crops), len(min_scale), len(max_scale)}
        if len(lengths) != 1:
            raise ValueError(
                "size_crops, num_crops, min_scale and max_scale need one entry per size group, got lengths "
                f"{len(size_crops)}, {len(num_crops)}, {len(min_scale)}, {len(max_scale)}"
            )
        if len(size_crops) not in (1, 2):
            raise ValueError(f"Expected one (global) or two (global, local) size groups, got {len(size_crops)}")
        if not isinstance(feature_stride, int) or feature_stride < 1:
            raise ValueError(f"feature_stride must be a positive int, got {feature_stride!r}")
        for size in size_crops:
            if not isinstance(size, int) or size < feature_stride or size % feature_stride:
                raise ValueError(
                    f"Each crop size must be an int multiple of feature_stride={feature_stride} (at least one "
                    f"feature-map cell), got {size!r}"
                )
        for count in num_crops:
            if not isinstance(count, int) or count < 0:
                raise ValueError(f"num_crops must be non-negative ints, got {num_crops}")
        if num_crops[0] < 1:
            raise ValueError(f"The first (global) size group needs at least one crop, got num_crops={num_crops}")
        for low, high in zip(min_scale, max_scale):
            if not (0.0 < low <= 1.0 and 0.0 < high <= 1.0):
                raise ValueError(f"Crop scales must lie in (0, 1], got min_scale={min_scale}, max_scale={max_scale}")
            if low > high:
                raise ValueError(f"min_scale must be <= max_scale per group, got {min_scale} and {max_scale}")
        if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must be (min, max) with 0 < min <= max, got {ratio}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need three values (RGB), std positive; got {mean}, {std}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        if blur_rng not in ("torch", "numpy"):
            raise ValueError(f"blur_rng must be 'torch' or 'numpy', got {blur_rng!r}")
        try:
            self.interpolation = v2.InterpolationMode(interpolation)
        except ValueError:
            raise ValueError(f"Unknown interpolation {interpolation!r}") from None

        self.size_crops = size_crops
        self.num_crops = num_crops
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.feature_stride = feature_stride
        self.grid_sizes = tuple(size // feature_stride for size in size_crops)
        self.flip_grid = flip_grid
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip_prob = flip_prob
        self.color_augment = color_augment
        self.blur_rng = blur_rng
        # One entry per crop, global crops first: (group, crop sampler, colour pipeline or None).
        self.crops = []
        for group, (size, count) in enumerate(zip(size_crops, num_crops)):
            for index in range(count):
                sampler = v2.RandomResizedCrop(
                    size,
                    scale=(min_scale[group], max_scale[group]),
                    ratio=self.ratio,
                    interpolation=self.interpolation,
                )
                pipeline = vicregl_color_pipeline(index, blur_rng) if color_augment else None
                self.crops.append((group, sampler, pipeline))

    @property
    def color_pipelines(self) -> list:
        """The colour pipeline of each crop (global crops first), None where colour augmentation is off."""
        return [pipeline for _, _, pipeline in self.crops]

    @classmethod
    def convnext_default(cls, **kwargs) -> "MultiCropTransform":
        """The ConvNeXt recipe (the original's defaults): 2 x 224 at scale (0.4, 1) + 6 x 96 at scale (0.08, 0.4)."""
        options = dict(size_crops=(224, 96), num_crops=(2, 6), min_scale=(0.4, 0.08), max_scale=(1.0, 0.4))
        return cls(**{**options, **kwargs})

    @classmethod
    def resnet_default(cls, **kwargs) -> "MultiCropTransform":
        """The ResNet-50 recipe (README commands): 2 x 224 at scale (0.08, 1), no small crops."""
        options = dict(size_crops=(224,), num_crops=(2,), min_scale=(0.08,), max_scale=(1.0,))
        return cls(**{**options, **kwargs})

    def _to_tensor(self, image: PIL.Image.Image) -> torch.Tensor:
        tensor = to_tensor(image)  # as the original's ToTensor: uint8 / 255 in float32
        return v2.functional.normalize(tensor, self.mean, self.std, inplace=True)

    def __call__(self, image: PIL.Image.Image) -> dict[str, torch.Tensor]:
        if not (isinstance(image, PIL.Image.Image) and image.mode == "RGB"):
            image = decode_image(image)  # grayscale, RGBA, 16-bit, paths, bytes -> RGB PIL
        # All boxes first, then flip + colour per crop: the original's order of random draws.
        boxes = []
        for _, sampler, _ in self.crops:
            params = sampler.make_params([image])
            boxes.append((params["top"], params["left"], params["height"], params["width"]))
        views = [([], []) for _ in self.size_crops]
        for (group, _, pipeline), box in zip(self.crops, boxes):
            size = self.size_crops[group]
            crop = TF.resized_crop(image, *box, [size, size], self.interpolation)
            flipped = bool(torch.rand(1) < self.flip_prob)
            if flipped:
                crop = crop.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
            if pipeline is not None:
                crop = pipeline(crop)
            views[group][0].append(self._to_tensor(crop))
            views[group][1].append(crop_location_grid(box, self.grid_sizes[group], flip=flipped and self.flip_grid))
        output = {"pixel_values": torch.stack(views[0][0]), "locations": torch.stack(views[0][1])}
        if len(views) > 1 and views[1][0]:
            output["local_pixel_values"] = torch.stack(views[1][0])
            output["local_locations"] = torch.stack(views[1][1])
        return output

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size_crops={self.size_crops}, num_crops={self.num_crops}, "
            f"min_scale={self.min_scale}, max_scale={self.max_scale}, feature_stride={self.feature_stride}, "
            f"flip_grid={self.flip_grid}, mean={self.mean}, std={self.std}, "
            f"interpolation={self.interpolation.value!r}, color_augment={self.color_augment})"
        )


class MultiCropCollator:
    """Stacks multi-crop examples over the batch: `pixel_values` (B, V_g, 3, S, S), `locations` (B, V_g, N, N, 2)
    and, when the examples have small crops, `local_pixel_values` (B, V_l, 3, s, s) and `local_locations`
    (B, V_l, n, n, 2).

    As `PretrainingCollator`: examples whose image could not be decoded (`pixel_values` None, from
    `SafeImageTransform`) are dropped and reported as `num_skipped` (tensor [count]) and `skipped_files`; a batch in
    which every image failed raises RuntimeError. `MultiCropTransform`'s own output dicts are valid examples too."""

    def __call__(self, examples: list[dict]) -> dict:
        good = [example for example in examples if example.get("pixel_values") is not None]
        skipped = unreadable_files(examples)
        if not good:
            raise RuntimeError(f"Every image in this batch failed to decode: {skipped}")
        batch = {}
        for field in MULTICROP_FIELDS:
            present = [example.get(field) is not None for example in good]
            if not any(present):
                continue
            if not all(present):
                raise ValueError(f"Some examples in the batch have {field!r} and others do not")
            batch[field] = torch.stack([example[field] for example in good])
        if "locations" not in batch:
            raise ValueError("Multi-crop examples need 'locations' (use MultiCropTransform)")
        batch["num_skipped"] = torch.tensor([len(skipped)])
        batch["skipped_files"] = skipped
        return batch


__all__ = [
    "MULTICROP_FIELDS",
    "VICREGL_MEAN",
    "VICREGL_STD",
    "MultiCropCollator",
    "MultiCropTransform",
    "PILGaussianBlur",
    "PILSolarize",
    "crop_location_grid",
    "vicregl_color_pipeline",
]
