"""TrainingArguments for self-supervised pretraining: schedules (lr, weight decay, teacher momentum) and safety."""

import os
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..training_defaults import PinMemoryOnlyWithAccelerator

MAX_DEFAULT_WORKERS = 8


def default_dataloader_num_workers() -> int:
    """The pretraining scripts' `--dataloader_num_workers` default: the CPU cores this process may use, shared among
    the processes of its node (`LOCAL_WORLD_SIZE`, set by torchrun / accelerate launch), less one for the training
    loop, at most 8: `min(8, cores // local processes - 1)`, 0 on a single core.

    Why (benchmarks/README.md, "Data pipeline"): one worker turns 230-330 ImageNet-size JPEGs a second into CAPI /
    I-JEPA batches, 110-190 into CAE's and 35-75 into VICRegL's multi-crop views (one core of the development
    machine), while an accelerator's step asks for hundreds to thousands of images a second: the loader needs every
    core the step leaves free. Eight keep a ViT's step fed; VICRegL on a fast accelerator can use more."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_processes = 1
    return max(0, min(MAX_DEFAULT_WORKERS, cores // local_processes - 1))


@dataclass
class MimPretrainingArguments(PinMemoryOnlyWithAccelerator, TrainingArguments):
    """`TrainingArguments` plus the schedules SSL methods use. The lr follows linear warmup (`warmup_steps` /
    a fraction < 1 in `warmup_steps`) then a cosine to `min_lr_ratio * learning_rate`, optionally truncated (`lr_truncate_cos`)."""

    lr_truncate_cos: float = field(default=1.0, metadata={"help": "Fraction of the cosine period used (CAPI: 0.8)."})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "Final lr as a fraction of the peak."})
    warmup_start_lr_ratio: float = field(
        default=0.0, metadata={"help": "lr at step 0 as a fraction of the peak (I-JEPA warms up from 0.2)."}
    )
    weight_decay_end: float | None = field(
        default=None, metadata={"help": "If set, weight decay follows a cosine from weight_decay to this value."}
    )
    schedule_step_offset: int = field(
        default=0,
        metadata={
            "help": "Optimizer step k uses the lr / weight decay of schedule step k + offset. 1 reproduces originals "
            "that advance their schedulers before the optimizer step (I-JEPA), 0 those that index them by step."
        },
    )
    teacher_momentum: float = field(default=0.996, metadata={"help": "EMA momentum after warmup (base value)."})
    teacher_momentum_end: float = field(default=1.0, metadata={"help": "EMA momentum at the end of training."})
    teacher_momentum_warmup_steps: int = field(default=0, metadata={"help": "Steps of linear momentum warmup."})
    teacher_momentum_warmup_start: float = field(default=1.0, metadata={"help": "Momentum at step 0 of the warmup."})
    teacher_momentum_schedule: str = field(default="cosine", metadata={"help": "'cosine' or 'linear' after warmup."})
    teacher_momentum_truncate_cos: float = field(default=1.0, metadata={"help": "Truncated cosine (CAPI: 0.8)."})
    nan_check_steps: int = field(
        default=1, metadata={"help": "Check the loss for NaN/inf every N steps (0: never). 1 keeps checkpoints clean."}
    )
    dataloader_drop_last: bool = field(
        default=True,
        metadata={
            "help": "Drop the epoch's last, smaller batch, as the originals' loaders do: batch statistics (VICReg's "
            "variance, CAPI's Sinkhorn-Knopp) need full batches, and a batch of one would make VICReg's loss NaN."
        },
    )
    augmentation_rng: str = field(
        default="position",
        metadata={
            "help": "'position': crops, flips, colour jitter and masks are seeded by (seed, epoch, example index), so "
            "a run resumed from any step trains exactly like the uninterrupted one. 'global': drawn from the global "
            "RNG in loader order, as the originals do (exact resume only at epoch ends)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in an output folder that holds checkpoints of another (or a finished) run: its "
            "checkpoints are deleted. Without it such a folder is resumed only if the run is unfinished and matches."
        },
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every trainable parameter gets a gradient in these objectives."}
    )
    log_feature_health: bool = field(
        default=True, metadata={"help": "Log effective rank and per-dimension std of pooled features."}
    )
    tune_malloc: bool = field(
        default=False,
        metadata={
            "help": "CPU training: make glibc malloc keep freed large blocks for reuse (hf_mim.allocator."
            "tune_glibc_malloc, as MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 would): faster steps, "
            "a few hundred MB more peak RSS. No effect off glibc."
        },
    )


@dataclass
class CapiTrainingArguments(MimPretrainingArguments):
    """CAPI's optimisation recipe (facebookresearch/capi's default config) as defaults; the clustering head has its own lr and weight decay."""

    learning_rate: float = field(default=1e-3)
    weight_decay: float = field(default=0.1)
    adam_beta1: float = field(default=0.9)
    adam_beta2: float = field(default=0.95)
    max_grad_norm: float = field(default=0.0, metadata={"help": "CAPI clips no gradients."})
    lr_truncate_cos: float = field(default=0.8)
    warmup_steps: float = field(default=0.1, metadata={"help": "Warmup steps, or a fraction of training if < 1."})
    teacher_momentum: float = field(default=0.999)
    teacher_momentum_end: float = field(default=1.0)
    teacher_momentum_warmup_start: float = field(default=1.0)
    teacher_momentum_truncate_cos: float = field(default=0.8)
    teacher_momentum_warmup_ratio: float = field(
        default=0.1, metadata={"help": "Momentum warmup as a fraction of training (used if *_warmup_steps is 0)."}
    )
    patch_embed_lr_multiplier: float = field(default=0.2, metadata={"help": "lr multiplier of the patch embedding."})
    clustering_learning_rate: float = field(default=5e-4, metadata={"help": "Peak lr of the clustering head."})
    clustering_weight_decay: float = field(default=0.01, metadata={"help": "Weight decay of the clustering head."})
    linspace_warmup: bool = field(
        default=True,
        metadata={
            "help": "Warm up as the original WarmupThenCosine, np.linspace(start, peak, warmup_steps): the last "
            "warmup step reaches the peak (lr, clustering lr and teacher momentum). False: start + (peak - start) * "
            "step / warmup_steps, the peak one step later."
        },
    )
    original_weight_decay_groups: bool = field(
        default=False,
        metadata={
            "help": "Use the original CAPI multipliers (biases 0, norm weights x0.1, tokens x1) instead of hf_mim's "
            "(no decay on norms, biases and tokens)."
        },
    )


@dataclass
class IJepaTrainingArguments(MimPretrainingArguments):
    """I-JEPA's recipe (the original's ViT-H/14 config) as defaults: AdamW (0.9, 0.999), lr 2e-4 -> 1e-3 warmup then cosine to 1e-6,
    weight decay cosine-increasing 0.04 -> 0.4, EMA momentum linear 0.996 -> 1.0, no gradient clipping."""

    learning_rate: float = field(default=1e-3)
    weight_decay: float = field(default=0.04)
    weight_decay_end: float | None = field(default=0.4)
    min_lr_ratio: float = field(default=1e-3)
    warmup_start_lr_ratio: float = field(default=0.2)
    warmup_steps: float = field(default=40 / 300, metadata={"help": "Warmup steps, or a fraction if < 1."})
    max_grad_norm: float = field(default=0.0)
    schedule_step_offset: int = field(
        default=1, metadata={"help": "The original calls scheduler.step() before optimizer.step(): step k uses k + 1."}
    )
    teacher_momentum: float = field(default=0.996)
    teacher_momentum_end: float = field(default=1.0)
    teacher_momentum_schedule: str = field(default="linear")


@dataclass
class VicreglTrainingArguments(MimPretrainingArguments):
    """VICRegL's recipe (the original README's training commands) as defaults. lr = `base_learning_rate` x global batch / 256, linear warmup
    from 0 then cosine to `min_lr_ratio` (0.001) of it, set per step; no gradient clipping. Optimizer by backbone
    (`vicregl_optimizer="auto"`): LARS for ResNet (momentum 0.9, eta 1e-3, weight decay `lars_weight_decay` 1e-6 -
    the original hard-codes it - and no decay or adaptation of 1-D parameters), AdamW for ConvNeXt ((0.9, 0.999),
    `weight_decay` 0.05 on parameters with more than one dimension)."""

    vicregl_optimizer: str = field(default="auto", metadata={"help": "'auto' (LARS for ResNet), 'lars' or 'adamw'."})
    learning_rate: float = field(
        default=0.0, metadata={"help": "Absolute peak lr; 0 (default) = base_learning_rate x global batch / 256."}
    )
    base_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "lr per 256 images; the lr is this x global batch / 256. Default: 0.3 with LARS (README ResNet-50 "
            "single node), 7.5e-4 with AdamW (README ConvNeXt). A positive --learning_rate is used as is instead."
        },
    )
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on 1-D parameters)."})
    lars_weight_decay: float = field(default=1e-6, metadata={"help": "LARS weight decay (not on 1-D parameters)."})
    lars_momentum: float = field(default=0.9)
    lars_eta: float = field(default=1e-3, metadata={"help": "LARS trust coefficient."})
    min_lr_ratio: float = field(default=1e-3, metadata={"help": "Final lr / peak lr (the original's end_lr_ratio)."})
    warmup_steps: float = field(
        default=0.1, metadata={"help": "Warmup steps, or a fraction if < 1 (10 of 100 epochs)."}
    )
    max_grad_norm: float = field(default=0.0, metadata={"help": "VICRegL clips no gradients."})
    sync_batch_norm: bool = field(
        default=True, metadata={"help": "Convert BatchNorm to SyncBatchNorm under multi-process GPU training."}
    )


@dataclass
class CaeTrainingArguments(MimPretrainingArguments):
    """CAE's recipe (the CAE pretraining scripts) as defaults, v1 and v2 alike: AdamW (0.9, 0.999), lr 1.5e-3 (absolute, not
    batch-scaled), linear warmup from 0 over 10 of 300 epochs (np.linspace, as the original's cosine_scheduler) then
    cosine to 1e-5, constant weight decay 0.05 (none on biases and 1-D parameters), gradient clipping at 3.0."""

    learning_rate: float = field(default=1.5e-3)
    weight_decay: float = field(default=0.05)
    min_lr_ratio: float = field(default=1e-5 / 1.5e-3, metadata={"help": "Final lr / peak lr (min_lr 1e-5)."})
    warmup_steps: float = field(default=10 / 300, metadata={"help": "Warmup steps, or a fraction if < 1."})
    max_grad_norm: float = field(default=3.0)
    linspace_warmup: bool = field(
        default=True,
        metadata={
            "help": "Warm up as the original's furnace/utils.py cosine_scheduler, np.linspace(0, peak, warmup_steps): "
            "the last warmup step reaches the peak. False: peak * step / warmup_steps, the peak one step later."
        },
    )
