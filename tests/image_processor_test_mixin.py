"""Common tests for hf_mim image processors: round trip, input types, odd image modes, rejection of tiny images."""

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoImageProcessor


def photo(height=64, width=80, seed=0) -> np.ndarray:
    """A smooth, non-trivial uint8 RGB image (HWC)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    return np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)


class ImageProcessorTesterMixin:
    processor_class = None
    config_class = None
    expected_size = (224, 224)

    def make(self, **kwargs):
        return self.processor_class(**kwargs)

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
