"""Train a DALL-E-style dVAE on your own images, to get a `DalleTokenizer` whose codes mean something for that data.

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
from collections.abc import Iterator
from dataclasses import dataclass

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


@dataclass
class DvaeTrainingArguments:
    """How `train_dalle_tokenizer` trains. The defaults were measured on digits at 32 px (300 steps, under 2 minutes
    on one thread: the argmax codes reconstruct with MSE 0.031, a perfect mean per 8 x 8 square 0.038; 43 to 44 of 64
    codes used).

    Args:
        steps: optimiser steps.
        batch_size: images per step.
        learning_rate: AdamW peak learning rate (linear warmup over the first 5 % of steps, cosine to 0).
        weight_decay: AdamW weight decay.
        temperature_start / temperature_end: Gumbel-softmax temperature, annealed exponentially over the run.
        kl_weight: final beta of the KL term to the uniform prior, ramped up linearly over the first half of the run
            (the paper: 0 -> 6.6 over 5000 updates, for summed terms). 0.004 was chosen by measurement on digits:
            0 left 5 of 64 codes in use, 0.1 kept the codes near uniform and doubled the reconstruction error.
        seed: seeds the initialisation, the batches and the Gumbel noise.
    """

    steps: int = 300
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    temperature_start: float = 1.0
    temperature_end: float = 1.0 / 16
    kl_weight: float = 0.004
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"DvaeTrainingArguments.{name} must be >= 1, got {getattr(self, name)}.")
        if not 0 < self.temperature_end <= self.temperature_start:
            raise ValueError(
                f"DvaeTrainingArguments: need 0 < temperature_end <= temperature_start, got "
                f"{self.temperature_end} and {self.temperature_start}."
            )
        if self.learning_rate <= 0 or self.kl_weight < 0:
            raise ValueError("DvaeTrainingArguments: learning_rate must be > 0 and kl_weight >= 0.")

    def temperature(self, step: int) -> float:
        progress = step / max(self.steps - 1, 1)
        return self.temperature_start * (self.temperature_end / self.temperature_start) ** progress

    def beta(self, step: int) -> float:
        from ...trainers.schedules import linear  # imported here: hf_mim.trainers imports the models

        return linear(step, 0.0, self.kl_weight, max((self.steps - 1) / 2, 1))

    def lr_factor(self, step: int) -> float:
        """(step + 1) / warmup over the first 5 % of steps, then a cosine to 0: the shared `warmup_then_cosine`."""
        from ...trainers.schedules import warmup_then_cosine

        warmup = max(1, self.steps // 20)
        return warmup_then_cosine(
            step, 1.0, 0.0, self.steps, warmup, start_warmup_value=1 / warmup, linspace_warmup=True
        )


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


def _batches(images: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        order = torch.randperm(len(images), generator=generator).to(images.device)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield images[order[start : start + batch_size]]


def train_dalle_tokenizer(
    images: torch.Tensor,
    config: DalleTokenizerConfig,
    args: DvaeTrainingArguments | None = None,
    log_every: int = 50,
    eval_images: int = 1024,
) -> tuple[DalleTokenizer, list[dict[str, float]]]:
    """Train a dVAE on `images` (N, C, H, W) - logit-Laplace mapped (`map_pixels`), H and W multiples of the
    tokenizer's downsampling, already augmented as the caller likes (every step draws a batch without replacement),
    on the device they are on - and return its encoder as a frozen `DalleTokenizer` (eval mode, no gradients) with
    the logged history. The last record adds `hard_mse`: `hard_code_reconstruction_error` on the first
    `eval_images` images after training."""
    args = args or DvaeTrainingArguments()
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}.")
    if images.dim() != 4 or images.shape[1] != config.num_channels:
        raise ValueError(f"images must be (N, {config.num_channels}, H, W), got shape {tuple(images.shape)}.")
    if images.shape[-1] % config.downsampling or images.shape[-2] % config.downsampling:
        raise ValueError(
            f"image sides {tuple(images.shape[-2:])} must be multiples of the tokenizer's downsampling "
            f"({config.downsampling}) for the decoder to reconstruct them."
        )
    if len(images) < args.batch_size:
        raise ValueError(f"{len(images)} images are fewer than one batch of {args.batch_size}.")
    generator = torch.Generator().manual_seed(args.seed)
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_devices):  # the caller's CPU and CUDA RNG streams are left as they were
        torch.manual_seed(args.seed)
        dvae = DiscreteVae(config).to(images.device).train()
        optimizer = torch.optim.AdamW(dvae.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, args.lr_factor)
        history = []
        batches = _batches(images, args.batch_size, generator)
        for step in range(args.steps):
            outputs = dvae(next(batches), args.temperature(step), args.beta(step))
            loss = float(outputs["loss"].detach())
            if not math.isfinite(loss):  # stop before a NaN reaches the weights
                raise RuntimeError(
                    f"dVAE training diverged at step {step} (loss {loss}); check the images for NaN or lower the "
                    "learning rate."
                )
            optimizer.zero_grad(set_to_none=True)
            outputs["loss"].backward()
            optimizer.step()
            schedule.step()
            if step % log_every == 0 or step == args.steps - 1:
                record = {"step": step, "temperature": args.temperature(step)}
                record.update({name: float(value.detach()) for name, value in outputs.items()})
                history.append(record)
                logger.info("dVAE step %d: %s", step, {k: round(v, 4) for k, v in record.items()})
        history[-1]["hard_mse"] = hard_code_reconstruction_error(dvae.eval(), images[:eval_images])
    return dvae.encoder.requires_grad_(False).eval(), history


__all__ = [
    "DalleDecoder",
    "DiscreteVae",
    "DvaeTrainingArguments",
    "hard_code_reconstruction_error",
    "train_dalle_tokenizer",
]
