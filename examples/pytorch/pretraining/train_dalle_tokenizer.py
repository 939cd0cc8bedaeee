#!/usr/bin/env python
"""Train a small DALL-E-style dVAE tokenizer on your images, for CAE v1 where OpenAI's encoder is out of reach.

    python examples/pytorch/pretraining/train_dalle_tokenizer.py --output_dir outputs/dalle-tokenizer-digits
    python examples/pytorch/pretraining/run_cae.py --tokenizer_name_or_path outputs/dalle-tokenizer-digits
    python examples/pytorch/pretraining/train_dalle_tokenizer.py --train_dir /data/xrays --tokenizer_image_size 112 \\
        --vocab_size 1024 --hidden_size 32 --steps 5000 --output_dir outputs/dalle-tokenizer-xrays

The tokenizer sees what CAE v1 tokenizes: the second view of `TwoViewCropTransform.cae_v1` (a random resized crop,
lanczos, logit-Laplace mapped), `--views_per_image` crops of every training image, drawn once before training and
held in memory (at most `--max_views`). It trains on the CPU: a tokenizer for a large data set wants a GPU run of
`hf_mim.trainers.dvae_trainer.train_dalle_tokenizer` on views moved there.
Data arguments are run_cae.py's (default: the digits training split). Writes a `DalleTokenizer` folder
(safetensors + config) and `dvae_history.json` (reconstruction error, KL, code perplexity during training), and
prints how many codes the trained encoder uses (with a warning when it uses under a quarter of them:
a collapsed codebook). See `hf_mim.models.cae.dvae_dalle` for the model and objective.
Images are decoded as in pretraining (`hf_mim.data.transforms.decode_image`): an unreadable file (corrupt, truncated,
not an image) is skipped, named in a warning once, and counted in a "Skipped N unreadable image(s): ..." line.

Measured (benchmarks/README.md, "How the recipes were chosen"): on digits this tokenizer reconstructs its 32 px
views from its codes better than a perfect mean per 8 x 8 square (MSE 0.031 against 0.038), but CAE v1 trained
against it learns no better features than against the random stand-in of run_cae.py's embedded default.
"""

import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
from transformers import HfArgumentParser

from hf_mim.data import TwoViewCropTransform
from hf_mim.data.skipped import SkippedFiles
from hf_mim.data.transforms import DECODE_ERRORS, decode_failure, decode_image
from hf_mim.models.cae.tokenizer_dalle import DalleTokenizerConfig
from hf_mim.presets import CPU_RECIPES
from hf_mim.trainers.dvae_trainer import DvaeTrainingArguments, codebook_collapse_warning, train_dalle_tokenizer
from hf_mim.trainers.run_pretraining import DataTrainingArguments, load_training_data

logger = logging.getLogger(__name__)


@dataclass
class TokenizerArguments:
    output_dir: str = field(default="outputs/dalle-tokenizer", metadata={"help": "Where the tokenizer is saved."})
    tokenizer_image_size: int = field(
        default=32, metadata={"help": "Side of the views (CAE v1: image_size / patch_size * 8; 32 for cae-tiny)."}
    )
    hidden_size: int = field(default=16, metadata={"help": "Width of the encoder's first group (n_hid)."})
    num_blocks_per_group: int = field(default=1, metadata={"help": "Residual blocks per group."})
    vocab_size: int = field(default=64, metadata={"help": "Codebook size (CaeConfig.vocab_size; cae-tiny: 64)."})
    views_per_image: int = field(default=4, metadata={"help": "Random crops drawn from every training image."})
    max_views: int = field(
        default=20000, metadata={"help": "At most this many views in memory (all are drawn before training)."}
    )


def training_views(
    dataset, column: str, transform: TwoViewCropTransform, count: int, seed: int, skipped: SkippedFiles | None = None
) -> torch.Tensor:
    """`count` target views (N, 3, s, s), cycling through `dataset`; undecodable images are skipped (decoded by
    `decode_image`, as in pretraining) and recorded in `skipped` (a warning names each file once, however many times
    the cycle meets it). Seeded: the same arguments give the same views, and the caller's random stream is left as it
    was."""
    skipped = SkippedFiles() if skipped is None else skipped
    views = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        while len(views) < count:
            before = len(views)
            for example in dataset:
                value = example[column]
                try:
                    views.append(transform(decode_image(value))["target_pixel_values"])
                except DECODE_ERRORS as error:  # a corrupt file costs one image, not the run
                    skipped.add(*decode_failure(value, error))
                if len(views) == count:
                    break
            if len(views) == before:
                raise ValueError(f"No decodable image in the training data. {skipped.summary()}")
    return torch.stack(views)


