"""The DALL-E dVAE encoder (Ramesh et al., 2021) as a transformers model: CAE v1's (and BEiT's) target tokenizer.

CAE v1 labels every masked patch with the DALL-E code of the 112 x 112 second view: `labels = argmax` over the 8192
logits of this encoder, a (B, 14, 14) grid flattened row-major (`DalleTokenizer.get_codebook_indices`).

Architecture (OpenAI `dall_e/encoder.py`, `dall_e/utils.py`; A4V, BEiT and MMPretrain copy it): a 7 x 7 input conv
(`num_channels -> hidden_size`), `group_count` groups of `num_blocks_per_group` residual blocks whose width doubles
from group to group (1, 2, 4, 8 x `hidden_size`), a 2 x 2 max-pool after every group but the last, then ReLU and a
1 x 1 conv to `vocab_size` logits. A block is `id_path(x) + post_gain * res_path(x)`: `id_path` a 1 x 1 conv when the
width changes, else the identity; `res_path` ReLU, 3 x 3 conv (-> width / 4), ReLU, 3 x 3, ReLU, 3 x 3, ReLU, 1 x 1
conv (-> width); `post_gain = 1 / (group_count * num_blocks_per_group) ** 2` (1 / 64). Every conv pads `(k - 1) // 2`.

Parameter names are the original module paths with its custom conv's `w` / `b` renamed to `weight` / `bias`:

    blocks.input.w                             -> blocks.input.weight
    blocks.group_1.block_1.res_path.conv_1.b   -> blocks.group_1.block_1.res_path.conv_1.bias
    blocks.group_2.block_1.id_path.w           -> blocks.group_2.block_1.id_path.weight   (width changes)
    blocks.output.conv.w                       -> blocks.output.conv.weight

(`scripts/convert/convert_dalle_tokenizer_to_hf.py` converts OpenAI's `encoder.pkl` and MMPretrain's
`dalle_encoder.pth`.)

Input: `pixel_values` are images in [0, 1] passed through DALL-E's logit-Laplace `map_pixels`,
`x -> (1 - 2 * 0.1) * x + 0.1`, i.e. in [0.1, 0.9] (no ImageNet mean/std; `map_pixels` below). MMPretrain's data
preprocessor reaches the same values with `mean=-31.875, std=318.75` on 0-255 input.

Numerics: this module computes in the model's dtype, float32 unless cast. The original runs every conv except the
output conv in **float16 on CUDA** (`use_float16=True`; float32 on CPU), so on GPU its logits differ at the fp16
rounding level and the argmax ids of a small fraction of positions (near-ties among the 8192 logits) can differ from
the float32 ids computed here.
"""

import numbers
from collections import OrderedDict

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init

from ...modeling_utils import RemoteCodeExportMixin

