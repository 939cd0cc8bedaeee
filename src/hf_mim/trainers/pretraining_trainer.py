"""`MimPretrainingTrainer`: a `transformers.Trainer` for self-supervised objectives.

What it adds to Trainer, once for every method:
* parameter groups from `parameter_groups(model)` (lr and weight-decay multipliers per group);
* lr: warmup + (truncated) cosine; weight decay: constant or cosine; teacher momentum schedule;
* the EMA teacher update after every optimizer step that was not skipped (via `model.update_teacher(m)`);
* logging of the loss parts the model's output names (its `loss_parts`), the momentum, and feature health
  (effective rank, feature std);
* skipped (undecodable) images counted across ranks and reported at the end;
* `create_model_card` (called by `push_to_hub`) writes hf_mim's card and the remote-code bundle (`ModelCardMixin`);
* augmentations and masks as a pure function of (seed, epoch, example index) (`hf_mim.data.positional`), so a run
  resumed from any step, mid-epoch included, trains exactly like the uninterrupted one; an undecodable image is
  replaced by the next decodable one and its file named once;
* a NaN/inf loss or gradient norm stops training before the optimizer step (under DeepSpeed, whose engine steps
  inside backward: before anything is saved), and weights are checked before every save, so no checkpoint with broken
  weights is written; the error names the newest checkpoint read back and found finite. Loss and gradients are
  checked every `nan_check_steps` steps and always on the step before a checkpoint;
* atomic checkpoints (`checkpoints.py`): written under `.incomplete/` and renamed into place when complete; a failed
  write (full disk) raises `CheckpointWriteError` with the earlier checkpoints intact.
"""

import json
import math
import os
import shutil
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import IterableDataset
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import has_length, rotate_checkpoints
from transformers.utils import logging

from ..allocator import tune_glibc_malloc
from ..data.collators import mark_length_dynamic
from ..data.positional import PositionalDataset
from ..data.skipped import SkippedFiles
from ..losses import effective_rank
from ..optim.schedules import linear, warmup_then_cosine
from .checkpoints import (
    RUN_SETTINGS,
    STAGING_DIR,
    clear_staging,
    last_good_checkpoint,
    latest_complete_checkpoint,
    non_finite_parameters,
    run_settings,
)
from .feature_health import warn_if_collapsing
from .model_card import ModelCardMixin

logger = logging.get_logger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss, the gradient norm or the weights became NaN or infinite."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (e.g. a full disk); nothing of it was kept, earlier checkpoints are intact."""


