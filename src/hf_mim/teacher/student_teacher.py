"""The student/EMA-teacher plumbing every EMA method's pretraining model shares (CAPI, I-JEPA, ...)."""

import torch
from transformers.utils import logging

from .ema import ema_update

logger = logging.get_logger(__name__)


class EmaTeacherMixin:
    """Mix into a `PreTrainedModel` that holds a student and a same-architecture EMA teacher.

    Subclasses name the two submodules (`student_attribute`, `teacher_attribute`) and call `init_teacher()` at the
    end of `__init__`. The teacher never trains (no gradients, always eval mode: no stochastic depth), starts as a
    copy of the student, is updated by `update_teacher(momentum)` after each optimizer step, and is copied from the
    student when a checkpoint has no teacher weights (e.g. a converted backbone release).
    """

    student_attribute: str = "student"
    teacher_attribute: str = "teacher"

    @property
    def student_module(self):
        return getattr(self, self.student_attribute)

    @property
    def teacher_module(self):
        return getattr(self, self.teacher_attribute)

    def init_teacher(self) -> None:
        self.teacher_module.requires_grad_(False)
        self.copy_student_to_teacher()
        self._after_load()

    def _after_load(self) -> None:
        """Hook: re-apply what loading may undo (e.g. frozen tables)."""

    @torch.no_grad()
    def copy_student_to_teacher(self) -> None:
        for teacher_param, student_param in zip(self.teacher_module.parameters(), self.student_module.parameters()):
            teacher_param.copy_(student_param)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        if any(key.startswith(f"{cls.teacher_attribute}.") for key in info["missing_keys"]):
            logger.info("Checkpoint has no %s weights: initialising it from the student.", cls.teacher_attribute)
            model.copy_student_to_teacher()
        model._after_load()
        return (model, info) if wants_info else model

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher_module.eval()
        return self

    def update_teacher(self, momentum: float) -> None:
        """EMA update, outside autocast (the trainer calls it after the optimizer step), on the parameters' own dtype.

        Train with `--bf16` (autocast: parameters, so teacher and update, stay float32). A teacher whose parameters
        are themselves bfloat16 / float16 (a model cast to half precision, DeepSpeed's bf16 mode) cannot follow: a
        step (1 - m) * (student - teacher) below half the spacing of its values rounds away (measured on a tiny CAPI:
        two updates at m = 0.996 towards a student 1e-4 away change 0.09 % of a bfloat16 teacher's values, 99.3 % of
        a float32 one's); a warning says so once."""
        if not getattr(self, "_warned_half_precision_teacher", False):
            dtype = next((p.dtype for p in self.teacher_module.parameters() if p.is_floating_point()), torch.float32)
            if torch.finfo(dtype).bits < 32:
                logger.warning(
                    "The EMA teacher's parameters are %s: updates smaller than its rounding step are lost, and the "
                    "teacher may not move at all. Keep the parameters in float32 and train with --bf16 (autocast).",
                    dtype,
                )
            self._warned_half_precision_teacher = True
        ema_update(self.teacher_module, self.student_module, momentum)
