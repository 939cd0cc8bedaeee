"""The training loop of the DALL-E-style dVAE (`hf_mim.models.cae.dvae_dalle`): `train_dalle_tokenizer` trains it on
your images and keeps its encoder as CAE v1's `DalleTokenizer` (examples/pytorch/pretraining/train_dalle_tokenizer.py
is the command line)."""

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..models.cae.dvae_dalle import DiscreteVae, hard_code_reconstruction_error
from ..models.cae.tokenizer_dalle import DalleTokenizer, DalleTokenizerConfig
from ..optim.schedules import linear, warmup_then_cosine

logger = logging.getLogger(__name__)


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
        return linear(step, 0.0, self.kl_weight, max((self.steps - 1) / 2, 1))

    def lr_factor(self, step: int) -> float:
        """(step + 1) / warmup over the first 5 % of steps, then a cosine to 0: the shared `warmup_then_cosine`."""
        warmup = max(1, self.steps // 20)
        return warmup_then_cosine(
            step, 1.0, 0.0, self.steps, warmup, start_warmup_value=1 / warmup, linspace_warmup=True
        )


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


# Share of the codebook a trained tokenizer must use not to count as collapsed. The default recipe on digits uses 43
# to 49 of 64 codes (68-77 %); collapsed runs use a handful: 5 of 64 without the KL term (kl_weight 0, see
# DvaeTrainingArguments), 8 of 64 in 100 steps without it, 2 of 64 after a 30-step run (`--steps 30`, code perplexity
# 1.2). A quarter lies well between the two; below it CAE v1's targets name at most a quarter of its head's classes.
MIN_CODEBOOK_USAGE = 0.25


def codebook_collapse_warning(codes_used: int, vocab_size: int) -> str | None:
    """The warning for a tokenizer that uses fewer than `MIN_CODEBOOK_USAGE` of its `vocab_size` codes (None when it
    uses enough), naming what to try: the options of examples/pytorch/pretraining/train_dalle_tokenizer.py."""
    if codes_used >= MIN_CODEBOOK_USAGE * vocab_size:
        return None
    return (
        f"codebook collapse: the tokenizer uses only {codes_used} of its {vocab_size} codes "
        f"({codes_used / vocab_size:.0%}, under {MIN_CODEBOOK_USAGE:.0%}; the default recipe on digits uses 43 to 49 "
        "of 64), so CAE v1 would predict few distinct targets. Try a longer run (--steps, default 300), a slower "
        "temperature anneal (a higher --temperature_end), a stronger pull to the uniform prior (a larger --kl_weight; "
        "0 left 5 of 64 codes in use) or a lower --learning_rate."
    )


__all__ = ["MIN_CODEBOOK_USAGE", "DvaeTrainingArguments", "codebook_collapse_warning", "train_dalle_tokenizer"]
