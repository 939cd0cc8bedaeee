from .ema import ema_update, paired_tensors
from .student_teacher import EmaTeacherMixin

__all__ = ["EmaTeacherMixin", "ema_update", "paired_tensors"]
