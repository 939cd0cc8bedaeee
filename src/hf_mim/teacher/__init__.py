from .ema import create_teacher, ema_update, paired_tensors

__all__ = ["create_teacher", "ema_update", "paired_tensors"]
