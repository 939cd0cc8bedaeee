"""A DALL-E-style dVAE (the tokenizer as encoder, its mirror as decoder), to train a `DalleTokenizer` whose codes mean
something for your data; the training loop is `hf_mim.trainers.dvae_trainer.train_dalle_tokenizer`.

CAE v1 (like BEiT) predicts, for every masked patch, the code OpenAI's DALL-E dVAE gives that patch. Those codes are
informative because the dVAE was trained to reconstruct images from them. OpenAI's encoder is an 8192-code model
trained on 250 M web images; it cannot be downloaded here, and it is far too large for a CPU demo. This module trains
a small dVAE of the same design (Ramesh et al., 2021, section 2.1 and appendix A) on the data at hand:

* encoder: `DalleTokenizer` (its logits over the codebook at 1/8 resolution) - what CAE uses afterwards;
* relaxation: Gumbel-softmax over the codebook with temperature annealed exponentially from 1 to 1/16;
* decoder: `DalleDecoder` below, the mirror of the encoder (1 x 1 conv from the codebook, groups of residual blocks
  whose residual path opens with a 1 x 1 conv and whose width halves from group to group, a 2x nearest upsampling
  after every group but the last);
* objective: reconstruction + beta * KL(q(z | x) || uniform), beta ramped up from 0 as in the paper.

Departures from the paper, for a model trained in two minutes on a CPU: the reconstruction term is the mean squared
error on the logit-Laplace mapped pixels (`map_pixels`) instead of the logit-Laplace likelihood (the decoder
outputs one value per channel, not a location and a scale); both terms are averaged (over pixels, over code
positions) rather than summed per image, so beta is on another scale than the paper's 6.6; the decoder has no
separate input width (`n_init`); optimisation is plain AdamW with a cosine schedule.
Only the encoder is kept: `train_dalle_tokenizer` returns a `DalleTokenizer` that `save_pretrained` writes and
`run_cae.py --tokenizer_name_or_path` loads.
"""

import logging
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .tokenizer_dalle import DalleEncoderBlock, DalleTokenizer, DalleTokenizerConfig, _conv, init_dalle_conv

logger = logging.getLogger(__name__)
DECODER_KERNEL_SIZES = (1, 3, 3, 3)  # dall_e.decoder.DecoderBlock: the residual path opens with a 1 x 1 conv


class DalleDecoder(nn.Module):
    """Codes (B, vocab_size, h, w) -> mapped images (B, num_channels, h * 2**(group_count - 1), ...): the encoder's
    layout in reverse (widths 8, 4, 2, 1 x `hidden_size` for 4 groups), with the tokenizer's config. Unlike the
    original decoder, the 1 x 1 input conv maps the codebook straight to the first group's width (no separate
    `n_init`), and the output is one value per channel (no logit-Laplace scale)."""

    def __init__(self, config: DalleTokenizerConfig):
        super().__init__()
        width, num_layers = config.hidden_size, config.num_layers
        n_in = width * 2 ** (config.group_count - 1)
        layers: list[tuple[str, nn.Module]] = [("input", _conv(config.vocab_size, n_in, 1))]
        for group in range(1, config.group_count + 1):
            n_out = width * 2 ** (config.group_count - group)
            group_layers = []
            for block in range(1, config.num_blocks_per_group + 1):
                block_module = DalleEncoderBlock(n_in, n_out, num_layers, kernel_sizes=DECODER_KERNEL_SIZES)
                group_layers.append((f"block_{block}", block_module))
                n_in = n_out
            if group < config.group_count:
                group_layers.append(("upsample", nn.Upsample(scale_factor=2, mode="nearest")))
            layers.append((f"group_{group}", nn.Sequential(OrderedDict(group_layers))))
        output = OrderedDict([("relu", nn.ReLU()), ("conv", _conv(n_in, config.num_channels, 1))])
        layers.append(("output", nn.Sequential(output)))
        self.blocks = nn.Sequential(OrderedDict(layers))
        self.apply(init_dalle_conv)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.blocks(codes)


class DiscreteVae(nn.Module):
    """The dVAE: `encoder` (a `DalleTokenizer`) -> Gumbel-softmax relaxed codes -> `decoder` (a `DalleDecoder`)."""

    def __init__(self, config: DalleTokenizerConfig):
        super().__init__()
        self.encoder = DalleTokenizer(config)
        self.decoder = DalleDecoder(config)

    def forward(self, pixel_values: torch.Tensor, temperature: float, beta: float) -> dict[str, torch.Tensor]:
        """Mapped images (B, C, H, W), H and W multiples of 8 -> loss, reconstruction error, KL, code perplexity."""
        logits = self.encoder(pixel_values)
        codes = F.gumbel_softmax(logits, tau=temperature, hard=False, dim=1)
        reconstruction = self.decoder(codes)
        mse = F.mse_loss(reconstruction, pixel_values)
        log_q = F.log_softmax(logits, dim=1)
        # KL(q || uniform) per position = sum q log q + log V, averaged over positions
        kl = (log_q.exp() * log_q).sum(dim=1).mean() + math.log(logits.shape[1])
        usage = F.one_hot(logits.argmax(dim=1).flatten(), logits.shape[1]).float().mean(dim=0)
        perplexity = torch.exp(-(usage * torch.log(usage + 1e-10)).sum())
        return {"loss": mse + beta * kl, "mse": mse, "kl": kl, "perplexity": perplexity}


@torch.no_grad()
def hard_code_reconstruction_error(dvae: DiscreteVae, images: torch.Tensor, batch_size: int = 256) -> float:
    """Mean squared error of the decoder fed the encoder's argmax codes (one-hot), the codes CAE predicts: the
    reconstruction quality of the tokenizer as used, without Gumbel noise."""
    total = 0.0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        logits = dvae.encoder(batch)
        codes = F.one_hot(logits.argmax(dim=1), logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
        total += F.mse_loss(dvae.decoder(codes), batch, reduction="sum").item()
    return total / images.numel()


__all__ = [
    "DalleDecoder",
    "DiscreteVae",
    "hard_code_reconstruction_error",
]
