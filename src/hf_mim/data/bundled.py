"""Real photos that ship inside installed wheels, so examples and tests run with no download."""

import datasets
import numpy as np
import PIL.Image

# scikit-image loaders that read files bundled in its wheel (others download on first use).
SKIMAGE_IMAGES = (
    "astronaut", "brick", "camera", "cat", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass", "gravel",
    "horse", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina", "rocket", "text",
)  # fmt: skip


def bundled_photos() -> list[PIL.Image.Image]:
    """The scikit-image and scikit-learn sample photos that load offline (about twenty real images)."""
    import skimage.data

    images = []
    for name in SKIMAGE_IMAGES:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue
        try:
            array = loader()
        except Exception:  # a loader that would need a download on this install
            continue
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        elif array.dtype != np.uint8:
            array = (255 * (array - array.min()) / max(float(np.ptp(array)), 1e-12)).astype(np.uint8)
        images.append(PIL.Image.fromarray(array))
    try:
        from sklearn.datasets import load_sample_images

        images.extend(PIL.Image.fromarray(array) for array in load_sample_images().images)
    except Exception:
        pass
    if not images:
        raise RuntimeError("No bundled images could be loaded: is scikit-image installed?")
    return images


def bundled_photo(name: str) -> PIL.Image.Image:
    """One scikit-image sample photo by its loader's name (e.g. "astronaut", "coffee", "chelsea"), as RGB."""
    import skimage.data

    if name not in SKIMAGE_IMAGES:
        raise ValueError(f"{name!r} is not a bundled photo; choose from {SKIMAGE_IMAGES}.")
    return PIL.Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def bundled_photo_dataset() -> datasets.Dataset:
    """The bundled photos as a `datasets.Dataset` with an "image" column."""
    return datasets.Dataset.from_dict(
        {"image": bundled_photos()}, features=datasets.Features({"image": datasets.Image()})
    )
