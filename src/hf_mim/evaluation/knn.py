"""k-NN evaluation of frozen backbones (DINO protocol): extract global features, then classify each test image by a
temperature-weighted vote of its `k` most cosine-similar training images.

Typical use::

    train_x = extract_features(model, train_pixel_values)
    test_x = extract_features(model, test_pixel_values)
    accuracy = knn_accuracy(train_x, train_y, test_x, test_y, k=20, temperature=0.07)
"""

import inspect
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from ..data.skipped import SkippedFiles, readable_part

POOLINGS = ("pooler", "mean_patch")


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _accepts_kwarg(model: torch.nn.Module, name: str) -> bool:
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters


def _pool(outputs, pooling: str) -> torch.Tensor:
    if pooling == "pooler":
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is None:
            raise ValueError("pooling='pooler' needs a model whose outputs carry a `pooler_output`.")
        return pooled.flatten(1)
    # "mean_patch": mean over the patch tokens of the feature map, else over every token of last_hidden_state.
    hidden = getattr(outputs, "last_hidden_state", None)
    feature_map = getattr(outputs, "feature_map", None)
    if feature_map is not None:
        if feature_map.ndim == 3:  # (B, N, D)
            return feature_map.mean(dim=1)
        if feature_map.ndim == 4:
            # Token models: the width is last_hidden_state's last dim. Convolutional models (VICRegL) return a
            # channels-first last_hidden_state and a channels-last feature_map: the feature map is channels last.
            hidden_size = hidden.shape[-1] if hidden is not None and hidden.ndim == 3 else None
            if (
                hidden_size is not None
                and feature_map.shape[-1] != hidden_size
                and feature_map.shape[1] == hidden_size
            ):
                return feature_map.mean(dim=(2, 3))  # channels first (B, D, h, w)
            return feature_map.mean(dim=(1, 2))  # channels last (B, h, w, D), as CapiModel returns
        raise ValueError(f"Unsupported feature_map of shape {tuple(feature_map.shape)}.")
    if hidden is None:
        raise ValueError(
            "pooling='mean_patch' needs a model whose outputs carry `feature_map` or `last_hidden_state`."
        )
    return hidden.mean(dim=1)


