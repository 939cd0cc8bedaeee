"""The student/EMA-teacher plumbing every EMA method's pretraining model shares (CAPI, I-JEPA, ...)."""

import torch
from transformers.utils import logging

from ..losses import effective_rank
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
        ema_update(self.teacher_module, self.student_module, momentum)

    @staticmethod
    def feature_health(pooled_features: torch.Tensor) -> dict[str, float]:
        """Effective rank and mean per-dimension std of pooled features: both fall towards 1 / 0 under collapse."""
        return {
            "effective_rank": effective_rank(pooled_features).item(),
            "feature_std": pooled_features.float().std(dim=0).mean().item(),
        }