class _ScheduleCallback(TrainerCallback):
    """Weight-decay schedule before each step; EMA teacher update after each optimizer step."""

    def __init__(self, trainer: "MimPretrainingTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        # Before the epoch's DataLoader iterator exists: its worker processes copy the dataset, epoch included.
        # state.epoch is the float progress (e.g. 1.6 after resuming mid-epoch); its integer part is the epoch.
        if self.trainer.positional_dataset is not None:
            self.trainer.positional_dataset.set_epoch(math.floor(state.epoch + 1e-9))
        self.trainer.draw_as_a_new_loader_iterator()

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer.apply_weight_decay_schedule(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer.accelerator.optimizer_step_was_skipped:
            return  # inf gradients under fp16: the original skips the EMA too
        self.trainer.update_teacher(state.global_step - 1)


def reduce_fsdp2_gradients_in_fp32(accelerator_state, bf16: bool) -> bool:
    """Under FSDP2 with --bf16, keep bf16 parameters for compute but reduce-scatter gradients in fp32.

    accelerate maps `mixed_precision: bf16` to `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=bf16)` and its
    config has no key for the reduce dtype; summing N ranks' gradients in bf16 (8 mantissa bits) loses the small
    ones. The policy is read when the model is prepared, so setting it before `train()` is enough. Returns whether
    it changed anything."""
    plugin = getattr(accelerator_state, "fsdp_plugin", None)
    if not bf16 or plugin is None or int(getattr(plugin, "fsdp_version", 1) or 1) != 2:
        return False
    from torch.distributed.fsdp import MixedPrecisionPolicy

    old = plugin.mixed_precision_policy
    plugin.mixed_precision_policy = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16,
        reduce_dtype=torch.float32,
        output_dtype=getattr(old, "output_dtype", None),
        cast_forward_inputs=getattr(old, "cast_forward_inputs", True),
    )
    return True


class MimPretrainingTrainer(ModelCardMixin, Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        reduce_fsdp2_gradients_in_fp32(self.accelerator.state, self.args.bf16)
        if getattr(self.args, "tune_malloc", False):
            tune_glibc_malloc()  # before the first step allocates anything large
        self.add_callback(_ScheduleCallback(self))
        self._parts: dict[str, torch.Tensor] = {}
        self._parts_count = 0
        self._last_pooled: torch.Tensor | None = None
        self._last_momentum: float | None = None
        self.num_skipped_images = 0
        self.skipped = SkippedFiles()  # each unreadable file once, in the order met
        self.positional_dataset: PositionalDataset | None = None
        if self.args.augmentation_rng not in ("position", "global"):
            raise ValueError(f"augmentation_rng must be 'position' or 'global', got {self.args.augmentation_rng!r}")

    # ------------------------------------------------------------------ data
    def get_train_dataloader(self):
        """Map-style data goes through `PositionalDataset`: refilled undecodable images, and (augmentation_rng
        "position") draws keyed by (seed, epoch, index) instead of the global RNG's running state."""
        dataset = self.train_dataset
        if dataset is None or isinstance(dataset, IterableDataset) or not has_length(dataset):
            return super().get_train_dataloader()  # streamed data: drawn in stream order (see README)
        # Persistent workers keep their copy of the dataset across epochs: PositionalDataset holds its epoch in shared
        # memory, so they still draw each epoch's augmentations.
        positional = self.args.augmentation_rng == "position"
        global_batch = self._train_batch_size * self.args.world_size
        if self.args.dataloader_drop_last and len(dataset) < global_batch:
            raise ValueError(
                f"The training set has {len(dataset)} images, fewer than one batch ({global_batch} over all ranks), "
                "and the last short batch is dropped (--dataloader_drop_last): lower the batch size or add images."
            )
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        self.positional_dataset = PositionalDataset(dataset, seed=seed, refill=True, seeded=positional)
        self._train_loader = self._get_dataloader(
            dataset=self.positional_dataset,
            description="Training",
            batch_size=self._train_batch_size,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )
        return self._train_loader

    def draw_as_a_new_loader_iterator(self) -> None:
        """Called as an epoch begins. A DataLoader draws its workers' base seed from torch's global RNG whenever it
        creates an iterator: every epoch with workers 0 or non-persistent workers, only the first time with persistent
        ones. For an epoch that will reuse persistent workers the same number is drawn here, so the global RNG (the
        model's: drop path) follows one sequence whatever the workers, and a resumed run, whose loader starts its
        workers at a later epoch, stays exact."""
        loader = getattr(self, "_train_loader", None)
        base = getattr(loader, "base_dataloader", loader)  # accelerate's DataLoaderShard wraps a torch DataLoader
        if base is None or not getattr(base, "persistent_workers", False) or base.num_workers == 0:
            return
        if getattr(base, "_iterator", None) is not None:  # an earlier epoch started the workers: no new iterator
            torch.empty((), dtype=torch.int64).random_(generator=base.generator)

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self, model: nn.Module) -> list[dict]:
        """Default groups: no weight decay on biases, norms and tokens. Override for method-specific multipliers.

        Each group: {"params", "lr_multiplier", "weight_decay_multiplier"} and optionally an absolute
        "weight_decay" (then not scheduled)."""
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if self.is_no_decay(name, param) else decay).append(param)
        return [
            {"params": decay, "lr_multiplier": 1.0, "weight_decay_multiplier": 1.0},
            {"params": no_decay, "lr_multiplier": 1.0, "weight_decay_multiplier": 0.0},
        ]

    @staticmethod
    def is_no_decay(name: str, param: nn.Parameter) -> bool:
        lowered = name.lower()
        return (
            param.ndim <= 1
            or lowered.endswith(".bias")
            or "norm" in lowered
            or "token" in lowered
            or "position_embeddings" in lowered
        )

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        groups = []
        for group in self.parameter_groups(model):
            if not group["params"]:
                continue
            group = dict(group)
            group["lr"] = self.args.learning_rate * group.get("lr_multiplier", 1.0)
            if "weight_decay" in group:
                group["scheduled_weight_decay"] = False
            else:
                group["weight_decay"] = self.args.weight_decay * group.get("weight_decay_multiplier", 1.0)
                group["scheduled_weight_decay"] = True
            groups.append(group)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            optimizer = optimizer or self.optimizer
            warmup = self.args.get_warmup_steps(num_training_steps)
            args = self.args

            options = self.schedule_options()

            def factor(step: int) -> float:
                return warmup_then_cosine(
                    step + args.schedule_step_offset,
                    1.0,
                    args.min_lr_ratio,
                    num_training_steps,
                    warmup,
                    args.warmup_start_lr_ratio,
                    args.lr_truncate_cos,
                    **options,
                )

            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            self._num_training_steps = num_training_steps
        return self.lr_scheduler

    def schedule_options(self) -> dict:
        """Extra keyword arguments of `warmup_then_cosine` for the lr and teacher-momentum schedules (a method's
        original schedule shape, e.g. CAPI's `linspace_warmup`)."""
        return {}

    def weight_decay_at(self, step: int) -> float:
        args = self.args
        if args.weight_decay_end is None:
            return args.weight_decay
        total = getattr(self, "_num_training_steps", None) or max(self.state.max_steps, 1)
        return warmup_then_cosine(step + args.schedule_step_offset, args.weight_decay, args.weight_decay_end, total)

    def apply_weight_decay_schedule(self, step: int) -> None:
        if self.optimizer is None:
            return
        value = self.weight_decay_at(step)
        for group in self.optimizer.param_groups:
            if group.get("scheduled_weight_decay", False):
                group["weight_decay"] = value * group.get("weight_decay_multiplier", 1.0)

    def momentum_warmup_steps(self, total: int) -> int:
        return self.args.teacher_momentum_warmup_steps

    def teacher_momentum_at(self, step: int) -> float:
        args = self.args
        total = getattr(self, "_num_training_steps", None) or max(self.state.max_steps, 1)
        warmup = self.momentum_warmup_steps(total)
        if args.teacher_momentum_schedule == "linear":
            if step < warmup:
                return linear(step, args.teacher_momentum_warmup_start, args.teacher_momentum, warmup)
            return linear(step - warmup, args.teacher_momentum, args.teacher_momentum_end, max(total - warmup, 1))
        return warmup_then_cosine(
            step,
            args.teacher_momentum,
            args.teacher_momentum_end,
            total,
            warmup,
            args.teacher_momentum_warmup_start,
            args.teacher_momentum_truncate_cos,
            **self.schedule_options(),
        )

    def update_teacher(self, step: int) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model, "update_teacher"):
            momentum = self.teacher_momentum_at(step)
            model.update_teacher(momentum)
            self._last_momentum = momentum

    # ------------------------------------------------------------------ loss, safety, logging
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs.loss
        with torch.no_grad():
            # The output names its loss parts (`loss_parts`); each is logged when present (not None), averaged over
            # the steps since the last log.
            for name in getattr(outputs, "loss_parts", ()):
                value = getattr(outputs, name, None)
                if value is not None:
                    value = value.detach().float()
                    self._parts[name] = self._parts.get(name, 0.0) + value
            self._parts_count += 1
            pooled = getattr(outputs, "pooled_features", None)
            if pooled is not None:
                self._last_pooled = pooled.detach().float()
        return (loss, outputs) if return_outputs else loss

    def _prepare_inputs(self, inputs):
        inputs = super()._prepare_inputs(inputs)
        if self.args.torch_compile:
            # Index lengths that change from batch to batch (I-JEPA's block sizes) are marked dynamic by the collator,
            # but the mark stays with its tensor: a copy out of a worker process or onto the accelerator loses it, and
            # dynamo would compile the first lengths as constants, then recompile once per length. Marked again here,
            # on the tensors the model gets: one compilation covers every length.
            for name in getattr(self.data_collator, "dynamic_lengths", ()):
                if torch.is_tensor(inputs.get(name)):
                    mark_length_dynamic(inputs[name])
        return inputs

    def training_step(self, model, inputs, num_items_in_batch=None):
        inputs.pop("num_skipped", None)
        self.record_skipped_files(inputs.pop("skipped_files", None) or ())
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._should_check_loss(self.state.global_step + 1):
            self._stop_unless_finite(loss.detach(), "loss", reduce=True)
        return loss

    def record_skipped_files(self, files) -> None:
        """Name each unreadable file once (the first time it fails, not every epoch) and count distinct files."""
        self.skipped.update(files)
        self.num_skipped_images = len(self.skipped)

    @property
    def skipped_files(self) -> list[str]:
        return list(self.skipped)

    def _get_grad_norm(self, model, grad_norm=None):
        # transformers computes the norm of every step's gradients here, before `optimizer.step()`: a NaN gradient
        # with a finite loss (seen in practice) stops training before it reaches the weights.
        grad_norm = super()._get_grad_norm(model, grad_norm)
        if grad_norm is not None and self._should_check_loss(self.state.global_step + 1):
            value = grad_norm if torch.is_tensor(grad_norm) else torch.tensor(float(grad_norm))
            self._stop_unless_finite(value.detach().float(), "gradient norm", reduce=False)
        return grad_norm

    def _stop_unless_finite(self, value: torch.Tensor, what: str, reduce: bool) -> None:
        finite = torch.isfinite(value).all().float().reshape(1)
        if reduce and self.accelerator.num_processes > 1:
            finite = self.accelerator.reduce(finite, reduction="min")
        if finite.item() < 1:
            when = (
                "DeepSpeed's engine has already applied this step, but nothing was saved"
                if self.is_deepspeed_enabled
                else "training stopped before the optimizer step, nothing was saved"
            )
            raise NonFiniteLossError(
                f"Non-finite {what} ({float(value.float().reshape(-1)[0])}) at step {self.state.global_step + 1}: "
                f"{when}. {self.last_good_checkpoint_message()}"
            )

    def last_good_checkpoint_message(self) -> str:
        good = last_good_checkpoint(self.args.output_dir) if self.args.output_dir else None
        return f"Last good checkpoint (weights read back, all finite): {good or 'none yet'}."

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, trial):
        """Check the weights, write the checkpoint under `.incomplete/`, and rename it into place once complete."""
        step = self.state.global_step
        bad = non_finite_parameters(self.accelerator.unwrap_model(self.model))
        flag = torch.tensor([float(bool(bad))], device=self.args.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="max")
        if flag.item() > 0:
            raise NonFiniteLossError(
                f"Non-finite weights at step {step} ({', '.join(bad[:5]) or 'on another rank'}): checkpoint-{step} "
                f"was not written. {self.last_good_checkpoint_message()}"
            )
        run_dir = Path(self._get_output_dir(trial=trial))
        staging = run_dir / STAGING_DIR
        if self.args.should_save:
            clear_staging(run_dir)
        self.accelerator.wait_for_everyone()
        output_dir = self.args.output_dir
        try:
            # Trainer names the folder after output_dir: pointing it at the staging area for the duration of the
            # save is the one change needed; everything (weights, optimizer, RNG states, trainer state) lands there.
            self.args.output_dir = str(staging)
            super()._save_checkpoint(model, trial)
            if self.args.should_save:
                settings = staging / f"checkpoint-{step}" / RUN_SETTINGS
                settings.write_text(json.dumps(run_settings(self.args), indent=2))
        except Exception as error:
            if self.args.should_save:
                clear_staging(run_dir)
            raise CheckpointWriteError(
                f"Writing checkpoint-{step} failed ({type(error).__name__}: {error}); nothing of it was kept and "
                f"the earlier checkpoints are intact. Free space (or fix the error) and run the same command again: "
                f"it resumes from {self._newest_checkpoint(run_dir) or 'the start'}."
            ) from error
        finally:
            self.args.output_dir = output_dir
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            final = run_dir / f"checkpoint-{step}"
            if final.exists():  # an earlier run's folder of the same step: replaced by this complete one
                shutil.rmtree(final)
            os.replace(staging / final.name, final)
            clear_staging(run_dir)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    @staticmethod
    def _newest_checkpoint(run_dir: Path) -> str | None:
        newest = latest_complete_checkpoint(run_dir)
        return str(newest) if newest else None

    def _should_check_loss(self, step: int) -> bool:
        """Every `nan_check_steps` steps, and always on a step that is followed by a checkpoint or ends training, so
        no checkpoint is ever written from weights updated by a non-finite loss."""
        interval = self.args.nan_check_steps
        if not interval:
            return False
        saving = self.args.save_strategy == "steps" and self.args.save_steps and step % self.args.save_steps == 0
        last = self.state.max_steps and step >= self.state.max_steps
        return step % interval == 0 or bool(saving) or bool(last)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._parts_count:
            for name, total in self._parts.items():
                value = total / self._parts_count
                if self.accelerator.num_processes > 1:
                    value = self.accelerator.reduce(value.reshape(1), reduction="mean")
                logs[name] = round(float(value), 6)
            self._parts, self._parts_count = {}, 0
            if self._last_momentum is not None:
                logs["teacher_momentum"] = self._last_momentum
            if self.args.log_feature_health and self._last_pooled is not None:
                pooled = self._last_pooled
                if self.accelerator.num_processes > 1:
                    pooled = self.accelerator.gather(pooled)
            else:
                pooled = None
            # A batch with NaN/inf features has no spectrum: skip the metrics (the finite-loss checks stop the run).
            if pooled is not None and bool(torch.isfinite(pooled).all()):
                logs["effective_rank"] = round(float(effective_rank(pooled)), 4)
                logs["feature_std"] = round(float(pooled.std(dim=0).mean()), 6)
                warn_if_collapsing(logs, pooled.shape[0], pooled.shape[1], self.state.global_step)
            skipped = self.total_skipped_images()  # collective: every rank logs
            if skipped:
                logs["skipped_images"] = skipped
        super().log(logs, start_time)

    def all_skipped_files(self) -> SkippedFiles:
        """Every distinct unreadable file met on any rank (collective: every rank must call it)."""
        return self.skipped.gathered()

    def total_skipped_images(self) -> int:
        """Undecodable images skipped so far, summed over ranks."""
        count = torch.tensor([float(self.num_skipped_images)], device=self.args.device)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.reduce(count, reduction="sum")
        return int(count.item())


def bias_and_vector_groups(model: nn.Module) -> list[dict]:
    """Weight decay on every trainable tensor except biases and 1-D tensors (norms, layer scales): the groups of
    I-JEPA's `init_opt` and of CAE's optimizer factory (tokens and mask tokens, being 3-D, are decayed)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.endswith(".bias") or param.ndim == 1 else decay).append(param)
    return [
        {"params": decay, "lr_multiplier": 1.0, "weight_decay_multiplier": 1.0},
        {"params": no_decay, "lr_multiplier": 1.0, "weight_decay_multiplier": 0.0},
    ]


def steps_from_ratio(ratio: float, total: int) -> int:
    return math.ceil(ratio * total) if ratio > 0 else 0
