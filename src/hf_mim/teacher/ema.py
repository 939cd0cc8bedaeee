"""EMA teachers: the only place that knows how to create and update a teacher, for every parallel layout.

update: teacher <- m * teacher + (1 - m) * student, one fused `torch._foreach_lerp_` over all tensors, called by the
trainer after each (non-skipped) optimizer step.

* Plain / DDP: parameters are full replicas; lerp them directly (DDP keeps replicas identical, so do the teachers).
* FSDP2 (`fully_shard`): parameters are DTensors. The teacher must be sharded exactly like the student (the same
  wrap policy applies to its blocks, which are the same classes); the update runs on the local shards only.
* DeepSpeed ZeRO-3: a parameter's `.data` is an empty placeholder outside forward (an in-place update on it does
  nothing — the measured trap). Each rank's slice lives in `param.ds_tensor`; student and teacher tensors of equal
  shape are partitioned identically, so the update is a shard-local lerp of `ds_tensor`s. We chose this over a
  separate DeepSpeed engine for the teacher: no extra engine or optimizer state, no all-gather per step, and the
  teacher is saved with the model (gathered by ZeRO's 16-bit/fp32 consolidation), so checkpoints hold it in full.
  Second trap, measured here: ZeRO-3 keeps small parameters (< `stage3_param_persistence_threshold`, norms and
  biases of a ViT-L, everything in a tiny model) *persistent*: a full copy stays in `.data` and forward never
  re-gathers it; the optimizer refreshes the student's copies after each step, but nothing would refresh the
  teacher's. So for persistent (available) parameters the full copies are updated too.
"""

import torch
from torch import nn


def _local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    ds_tensor = getattr(tensor, "ds_tensor", None)
    if ds_tensor is not None:  # ZeRO-3 partition owned by this rank
        return ds_tensor
    to_local = getattr(tensor, "to_local", None)
    if to_local is not None:  # FSDP2 DTensor shard
        return to_local()
    return tensor.data


def _zero3_full_copy(tensor: torch.Tensor) -> torch.Tensor | None:
    """The full `.data` of a ZeRO-3 parameter that is currently materialised (persistent), else None."""
    if getattr(tensor, "ds_tensor", None) is None:
        return None
    try:  # a try block: remote-code checks (transformers' `check_imports`) skip it, deepspeed stays optional
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    except ImportError:  # a ds_tensor without deepspeed importable: not a ZeRO-3 parameter we can read
        return None

    if tensor.ds_status == ZeroParamStatus.AVAILABLE and tensor.data.numel() == tensor.ds_numel:
        return tensor.data
    return None


def paired_tensors(teacher: nn.Module, student: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Matching (teacher, student) local tensors: parameters by name (buffers are analytic and never change).

    Under ZeRO-3, materialised full copies of persistent parameters are paired as well (see the module docstring).
    """
    student_params = dict(student.named_parameters())
    teacher_params = dict(teacher.named_parameters())
    if student_params.keys() != teacher_params.keys():
        missing = sorted(student_params.keys() ^ teacher_params.keys())
        raise ValueError(f"Teacher and student parameters differ: {missing[:10]}")
    teacher_list, student_list = [], []
    for name, student_param in student_params.items():
        teacher_local, student_local = _local_tensor(teacher_params[name]), _local_tensor(student_param)
        if teacher_local.shape != student_local.shape:
            raise ValueError(
                f"Teacher and student are sharded differently at {name}: {tuple(teacher_local.shape)} vs "
                f"{tuple(student_local.shape)}. Shard the teacher with the same policy as the student."
            )
        teacher_list.append(teacher_local)
        student_list.append(student_local)
        teacher_full, student_full = _zero3_full_copy(teacher_params[name]), _zero3_full_copy(student_param)
        if teacher_full is not None:
            if student_full is None:
                raise RuntimeError(f"ZeRO-3: teacher parameter {name} is persistent but the student's is not.")
            teacher_list.append(teacher_full)
            student_list.append(student_full)
    return teacher_list, student_list


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, on this rank's shards."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    if momentum == 1.0:
        return
    teacher_tensors, student_tensors = paired_tensors(teacher, student)
    torch._foreach_lerp_(
        teacher_tensors, [s.to(t.dtype) for s, t in zip(student_tensors, teacher_tensors)], 1.0 - momentum
    )