def _iter_batches(inputs, batch_size: int, skipped: SkippedFiles | None = None):
    """Yield (pixel_values, labels or None) from a tensor, or from an iterable of dicts / tuples / tensors. Dict
    batches of a `SkippingCollator` lose their unreadable examples (recorded in `skipped`); a batch in which every
    image failed is skipped."""
    if isinstance(inputs, torch.Tensor):
        if inputs.ndim != 4:
            raise ValueError(f"Expected pixel values of shape (N, C, H, W), got {tuple(inputs.shape)}.")
        for start in range(0, inputs.shape[0], batch_size):
            yield inputs[start : start + batch_size], None
        return
    if not isinstance(inputs, Iterable):
        raise TypeError(f"Expected a (N, C, H, W) tensor or an iterable of batches, got {type(inputs).__name__}.")
    for batch in inputs:
        if isinstance(batch, Mapping):
            batch = readable_part(batch, skipped)
            if batch is None:
                continue
            if "pixel_values" not in batch:
                raise KeyError(f"Batch has no 'pixel_values' (keys: {sorted(batch)}).")
            labels = batch.get("labels", batch.get("label"))
            yield batch["pixel_values"], labels
        elif isinstance(batch, list | tuple):
            yield batch[0], batch[1] if len(batch) > 1 else None
        elif isinstance(batch, torch.Tensor):
            yield batch, None
        else:
            raise TypeError(f"Unsupported batch type {type(batch).__name__}.")


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    pixel_values_iterable_or_dataloader,
    pooling: str = "pooler",
    device: torch.device | str | None = None,
    batch_size: int = 64,
    return_labels: bool = False,
    skipped: SkippedFiles | None = None,
):
    """Run a frozen `model` over images and return their (N, D) float32 features (on CPU).

    Args:
        model: an hf_mim backbone (e.g. `CapiModel`); it is put in eval mode for the pass and its training mode is
            restored afterwards.
        pixel_values_iterable_or_dataloader: a (N, C, H, W) tensor (split into `batch_size` chunks), or an iterable
            (e.g. a `DataLoader`) of dict batches with "pixel_values" and optionally "labels"; `(pixel_values,
            labels)` tuples and plain tensors are accepted too.
        pooling: "pooler" uses `outputs.pooler_output`; "mean_patch" averages the patch tokens of
            `outputs.feature_map` (or every token of `outputs.last_hidden_state` when there is no feature map).
        device: where to run the model; defaults to the device of its parameters (the model is not moved).
        batch_size: batch size used when a tensor is given.
        return_labels: also return the (N,) int64 labels collected from the batches (`None` when none were given).
        skipped: where the unreadable files of `SkippingCollator` batches are recorded (`hf_mim.data.skipped`):
            those examples are left out (N counts the readable ones, labels stay aligned), and a batch in which every
            image failed is skipped.

    Returns:
        `features`, or `(features, labels)` with `return_labels=True`.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    device = torch.device(device) if device is not None else _model_device(model)
    kwargs = {"return_dict": True}
    if pooling == "mean_patch" and _accepts_kwarg(model, "compute_global_representation"):
        kwargs["compute_global_representation"] = False  # CAPI: skip the predictor block we do not need

    was_training = model.training
    model.eval()
    features, labels, missing_labels = [], [], False
    try:
        for pixel_values, batch_labels in _iter_batches(pixel_values_iterable_or_dataloader, batch_size, skipped):
            outputs = model(pixel_values=pixel_values.to(device), **kwargs)
            features.append(_pool(outputs, pooling).float().cpu())
            if batch_labels is None:
                missing_labels = True
            else:
                labels.append(torch.as_tensor(batch_labels).reshape(-1).long().cpu())
    finally:
        model.train(was_training)

    if not features:
        raise ValueError("No images to extract features from.")
    features = torch.cat(features)
    if not return_labels:
        return features
    labels = None if missing_labels else torch.cat(labels)
    return features, labels


@torch.no_grad()
def extract_pooled_features(
    model: torch.nn.Module, pixel_values: torch.Tensor, poolings=POOLINGS, batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """{pooling: (N, D) float32 features} of several poolings from ONE forward pass per batch (a probe that wants
    both the pooled and the mean patch feature pays for one pass, not two). Same poolings as `extract_features`."""
    unknown = set(poolings) - set(POOLINGS)
    if unknown:
        raise ValueError(f"poolings must be among {POOLINGS}, got {sorted(unknown)}.")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    features = {pooling: [] for pooling in poolings}
    try:
        for pixel_values_batch, _ in _iter_batches(pixel_values, batch_size):
            outputs = model(pixel_values=pixel_values_batch.to(device), return_dict=True)
            for pooling in poolings:
                features[pooling].append(_pool(outputs, pooling).float().cpu())
    finally:
        model.train(was_training)
    return {pooling: torch.cat(chunks) for pooling, chunks in features.items()}


def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int = 20,
    temperature: float | None = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """DINO-style weighted k-NN: predict the class of each test feature from its `k` nearest training features.

    Features are L2-normalised, so similarity is cosine similarity. Each of the `k` neighbours votes for its label
    with weight `exp(similarity / temperature)` (`temperature=None`: an unweighted majority vote); the class with the
    largest total wins, ties going to the lowest class index. The (test x train) similarity matrix is built
    `chunk_size` test rows at a time, so memory stays O(chunk_size * N_train).

    Returns:
        (N_test,) int64 predicted labels, on the device of `train_features`.
    """
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError("train_features and test_features must be 2-D (N, D).")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"Feature sizes differ: train {train_features.shape[1]}, test {test_features.shape[1]}.")
    train_labels = torch.as_tensor(train_labels).reshape(-1).long().to(train_features.device)
    if train_labels.shape[0] != train_features.shape[0]:
        raise ValueError(f"{train_features.shape[0]} train features but {train_labels.shape[0]} train labels.")
    if train_features.shape[0] == 0:
        raise ValueError("Need at least one training feature.")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}.")
    if temperature is not None and temperature <= 0:
        raise ValueError(f"temperature must be positive (or None for a majority vote), got {temperature}.")
    if train_labels.min() < 0:
        raise ValueError("Labels must be non-negative class indices.")
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    elif int(train_labels.max()) >= num_classes:
        raise ValueError(f"A train label is >= num_classes ({num_classes}).")

    device = train_features.device
    train = F.normalize(train_features.float(), dim=1)
    k = min(k, train.shape[0])
    predictions = []
    for start in range(0, test_features.shape[0], chunk_size):
        test = F.normalize(test_features[start : start + chunk_size].to(device).float(), dim=1)
        similarity = test @ train.T  # (chunk, N_train)
        top_similarity, top_index = similarity.topk(k, dim=1)
        neighbour_labels = train_labels[top_index]
        if temperature is None:
            weights = torch.ones_like(top_similarity)
        else:
            # Subtracting the row maximum rescales a row's weights uniformly (same vote), and never overflows.
            weights = ((top_similarity - top_similarity[:, :1]) / temperature).exp()
        votes = torch.zeros(test.shape[0], num_classes, device=device).scatter_add_(1, neighbour_labels, weights)
        predictions.append(votes.argmax(dim=1))
    if not predictions:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.cat(predictions)


def knn_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float | None = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy (in [0, 1]) of `knn_classify` on the test set, via torchmetrics' `MulticlassAccuracy`
    (`average="micro"`)."""
    train_labels = torch.as_tensor(train_labels).reshape(-1).long()
    test_labels = torch.as_tensor(test_labels).reshape(-1).long()
    if test_labels.shape[0] != test_features.shape[0]:
        raise ValueError(f"{test_features.shape[0]} test features but {test_labels.shape[0]} test labels.")
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max() if test_labels.numel() else 0)) + 1
    predictions = knn_classify(
        train_features, train_labels, test_features, k=k, temperature=temperature, num_classes=num_classes,
        chunk_size=chunk_size,
    )  # fmt: skip
    metric = MulticlassAccuracy(num_classes=num_classes, average="micro").to(predictions.device)
    return float(metric(predictions, test_labels.to(predictions.device)))


__all__ = ["extract_features", "extract_pooled_features", "knn_accuracy", "knn_classify"]