LOGIT_LAPLACE_EPS = 0.1


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def map_pixels(images: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """DALL-E's `map_pixels`: images in [0, 1] -> [eps, 1 - eps] (the tokenizer's expected `pixel_values`)."""
    return (1 - 2 * eps) * images + eps


class DalleTokenizerConfig(PreTrainedConfig):
    r"""Configuration of the DALL-E dVAE encoder used as a frozen tokenizer. Defaults: OpenAI's released encoder.

    Args:
        group_count (`int`, *optional*, defaults to 4): Resolution groups; the width doubles from group to group and
            every group but the last ends with a 2 x 2 max-pool (logits at 1 / 2**(group_count - 1) resolution).
        hidden_size (`int`, *optional*, defaults to 256): Width of the first group (the original's `n_hid`).
        num_blocks_per_group (`int`, *optional*, defaults to 2): Residual blocks per group (`n_blk_per_group`).
        num_channels (`int`, *optional*, defaults to 3): Input channels (`input_channels`).
        vocab_size (`int`, *optional*, defaults to 8192): Codebook size: logits per position.
        image_size (`int`, *optional*, defaults to 112): Resolution the tokenizer is used at (CAE v1's second view;
            any size works, the code grid is `image_size // 8` per side for 4 groups).
    """

    model_type = "hf_mim_dalle_tokenizer"

    def __init__(
        self,
        group_count: int = 4,
        hidden_size: int = 256,
        num_blocks_per_group: int = 2,
        num_channels: int = 3,
        vocab_size: int = 8192,
        image_size: int = 112,
        **kwargs,
    ):
        kwargs.pop("model_type", None)
        super().__init__(**kwargs)
        self.group_count = group_count
        self.hidden_size = hidden_size
        self.num_blocks_per_group = num_blocks_per_group
        self.num_channels = num_channels
        self.vocab_size = vocab_size
        self.image_size = image_size
        self._check_fields()

    def validate(self):
        """transformers' checks plus the tokenizer's own (`save_pretrained` runs this)."""
        super().validate()
        self._check_fields()

    def _check_fields(self) -> None:
        for name in ("group_count", "hidden_size", "num_blocks_per_group", "num_channels", "vocab_size", "image_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive integer, got {value!r}.")
        if self.hidden_size % 4:
            raise ValueError(
                f"{type(self).__name__}: hidden_size={self.hidden_size} must be divisible by 4 (the residual path "
                "is a quarter of the block width)."
            )

    @property
    def num_layers(self) -> int:
        """Residual blocks in total (the original's `n_layers`); `post_gain = 1 / num_layers**2`."""
        return self.group_count * self.num_blocks_per_group

    @property
    def downsampling(self) -> int:
        """Pixels per code along each side (8 for 4 groups)."""
        return 2 ** (self.group_count - 1)

    @classmethod
    def tiny(cls, **kwargs) -> "DalleTokenizerConfig":
        """A 16-wide, 64-code tokenizer for CPU tests (same layout: 4 groups x 2 blocks), used at 32 px."""
        return cls(**{"hidden_size": 16, "vocab_size": 64, "image_size": 32, **kwargs})


def _conv(n_in: int, n_out: int, kernel_size: int) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, kernel_size, padding=(kernel_size - 1) // 2)


def init_dalle_conv(module: nn.Module) -> None:
    """The original's init for every conv of the dVAE: weights N(0, 1 / sqrt(n_in * k * k)), biases 0."""
    if isinstance(module, nn.Conv2d):
        fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        init.normal_(module.weight, mean=0.0, std=fan_in**-0.5)
        if module.bias is not None:
            init.zeros_(module.bias)


class DalleEncoderBlock(nn.Module):
    """`id_path(x) + post_gain * res_path(x)`, as `dall_e.encoder.EncoderBlock`: `res_path` = four ReLU + conv pairs
    with `kernel_sizes` (3, 3, 3, 1), the first three to width / 4. `dall_e.decoder.DecoderBlock` is the same block
    with kernel sizes (1, 3, 3, 3) (`hf_mim.models.cae.dvae_dalle`)."""

    def __init__(self, n_in: int, n_out: int, num_layers: int, kernel_sizes: tuple[int, ...] = (3, 3, 3, 1)):
        super().__init__()
        if len(kernel_sizes) != 4 or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be four odd sizes (the paddings keep the size), got {kernel_sizes}.")
        n_hid = n_out // 4
        self.post_gain = 1 / num_layers**2
        self.id_path = _conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = [n_in, n_hid, n_hid, n_hid, n_out]
        layers = []
        for index, kernel_size in enumerate(kernel_sizes, start=1):
            layers += [
                (f"relu_{index}", nn.ReLU()),
                (f"conv_{index}", _conv(*widths[index - 1 : index + 1], kernel_size)),
            ]
        self.res_path = nn.Sequential(OrderedDict(layers))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.id_path(hidden_states) + self.post_gain * self.res_path(hidden_states)


class DalleTokenizer(RemoteCodeExportMixin, PreTrainedModel):
    """The DALL-E dVAE encoder: `forward(pixel_values)` -> logits (B, vocab_size, H / 8, W / 8) (floor for sizes not
    divisible by 8, as the original's max-pools); `get_codebook_indices(pixel_values)` -> (B, H / 8 * W / 8) int64
    ids, the argmax over the codebook flattened row-major (CAE's / BEiT's labels).

    `pixel_values` must already be logit-Laplace mapped to [0.1, 0.9] (`map_pixels`). The module is meant to be used
    frozen (`requires_grad_(False)`, `eval()`); it has no normalization or dropout, so train/eval modes agree.
    """

    config_class = DalleTokenizerConfig
    config: DalleTokenizerConfig
    base_model_prefix = "dalle_tokenizer"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: DalleTokenizerConfig):
        super().__init__(config)
        width, num_layers = config.hidden_size, config.num_layers
        layers: list[tuple[str, nn.Module]] = [("input", _conv(config.num_channels, width, 7))]
        n_in = width
        for group in range(1, config.group_count + 1):
            n_out = width * 2 ** (group - 1)
            group_layers = []
            for block in range(1, config.num_blocks_per_group + 1):
                group_layers.append((f"block_{block}", DalleEncoderBlock(n_in, n_out, num_layers)))
                n_in = n_out
            if group < config.group_count:
                group_layers.append(("pool", nn.MaxPool2d(kernel_size=2)))
            layers.append((f"group_{group}", nn.Sequential(OrderedDict(group_layers))))
        output = OrderedDict([("relu", nn.ReLU()), ("conv", _conv(n_in, config.vocab_size, 1))])
        layers.append(("output", nn.Sequential(output)))
        self.blocks = nn.Sequential(OrderedDict(layers))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        init_dalle_conv(module)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Mapped images (B, num_channels, H, W) -> logits (B, vocab_size, H / 8, W / 8), in the model's dtype."""
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be 4-D (B, C, H, W), got shape {tuple(pixel_values.shape)}.")
        if pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} channels; the tokenizer expects {self.config.num_channels}."
            )
        return self.blocks(pixel_values.to(self.blocks.input.weight.dtype))

    @torch.no_grad()
    def get_codebook_indices(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Mapped images -> (B, H / 8 * W / 8) int64 codebook ids (argmax over the logits, row-major grid)."""
        return self(pixel_values).argmax(dim=1).flatten(1)


__all__ = ["DalleEncoderBlock", "DalleTokenizer", "DalleTokenizerConfig", "init_dalle_conv", "map_pixels"]
