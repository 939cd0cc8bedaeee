"""Fine-tuning transforms (torchvision transforms v2): the MAE / I-JEPA recipe's augmentation and evaluation crop."""

import torch
from torchvision.transforms import v2

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD


def finetuning_train_transform(
    image_size: int | tuple[int, int] = 224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    hflip: bool = True,
    rand_augment: bool = True,
    rand_augment_num_ops: int = 2,
    rand_augment_magnitude: int = 9,
    random_erasing: float = 0.0,
) -> v2.Compose:
    """RandomResizedCrop (bicubic) + horizontal flip + RandAugment(2, 9) on uint8 + ImageNet-style normalisation,
    optionally followed by RandomErasing with probability `random_erasing` (MAE uses 0.25). PIL image or uint8
    tensor in, (3, H, W) float tensor out."""
    steps = [
        v2.ToImage(),
        v2.RandomResizedCrop(image_size, scale=crop_scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip(0.5))
    if rand_augment:
        steps.append(v2.RandAugment(num_ops=rand_augment_num_ops, magnitude=rand_augment_magnitude))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value=0))
    return v2.Compose(steps)


def finetuning_eval_transform(
    image_size: int | tuple[int, int] = 224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    crop_pct: float = 0.875,
) -> v2.Compose:
    """Resize the shorter side to `image_size / crop_pct` (bicubic), center-crop `image_size`, normalise (the
    standard 224 -> 256 -> 224 evaluation; `crop_pct=1` resizes straight to the crop)."""
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must lie in (0, 1], got {crop_pct}")
    crop = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    resize = int(round(min(crop) / crop_pct))
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(crop),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "finetuning_eval_transform", "finetuning_train_transform"]
