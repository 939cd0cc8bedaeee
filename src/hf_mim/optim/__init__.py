"""Optimizers the published recipes need and torch does not ship, and the schedules every trainer shares."""

from .lars import LARS
from .schedules import linear, warmup_then_cosine

__all__ = ["LARS", "linear", "warmup_then_cosine"]
