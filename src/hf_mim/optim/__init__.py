"""Optimizers the published recipes need and torch does not ship."""

from .lars import LARS

__all__ = ["LARS"]
