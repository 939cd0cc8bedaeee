from .ema import create_teacher, ema_update, paired_tensors
from .student_teacher import EmaTeacherMixin

__all__ = ["EmaTeacherMixin", "create_teacher", "ema_update", "paired_tensors"]
