"""Common tests for hf_mim image processors: round trip, input types, odd image modes, rejection of tiny images,
channel pass-through with `do_convert_rgb=False` (feeding a model configured with that many channels)."""

import importlib

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoImageProcessor, AutoModel, PreTrainedConfig

from hf_mim.image_processing_utils import HfMimImagesKwargs


def photo(height=64, width=80, seed=0) -> np.ndarray:
    """A smooth, non-trivial uint8 RGB image (HWC)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


def normalised(array_chw: np.ndarray, mean, std) -> torch.Tensor:
    """The reference `(x / 255 - mean) / std` of a uint8 (C, H, W) array, as a (1, C, H, W) float32 tensor."""
    x = torch.from_numpy(array_chw.astype(np.float64) / 255.0)
    mean, std = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    return ((x - mean[:, None, None]) / std[:, None, None]).float()[None]


class ImageProcessorTesterMixin:
    processor_class = None
    config_class = None  # defaults to the one configuration class exported next to the processor
    expected_size = (224, 224)

    def make(self, **kwargs):
        return self.processor_class(**kwargs)

    def get_config_class(self):
        """`config_class`, or the configuration class of the processor's model package (e.g. `hf_mim.models.capi`)."""
        if self.config_class is not None:
            return self.config_class
        package = importlib.import_module(self.processor_class.__module__.rpartition(".")[0])
        found = {
            obj
            for obj in vars(package).values()
            if isinstance(obj, type) and issubclass(obj, PreTrainedConfig) and obj is not PreTrainedConfig
        }
        assert len(found) == 1, f"set config_class: {package.__name__} exports {found or 'no config class'}"
        return found.pop()

    def get_small_config(self, **overrides):
        """The smallest preset of the config class (`tiny` where it has one) with `overrides`."""
        config_class = self.get_config_class()
        return config_class.tiny(**overrides) if hasattr(config_class, "tiny") else config_class(**overrides)

    def run_processor(self, processor, images):
        return processor(images=images, return_tensors="pt")["pixel_values"]

    def test_output_shape_and_normalisation(self):
        out = self.run_processor(self.make(), [PIL.Image.fromarray(photo()), PIL.Image.fromarray(photo(seed=1))])
        assert out.shape == (2, 3, *self.expected_size) and out.dtype == torch.float32
        assert -3 < out.mean() < 3 and out.std() > 0.1

    def test_save_load_roundtrip(self, tmp_path):
        processor = self.make()
        processor.save_pretrained(tmp_path)
        reloaded = self.processor_class.from_pretrained(tmp_path)
        auto = AutoImageProcessor.from_pretrained(tmp_path)
        assert type(auto) is self.processor_class
        image = PIL.Image.fromarray(photo())
        expected = self.run_processor(processor, image)
        torch.testing.assert_close(self.run_processor(reloaded, image), expected, atol=0, rtol=0)
        torch.testing.assert_close(self.run_processor(auto, image), expected, atol=0, rtol=0)
        assert reloaded.to_dict() == processor.to_dict()

    def test_pil_numpy_tensor_agree(self):
        array = photo()
        processor = self.make()
        from_pil = self.run_processor(processor, PIL.Image.fromarray(array))
        from_numpy = self.run_processor(processor, array)
        from_tensor = self.run_processor(processor, torch.from_numpy(array).permute(2, 0, 1))
        torch.testing.assert_close(from_numpy, from_pil, atol=0, rtol=0)
        torch.testing.assert_close(from_tensor, from_pil, atol=0, rtol=0)

    def test_grayscale_becomes_rgb(self):
        gray = photo()[..., 0]
        processor = self.make()
        out = self.run_processor(processor, PIL.Image.fromarray(gray, mode="L"))
        assert out.shape == (1, 3, *self.expected_size)
        rgb = self.run_processor(processor, PIL.Image.fromarray(np.repeat(gray[..., None], 3, -1)))
        torch.testing.assert_close(out, rgb, atol=0, rtol=0)
        torch.testing.assert_close(self.run_processor(processor, gray), rgb, atol=0, rtol=0)  # 2-D numpy

    def test_rgba_and_palette_become_rgb(self):
        array = photo()
        processor = self.make()
        opaque = np.concatenate([array, np.full(array.shape[:2] + (1,), 255, np.uint8)], -1)
        reference = self.run_processor(processor, PIL.Image.fromarray(array))
        torch.testing.assert_close(self.run_processor(processor, PIL.Image.fromarray(opaque, "RGBA")), reference)
        transparent = opaque.copy()
        transparent[..., 3] = 0  # fully transparent composites to white
        white = self.run_processor(processor, PIL.Image.fromarray(np.full_like(array, 255)))
        torch.testing.assert_close(self.run_processor(processor, PIL.Image.fromarray(transparent, "RGBA")), white)
        palette = PIL.Image.fromarray(array).convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=64)
        out = self.run_processor(processor, palette)
        assert out.shape == (1, 3, *self.expected_size)
        assert (out - reference).abs().mean() < 0.2  # 64-colour quantisation stays close to the original

    def test_sixteen_bit_images(self):
        array8 = photo()[..., 0]
        array16 = array8.astype(np.uint16) * 257  # exact 16-bit version of the same picture
        processor = self.make()
        reference = self.run_processor(processor, PIL.Image.fromarray(array8, mode="L"))
        from_numpy = self.run_processor(processor, array16)
        torch.testing.assert_close(from_numpy, reference, atol=0, rtol=0)
        pil16 = PIL.Image.fromarray(array16)  # PIL mode I;16
        assert pil16.mode.startswith("I")
        torch.testing.assert_close(self.run_processor(processor, pil16), reference, atol=0, rtol=0)
        torch.testing.assert_close(
            self.run_processor(processor, torch.from_numpy(array16.astype(np.int32))), reference
        )

    def test_tiny_image_rejected(self):
        processor = self.make()
        minimum = processor.min_image_size
        assert minimum > 1
        with pytest.raises(ValueError, match="smaller than the minimum"):
            self.run_processor(processor, PIL.Image.fromarray(photo(minimum - 1, 40)))
        out = self.run_processor(processor, PIL.Image.fromarray(photo(minimum, minimum)))  # exactly one patch is fine
        assert out.shape == (1, 3, *self.expected_size)

    def test_bad_values_rejected(self):
        processor = self.make()
        with pytest.raises(ValueError, match="65535"):
            self.run_processor(processor, np.full((32, 32), 70000, dtype=np.int64))
        with pytest.raises(ValueError):
            self.run_processor(processor, np.zeros((0, 32, 3), dtype=np.uint8))

    def test_corrupt_file_rejected(self, tmp_path):
        path = tmp_path / "broken.png"
        PIL.Image.fromarray(photo()).save(path)
        path.write_bytes(path.read_bytes()[:100])  # truncated
        with pytest.raises(OSError):
            self.run_processor(self.make(), PIL.Image.open(path))

    # ------------------------------------------------- channels with do_convert_rgb=False
    def test_has_own_kwargs_class(self):
        kwargs_class = self.processor_class.valid_kwargs
        assert kwargs_class is not HfMimImagesKwargs
        assert kwargs_class.__name__ == f"{self.processor_class.__name__}Kwargs"
        assert kwargs_class.__module__ == self.processor_class.__module__
        # a TypedDict subclass keeps every key of its bases (TypedDicts do not support issubclass)
        assert set(HfMimImagesKwargs.__annotations__) <= set(kwargs_class.__annotations__)
        assert not kwargs_class.__required_keys__  # total=False, as every transformers kwargs class
        package = importlib.import_module(self.processor_class.__module__.rpartition(".")[0])
        assert getattr(package, kwargs_class.__name__) is kwargs_class and kwargs_class.__name__ in package.__all__

    def test_four_channel_numpy_passes_without_rgb_conversion(self):
        rgba = np.concatenate([photo(), photo(seed=3)[..., :1]], -1)  # (H, W, 4), a non-trivial 4th channel
        mean, std = [0.485, 0.456, 0.406, 0.5], [0.229, 0.224, 0.225, 0.25]
        plain = self.make(do_convert_rgb=False, do_resize=False, do_center_crop=False, image_mean=mean, image_std=std)
        expected = normalised(rgba.transpose(2, 0, 1), mean, std)
        for image in (rgba, np.ascontiguousarray(rgba.transpose(2, 0, 1))):  # HWC and CHW
            out = self.run_processor(plain, image)
            assert out.shape == (1, 4, *rgba.shape[:2])
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
        # with resize + crop, the channels are processed independently: the first three are the RGB result
        out = self.run_processor(self.make(do_convert_rgb=False, image_mean=mean, image_std=std), rgba)
        assert out.shape == (1, 4, *self.expected_size)
        rgb = self.run_processor(self.make(), rgba[..., :3])
        torch.testing.assert_close(out[:, :3], rgb)
        # do_convert_rgb=True (the default) still composites the 4th channel as alpha on white
        assert self.run_processor(self.make(), rgba).shape == (1, 3, *self.expected_size)

    def test_pil_modes_keep_their_channels_without_rgb_conversion(self):
        array = photo()
        kwargs = dict(do_convert_rgb=False, do_resize=False, do_center_crop=False)
        gray = self.make(image_mean=[0.5], image_std=[0.5], **kwargs)
        expected = normalised(array[None, ..., 0], [0.5], [0.5])
        torch.testing.assert_close(self.run_processor(gray, PIL.Image.fromarray(array[..., 0], "L")), expected)
        sixteen = PIL.Image.fromarray(array[..., 0].astype(np.uint16) * 257)  # 16-bit -> 8-bit still applies
        torch.testing.assert_close(self.run_processor(gray, sixteen), expected)
        mask = array[..., 0] > 128  # bool -> 0 / 255 still applies
        torch.testing.assert_close(
            self.run_processor(gray, mask), normalised(mask[None].astype(np.uint8) * 255, [0.5], [0.5])
        )
        four = self.make(image_mean=[0.5] * 4, image_std=[0.5] * 4, **kwargs)
        rgba = np.concatenate([array, np.full(array.shape[:2] + (1,), 7, np.uint8)], -1)
        out = self.run_processor(four, PIL.Image.fromarray(rgba, "RGBA"))  # alpha kept, not composited
        torch.testing.assert_close(out, normalised(rgba.transpose(2, 0, 1), [0.5] * 4, [0.5] * 4))
        palette = PIL.Image.fromarray(array).convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=64)
        rgb = self.make(**kwargs)  # palette indices are not pixel values: P decodes to its colours
        expected = normalised(np.asarray(palette.convert("RGB")).transpose(2, 0, 1), rgb.image_mean, rgb.image_std)
        torch.testing.assert_close(self.run_processor(rgb, palette), expected)

    def test_one_channel_feeds_a_single_channel_model(self):
        gray = photo()[..., 0]
        processor = self.make(
            do_convert_rgb=False, image_mean=[0.5], image_std=[0.5], size={"shortest_edge": 56}, crop_size=56
        )
        out = self.run_processor(processor, [PIL.Image.fromarray(gray, "L"), gray])  # PIL "L" and 2-D numpy
        assert out.shape == (2, 1, 56, 56)
        torch.testing.assert_close(out[0], out[1], atol=0, rtol=0)
        for image in (gray[..., None], gray[None], torch.from_numpy(gray)[None]):  # (H, W, 1), (1, H, W), tensor
            torch.testing.assert_close(self.run_processor(processor, image), out[:1], atol=0, rtol=0)
        # the one channel is the grayscale channel of the default (RGB) processing, renormalised
        rgb = self.run_processor(self.make(size={"shortest_edge": 56}, crop_size=56), gray)
        mean, std = self.processor_class.image_mean[0], self.processor_class.image_std[0]
        torch.testing.assert_close(out[:1], ((rgb[:, :1] * std + mean) - 0.5) / 0.5, atol=1e-5, rtol=0)

        config = self.get_small_config(num_channels=1)
        torch.manual_seed(0)
        model = AutoModel.from_config(config).eval()
        assert type(model).config_class is self.get_config_class()
        with torch.no_grad():
            hidden = model(pixel_values=out).last_hidden_state
        assert hidden.shape[0] == 2 and torch.isfinite(hidden).all()

    def test_mean_std_length_must_match_channels(self):
        rgba = np.concatenate([photo(), photo(seed=3)[..., :1]], -1)
        with pytest.raises(ValueError, match=r"4 channels.*image_mean has 3 entries"):
            self.run_processor(self.make(do_convert_rgb=False), rgba)
        with pytest.raises(ValueError, match=r"1 channel.*image_mean has 3 entries.*image_mean=\[0\.5\]"):
            self.run_processor(self.make(do_convert_rgb=False), PIL.Image.fromarray(photo()[..., 0], "L"))
        with pytest.raises(ValueError, match=r"4 channels.*image_std has 3 entries"):
            self.run_processor(self.make(do_convert_rgb=False, image_mean=[0.5] * 4), rgba)
        with pytest.raises(ValueError, match=r"3 channels.*image_mean has 1 entry"):
            self.run_processor(self.make(image_mean=[0.5], image_std=[0.5]), photo())  # RGB after conversion
        # a single float applies to every channel; without normalisation there is nothing to match
        out = self.run_processor(self.make(do_convert_rgb=False, image_mean=0.5, image_std=0.5), rgba)
        assert out.shape == (1, 4, *self.expected_size)
        out = self.run_processor(self.make(do_convert_rgb=False, do_normalize=False), rgba)
        assert out.shape == (1, 4, *self.expected_size)
