"""Evaluation protocols for frozen hf_mim backbones."""

from .knn import extract_features, knn_accuracy, knn_classify

__all__ = ["extract_features", "knn_accuracy", "knn_classify"]
