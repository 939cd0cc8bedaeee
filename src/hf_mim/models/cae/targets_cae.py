"""CAE's target networks, attached to `CaeForPreTraining.set_target_model` (kept outside the trained module tree):

* v1: the DALL-E dVAE encoder (`hf_mim.models.cae.tokenizer_dalle.DalleTokenizer`), ids of the 112 px view;
* v2: a CLIP vision tower (transformers' `CLIPVisionModelWithProjection`, any CLIP ViT checkpoint): `ClipTeacher`.
"""

import torch
from torch import nn


class ClipTeacher(nn.Module):
    """CAE v2's teacher: every token of CLIP's last layer (cls included) through `post_layernorm` and the visual
    projection - what the original's `visual(image)` returns with `ln_post` applied to all tokens - as
    (B, 1 + N, projection_dim). Frozen and in eval mode; the CAE model L2-normalises before the cosine loss.

    The original runs CLIP in fp16 on GPU; here it runs in the dtype of its weights (float32 unless converted)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        if not hasattr(clip, "vision_model") or not hasattr(clip, "visual_projection"):
            raise ValueError(
                f"ClipTeacher needs a CLIPVisionModelWithProjection-like model (vision_model + visual_projection), "
                f"got {type(clip).__name__}."
            )
        self.clip = clip.requires_grad_(False).eval()

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs) -> "ClipTeacher":
        from transformers import CLIPVisionModelWithProjection

        return cls(CLIPVisionModelWithProjection.from_pretrained(name_or_path, **kwargs))

    def train(self, mode: bool = True):
        return super().train(False)  # always eval: no dropout, fixed targets

    @torch.no_grad()
    def get_target_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vision = self.clip.vision_model
        size = vision.config.image_size
        interpolate = tuple(pixel_values.shape[-2:]) != (size, size)
        hidden = vision(pixel_values.to(self.clip.dtype), interpolate_pos_encoding=interpolate).last_hidden_state
        return self.clip.visual_projection(vision.post_layernorm(hidden))


def load_target_model(cae_version: int, name_or_path: str) -> nn.Module:
    """The target network of a CAE version from a folder or Hub id: a DalleTokenizer (v1) or a ClipTeacher (v2).
    Loaded whole even when a ZeRO-3 TrainingArguments is active: it stays outside the DeepSpeed engine."""
    from ...zero3 import without_zero3_init

    with without_zero3_init():
        if cae_version == 1:
            from .tokenizer_dalle import DalleTokenizer

            return DalleTokenizer.from_pretrained(name_or_path)
        return ClipTeacher.from_pretrained(name_or_path)


__all__ = ["ClipTeacher", "load_target_model"]
