"""CAE's two-view crop: one random-resized crop box resized twice, for the encoder and for the target network.

Per image, as the original (Atten4Vis/CAE `furnace/datasets.py: DataAugmentationForCAE`, `furnace/transforms.py:
RandomResizedCropAndInterpolationWithTwoPic`), on the PIL image:

1. optional ColorJitter(brightness=contrast=saturation=color_jitter) (CAE v2: 0.4; v1: none);
2. RandomHorizontalFlip(0.5);
3. ONE RandomResizedCrop box (scale, ratio 3/4-4/3, 10 tries + centre-crop fallback), cropped and resized with PIL
   twice: `image_size` with `interpolation` (bicubic) -> `pixel_values`, ToTensor + mean/std (ImageNet);
   `second_size` with `second_interpolation` -> `target_pixel_values`, normalised per `second_normalization`:
   "logit_laplace" (v1, for the DALL-E tokenizer: ToTensor then x -> 0.8 * x + 0.1, DALL-E's `map_pixels`, range
   [0.1, 0.9]), "clip" (v2, CLIP mean/std) or "imagenet".

Random draws, in this order: the jitter (torchvision's `ColorJitter` draws: `torch.randperm(4)` then one `uniform_`
per factor), the flip (`torch.rand(1)`), the crop box (exactly the draws of `torchvision.transforms.v2.
RandomResizedCrop.make_params`, = v1 `RandomResizedCrop.get_params`). All come from torch's global RNG, so
`torch.manual_seed` makes the output deterministic. Deviation: the original's box sampler (timm-style
`get_params`) draws from Python's `random` module; the draws differ, the distribution is the same (same scale and
log-ratio ranges, rounding, 10 tries and centre-crop fallback).
"""

from collections.abc import Sequence

import PIL.Image
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import v2
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .collators import PretrainingCollator
from .transforms import IMAGENET_MEAN, IMAGENET_STD, decode_image, to_tensor

CLIP_MEAN, CLIP_STD = tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD)
# DALL-E's logit-Laplace input mapping x -> (1 - 2 * eps) * x + eps: `hf_mim.models.cae.tokenizer_dalle.map_pixels`,
# applied in place here (data/ sits below models/ and cannot import it).
LOGIT_LAPLACE_EPS = 0.1
SECOND_NORMALIZATIONS = ("logit_laplace", "clip", "imagenet")


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _interpolation(value: str, name: str) -> v2.InterpolationMode:
    try:
        return v2.InterpolationMode(value)
    except ValueError:
        raise ValueError(f"Unknown {name} {value!r}") from None