def images_to_view(dataset, data_args, tokenizer_args: TokenizerArguments, seed: int):
    """(dataset, image count) to draw `views_per_image` views from each. When that would exceed `max_views`, a
    seeded random subset of the images (the first ones of a folder sorted by class would show a few classes only)."""
    streamed = isinstance(dataset, datasets.IterableDataset)
    if streamed and not data_args.max_train_samples:
        raise ValueError("A streamed dataset needs --max_train_samples (how many images to draw views from).")
    images = data_args.max_train_samples if streamed else len(dataset)
    if tokenizer_args.views_per_image * images <= tokenizer_args.max_views:
        return dataset, images
    images = max(1, tokenizer_args.max_views // tokenizer_args.views_per_image)
    logger.info("Drawing views from %d randomly chosen images (--max_views %d)", images, tokenizer_args.max_views)
    if streamed:
        return dataset.shuffle(seed=seed, buffer_size=10_000).take(images), images
    return dataset.shuffle(seed=seed).select(range(images)), images


def block_average_error(views: torch.Tensor, block: int) -> float:
    """Squared error of replacing every `block` x `block` pixel square by its mean: what a perfect continuous value
    per code position would reconstruct (a reference for the tokenizer's error, which has one code per square)."""
    coarse = F.interpolate(F.avg_pool2d(views, block), scale_factor=block, mode="nearest")
    return F.mse_loss(coarse, views).item()


@torch.no_grad()
def codes_in_use(tokenizer, views: torch.Tensor, batch_size: int = 256) -> int:
    used = set()
    for start in range(0, len(views), batch_size):
        used.update(tokenizer.get_codebook_indices(views[start : start + batch_size]).unique().tolist())
    return len(used)


def main(argv: list[str] | None = None) -> int:
    parser = HfArgumentParser((TokenizerArguments, DataTrainingArguments, DvaeTrainingArguments))
    tokenizer_args, data_args, dvae_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)

    config = DalleTokenizerConfig(
        hidden_size=tokenizer_args.hidden_size,
        num_blocks_per_group=tokenizer_args.num_blocks_per_group,
        vocab_size=tokenizer_args.vocab_size,
        image_size=tokenizer_args.tokenizer_image_size,
    )
    if data_args.image_size is not None or data_args.learning_report is not None:
        raise ValueError(
            "--image_size and --learning_report are run_cae.py's; this script takes --tokenizer_image_size and "
            "reports the reconstruction error."
        )
    dataset = load_training_data(data_args)
    size = tokenizer_args.tokenizer_image_size
    # the crops run_cae.py takes: its CPU recipe's on the embedded digits, CAE v1's 0.08 on your data
    recipe = CPU_RECIPES["cae"]
    default_scale = 0.08 if data_args.has_data else float(recipe[recipe.index("--crop_scale_min") + 1])
    scale = (data_args.crop_scale_min or default_scale, 1.0)
    transform = TwoViewCropTransform.cae_v1(size, second_size=size, scale=scale)
    dataset, images = images_to_view(dataset, data_args, tokenizer_args, dvae_args.seed)
    count = tokenizer_args.views_per_image * images
    skipped = SkippedFiles()
    views = training_views(dataset, data_args.image_column_name, transform, count, dvae_args.seed, skipped)
    logger.info("Training a %d-code dVAE on %d views of %d px", config.vocab_size, len(views), size)
    tokenizer, history = train_dalle_tokenizer(views, config, dvae_args)

    output_dir = Path(tokenizer_args.output_dir)
    tokenizer.save_pretrained(output_dir)
    used = codes_in_use(tokenizer, views)
    reference = block_average_error(views[:1024], config.downsampling)
    collapse = codebook_collapse_warning(used, config.vocab_size)
    summary = {"history": history, "codes_used": used, "views": len(views), "block_average_mse": reference,
               "dvae_args": asdict(dvae_args), "skipped_images": skipped.errors, "warning": collapse}  # fmt: skip
    (output_dir / "dvae_history.json").write_text(json.dumps(summary, indent=2))
    last = history[-1]
    print(
        f"dVAE tokenizer saved to {output_dir.resolve()}: reconstruction MSE from its argmax codes "
        f"{last['hard_mse']:.4f} (training loss {history[0]['mse']:.4f} -> {last['mse']:.4f}; a perfect mean per "
        f"{config.downsampling} x {config.downsampling} square: {reference:.4f}), code perplexity "
        f"{last['perplexity']:.1f}, {used} of {config.vocab_size} codes used"
    )
    if collapse:
        logger.warning(collapse)  # in the log, and last in the summary, where it cannot scroll away
        print(f"warning: {collapse}")
    if skipped:
        print(skipped.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
