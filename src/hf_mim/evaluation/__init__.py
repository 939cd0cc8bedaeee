"""Evaluation protocols for frozen hf_mim backbones."""

from .knn import extract_features, knn_accuracy, knn_classify
from .segmentation import (
    FeatureScaler,
    FrozenBackboneSegmenter,
    LinearSegmentationHead,
    PatchLogisticRegression,
    SegmentationComputeMetrics,
    SegmentationMetrics,
    argmax_logits,
    dense_features,
    fit_logistic_regression,
    knn_segment,
    labelled_prediction_grid,
    patch_feature_bank,
    patch_labels,
    prediction_grid,
    resize_concat,
    upsample_patch_scores,
)

__all__ = [
    "FeatureScaler",
    "FrozenBackboneSegmenter",
    "LinearSegmentationHead",
    "PatchLogisticRegression",
    "SegmentationComputeMetrics",
    "SegmentationMetrics",
    "argmax_logits",
    "dense_features",
    "extract_features",
    "fit_logistic_regression",
    "knn_accuracy",
    "knn_classify",
    "knn_segment",
    "labelled_prediction_grid",
    "patch_feature_bank",
    "patch_labels",
    "prediction_grid",
    "resize_concat",
    "upsample_patch_scores",
]