class TwoViewCropTransform:
    """Callable on one PIL image (other modes and paths/bytes are decoded to RGB first); returns
    `{"pixel_values": (3, image_size, image_size), "target_pixel_values": (3, second_size, second_size)}`, both
    float32, showing the same crop box (and flip) of the image. See the module docstring for the pipeline.

    Args:
        image_size: encoder view side (224).
        second_size: target view side (v1: 112, v2: 224).
        scale / ratio: RandomResizedCrop area-scale range (in (0, 1]) and aspect-ratio range.
        interpolation / second_interpolation: PIL resampling of each view ("bicubic" / v1 "lanczos").
        second_normalization: "logit_laplace" (v1), "clip" (v2) or "imagenet".
        color_jitter: brightness = contrast = saturation jitter strength; 0 disables it (no RNG draws).
        hflip: random horizontal flip with p=0.5 (before the crop, so both views share it).
        mean / std: the encoder view's normalisation (ImageNet).
    """

    def __init__(
        self,
        image_size: int = 224,
        second_size: int = 112,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        interpolation: str = "bicubic",
        second_interpolation: str = "lanczos",
        second_normalization: str = "logit_laplace",
        color_jitter: float = 0.0,
        hflip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        self.image_size = _positive_int(image_size, "image_size")
        self.second_size = _positive_int(second_size, "second_size")
        if not (len(scale) == 2 and 0.0 < scale[0] <= scale[1] <= 1.0):
            raise ValueError(f"scale must be (min, max) with 0 < min <= max <= 1, got {scale}")
        if not (len(ratio) == 2 and 0.0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must be (min, max) with 0 < min <= max, got {ratio}")
        if second_normalization not in SECOND_NORMALIZATIONS:
            raise ValueError(
                f"second_normalization must be one of {SECOND_NORMALIZATIONS}, got {second_normalization!r}"
            )
        if isinstance(color_jitter, bool) or not isinstance(color_jitter, int | float) or color_jitter < 0:
            raise ValueError(f"color_jitter must be a non-negative number, got {color_jitter!r}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need three values (RGB), std positive; got {mean}, {std}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.interpolation = _interpolation(interpolation, "interpolation")
        self.second_interpolation = _interpolation(second_interpolation, "second_interpolation")
        self.second_normalization = second_normalization
        self.color_jitter = float(color_jitter)
        self.hflip = bool(hflip)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.jitter = (
            v2.ColorJitter(brightness=self.color_jitter, contrast=self.color_jitter, saturation=self.color_jitter)
            if self.color_jitter > 0
            else None
        )
        # only its box sampler is used (make_params); the crop is resized twice with PIL below
        self.crop_sampler = v2.RandomResizedCrop(self.image_size, scale=self.scale, ratio=self.ratio)

    @classmethod
    def cae_v1(cls, image_size: int = 224, **kwargs) -> "TwoViewCropTransform":
        """CAE v1: scale (0.08, 1), no jitter, target view image_size // 2 (112) lanczos, logit-Laplace map."""
        options = dict(
            image_size=image_size,
            second_size=image_size // 2,
            scale=(0.08, 1.0),
            second_interpolation="lanczos",
            second_normalization="logit_laplace",
            color_jitter=0.0,
        )
        return cls(**{**options, **kwargs})

    @classmethod
    def cae_v2(cls, image_size: int = 224, **kwargs) -> "TwoViewCropTransform":
        """CAE v2: scale (0.4, 1), jitter 0.4, target view image_size bicubic, CLIP normalisation."""
        options = dict(
            image_size=image_size,
            second_size=image_size,
            scale=(0.4, 1.0),
            second_interpolation="bicubic",
            second_normalization="clip",
            color_jitter=0.4,
        )
        return cls(**{**options, **kwargs})

    def crop_box(self, image: PIL.Image.Image) -> tuple[int, int, int, int]:
        """(top, left, height, width), drawn exactly as torchvision's RandomResizedCrop."""
        params = self.crop_sampler.make_params([image])
        return params["top"], params["left"], params["height"], params["width"]

    def _target(self, crop: PIL.Image.Image) -> torch.Tensor:
        tensor = to_tensor(crop)
        if self.second_normalization == "logit_laplace":
            return tensor.mul_(1 - 2 * LOGIT_LAPLACE_EPS).add_(LOGIT_LAPLACE_EPS)  # map_pixels, in place
        mean, std = (CLIP_MEAN, CLIP_STD) if self.second_normalization == "clip" else (IMAGENET_MEAN, IMAGENET_STD)
        return TF.normalize(tensor, mean, std, inplace=True)

    def __call__(self, image, crop_box: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """`crop_box` (top, left, height, width), in the pixels of the (flipped) image, replaces the drawn box: it
        replays a box drawn elsewhere, e.g. by the original's Python-`random` sampler (tests/test_transforms_vs_
        originals.py). The jitter and the flip are still drawn, in the same order; no box is drawn then."""
        if not (isinstance(image, PIL.Image.Image) and image.mode == "RGB"):
            image = decode_image(image)  # grayscale, RGBA, 16-bit, paths, bytes -> RGB PIL
        if self.jitter is not None:
            image = self.jitter(image)
        if self.hflip and bool(torch.rand(1) < 0.5):
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        box = self.crop_box(image) if crop_box is None else tuple(int(v) for v in crop_box)
        first = TF.resized_crop(image, *box, [self.image_size, self.image_size], self.interpolation)
        second = TF.resized_crop(image, *box, [self.second_size, self.second_size], self.second_interpolation)
        return {
            "pixel_values": TF.normalize(to_tensor(first), self.mean, self.std, inplace=True),
            "target_pixel_values": self._target(second),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, second_size={self.second_size}, "
            f"scale={self.scale}, ratio={self.ratio}, interpolation={self.interpolation.value!r}, "
            f"second_interpolation={self.second_interpolation.value!r}, "
            f"second_normalization={self.second_normalization!r}, color_jitter={self.color_jitter}, "
            f"hflip={self.hflip}, mean={self.mean}, std={self.std})"
        )


class TwoViewCollator(PretrainingCollator):
    """Stacks `pixel_values` (B, 3, S, S) and `target_pixel_values` (B, 3, s, s) and adds the masks of
    `mask_generator(B, grid)`, grid = (S // patch_size, S // patch_size) (e.g. `BlockMasking`'s `bool_masked_pos`
    (B, N)), under their field names.

    As `PretrainingCollator` (same arguments, same order; `TwoViewCollator.for_model(model)` takes the pretraining
    model's own mask generator): examples whose image could not be decoded (`pixel_values` None, from
    `SafeImageTransform`) are dropped and reported as `num_skipped` (tensor [count]) and `skipped_files`; a batch in
    which every image failed raises RuntimeError."""

    def __call__(self, examples: list[dict]) -> dict:
        good = [example for example in examples if example.get("pixel_values") is not None]
        if any(example.get("target_pixel_values") is None for example in good):
            raise ValueError("Two-view examples need 'target_pixel_values' (use TwoViewCropTransform)")
        batch = super().__call__(examples)
        batch["target_pixel_values"] = torch.stack([example["target_pixel_values"] for example in good])
        return batch


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "TwoViewCollator",
    "TwoViewCropTransform",
]
