"""Semantic segmentation protocols for frozen (or fine-tuned) hf_mim backbones, shared by every method.

A backbone here is anything with `.channels` and `forward(pixel_values).feature_maps` (a tuple of (B, C_i, h_i, w_i)
maps), i.e. a transformers `BackboneMixin` model as `AutoBackbone.from_pretrained(folder, out_indices=[...])` gives.

Protocols:

* linear (VICRegL, `segmentation/models/linear_head.py` on mmseg): `LinearSegmentationHead` = mmseg's
  "resize_concat" of the selected maps (bilinear to the FIRST map's size, `align_corners=False`) -> BatchNorm2d
  (affine, trained; convert to SyncBatchNorm under DDP) -> dropout -> 1x1 conv; `FrozenBackboneSegmenter` runs the
  frozen backbone (eval mode, no gradient), upsamples the logits bilinearly to the labels and applies cross-entropy
  with `ignore_index` 255. Trainer-compatible (`forward(pixel_values, labels) -> SemanticSegmenterOutput`).
* k-NN (CAPI, `eval_segmentation.py`): every patch of the training images carries its MODAL pixel label
  (`patch_labels`); patches whose modal label is ignored are dropped. Each test patch is classified by its `k` most
  cosine-similar training patches (`knn_segment`) and the prediction is upsampled to the pixels (`upsample_patch_scores`:
  CAPI repeats the patch label over its pixels, `mode="nearest"`). Differences from CAPI: CAPI takes, per pixel, the
  mode of the `k` neighbours' labels at that pixel (it keeps the 14x14 pixel labels of every training patch) and
  uses an unweighted vote; here a neighbour votes with its patch's modal label, weighted by `exp(cos / T)` as in
  DINO's k-NN (`temperature=None` gives CAPI's unweighted vote).
* logistic regression (CAPI's second classifier, cuML L-BFGS `LogisticRegression`): `fit_logistic_regression` fits a
  multinomial logistic regression on standardised patch features and modal patch labels with torch's full-batch
  L-BFGS (strong Wolfe line search), minimising `mean cross-entropy + ||W||^2 / (2 C N)` (sklearn's / cuML's
  objective divided by `C N`; the bias is not penalised). CAPI searches C in 10^linspace(-6, 5, 8) on a held-out 10 %;
  here C is one argument.

`SegmentationMetrics` accumulates a torchmetrics `MulticlassConfusionMatrix` (pixels labelled `ignore_index` are left
out; the state is summed across ranks by torchmetrics) and derives per-class IoU, mean IoU, pixel accuracy and mean
class accuracy. A class that is absent from both predictions and labels has IoU NaN and is left out of the mean
(mmseg's, `evaluate`'s `mean_iou`'s and sklearn's macro `jaccard_score`'s convention); torchmetrics'
`MulticlassJaccardIndex(average=None)` would score it 0 instead.
"""

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix
from transformers.modeling_outputs import SemanticSegmenterOutput

from ..data.skipped import SkippedFiles, readable_part

IGNORE_INDEX = 255


def resize_concat(feature_maps: Sequence[torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
    """mmseg's `input_transform="resize_concat"`: every (B, C_i, h_i, w_i) map resized bilinearly
    (`align_corners=False`) to `size` (default: the first map's), concatenated to (B, sum C_i, h, w)."""
    if len(feature_maps) == 0:
        raise ValueError("Need at least one feature map.")
    for feature_map in feature_maps:
        if feature_map.ndim != 4:
            raise ValueError(f"Feature maps must be (B, C, h, w), got {tuple(feature_map.shape)}.")
    size = tuple(size) if size is not None else tuple(feature_maps[0].shape[-2:])
    resized = [
        fm if tuple(fm.shape[-2:]) == size else F.interpolate(fm, size=size, mode="bilinear", align_corners=False)
        for fm in feature_maps
    ]
    return resized[0] if len(resized) == 1 else torch.cat(resized, dim=1)


class LinearSegmentationHead(nn.Module):
    """VICRegL's linear segmentation head: resize_concat -> BatchNorm2d (affine) -> dropout -> 1x1 conv.

    Args:
        in_channels: channels of each feature map, in the order the backbone returns them (`backbone.channels`).
        num_labels: number of classes.
        dropout: `Dropout2d` probability before the classifier (mmseg's `dropout_ratio`: 0 for VICRegL's ConvNeXt
            configs, 0.1 for its ResNet-50 config).

    `forward(feature_maps)` returns (B, num_labels, h, w) logits at the first map's resolution. The classifier is
    initialised as mmseg's `conv_seg` (normal, std 0.01, bias 0).
    """

    def __init__(self, in_channels: Sequence[int], num_labels: int, dropout: float = 0.0):
        super().__init__()
        self.in_channels = [int(c) for c in in_channels]
        if not self.in_channels:
            raise ValueError("in_channels must name at least one feature map.")
        if num_labels < 1:
            raise ValueError(f"num_labels must be positive, got {num_labels}.")
        channels = sum(self.in_channels)
        self.norm = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_labels, kernel_size=1)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        channels = [fm.shape[1] for fm in feature_maps]
        if channels != self.in_channels:
            raise ValueError(f"Expected feature maps with channels {self.in_channels}, got {channels}.")
        return self.classifier(self.dropout(self.norm(resize_concat(feature_maps))))


class FrozenBackboneSegmenter(nn.Module):
    """A frozen backbone + a trainable segmentation head, usable with transformers' `Trainer`.

    The backbone's parameters have `requires_grad=False`, it always stays in eval mode (so dropout, drop path and
    BatchNorm statistics of the backbone never change, whatever `.train()` is called with) and runs under
    `torch.no_grad()`. `forward(pixel_values, labels=None)` returns a `SemanticSegmenterOutput` whose logits are
    upsampled bilinearly (`align_corners=False`) to the labels' size (to the input's size without labels), and whose
    loss is the cross-entropy with `ignore_index`.
    """

    main_input_name = "pixel_values"

    def __init__(self, backbone: nn.Module, head: nn.Module, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.ignore_index = ignore_index
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        with torch.no_grad():
            feature_maps = self.backbone(pixel_values).feature_maps
        logits = self.head(feature_maps)
        size = labels.shape[-2:] if labels is not None else pixel_values.shape[-2:]
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels.long(), ignore_index=self.ignore_index)
        return SemanticSegmenterOutput(loss=loss, logits=logits)


# ---------------------------------------------------------------------------------------------- patch protocols


def patch_labels(masks: torch.Tensor, grid: tuple[int, int], ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The label of every cell of an (h, w) patch grid laid over (B, H, W) pixel masks: the MODAL (majority) label of
    the cell's pixels, as CAPI's `eval_segmentation.py` labels training patches.

    `ignore_index` pixels are counted as a label of their own, so a cell where ignored pixels are the majority gets
    `ignore_index` (CAPI then drops it); ties go to the smallest label, ignore last. Negative labels (e.g. -100
    padding) count as ignored. Pixel (y, x) belongs to cell (y * h // H, x * w // W): exact patches when H, W are
    multiples of h, w. Returns (B, h, w) int64.
    """
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValueError(f"masks must be (B, H, W), got {tuple(masks.shape)}.")
    h, w = int(grid[0]), int(grid[1])
    batch, height, width = masks.shape
    if not (1 <= h <= height and 1 <= w <= width):
        raise ValueError(f"grid {grid} must lie between (1, 1) and the mask size ({height}, {width}).")
    labels = masks.long()
    valid = (labels != ignore_index) & (labels >= 0)
    num_bins = (int(labels[valid].max()) + 1 if valid.any() else 0) + 1  # the last bin collects ignored pixels
    binned = torch.where(valid, labels, torch.full_like(labels, num_bins - 1))
    rows = torch.arange(height, device=labels.device) * h // height
    cols = torch.arange(width, device=labels.device) * w // width
    cell = (rows[:, None] * w + cols[None, :]).reshape(1, -1)
    index = cell * num_bins + binned.reshape(batch, -1)
    counts = torch.zeros(batch, h * w * num_bins, device=labels.device)
    counts.scatter_add_(1, index, torch.ones_like(index, dtype=counts.dtype))
    modal = counts.view(batch, h * w, num_bins).argmax(dim=2)  # first maximum: the smallest label wins a tie
    modal[modal == num_bins - 1] = ignore_index
    return modal.view(batch, h, w)


@torch.no_grad()
def dense_features(backbone: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) patch features of a backbone: its feature maps, resize-concatenated to the first map's grid."""
    return resize_concat(backbone(pixel_values).feature_maps)


def _iter_batches(batches, skipped: SkippedFiles | None = None) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    for batch in batches:
        if isinstance(batch, Mapping):
            batch = readable_part(batch, skipped)  # unreadable pairs out, named in `skipped`
            if batch is None:
                continue  # every pair of the batch was unreadable
            yield batch["pixel_values"], batch.get("labels")
        else:
            yield batch[0], batch[1] if len(batch) > 1 else None


@torch.no_grad()
def patch_feature_bank(
    backbone: nn.Module,
    batches,
    device: torch.device | str | None = None,
    ignore_index: int = IGNORE_INDEX,
    skipped: SkippedFiles | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and modal labels of every training patch whose label is not ignored.

    `batches` yields dicts with "pixel_values" (B, 3, H, W) and "labels" (B, H, W) (e.g. a DataLoader over
    `SegmentationTransform(train=False)` examples) or `(pixel_values, labels)` pairs. Returns `(features (N, D)
    float32, labels (N,) int64)` on the CPU. The backbone is put in eval mode for the pass (its mode is restored).
    Batches of a `SkippingCollator` (`hf_mim.data.segmentation.segmentation_collator`) lose their unreadable pairs,
    recorded in `skipped`; a batch in which every pair failed is skipped.
    """
    device = torch.device(device) if device is not None else next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    try:
        for pixel_values, masks in _iter_batches(batches, skipped):
            if masks is None:
                raise ValueError("patch_feature_bank needs labelled batches.")
            dense = dense_features(backbone, pixel_values.to(device)).float()
            cells = patch_labels(masks.to(device), dense.shape[-2:], ignore_index)
            dense = dense.permute(0, 2, 3, 1).reshape(-1, dense.shape[1])
            cells = cells.reshape(-1)
            keep = cells != ignore_index
            features.append(dense[keep].cpu())
            labels.append(cells[keep].cpu())
    finally:
        backbone.train(was_training)
    if not features:
        raise ValueError("No batches to build a patch bank from.")
    return torch.cat(features), torch.cat(labels)


class FeatureScaler(nn.Module):
    """sklearn's `StandardScaler` (CAPI standardises patch features before its classifiers): `(x - mean) / std` with
    the training features' mean and (biased) std; constant features keep std 1."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())

    @classmethod
    def fit(cls, features: torch.Tensor) -> "FeatureScaler":
        features = features.float()
        std = features.std(dim=0, unbiased=False)
        return cls(features.mean(dim=0), torch.where(std > 0, std, torch.ones_like(std)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.mean) / self.std


def knn_segment(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_labels: int,
    k: int = 10,
    temperature: float | None = 0.07,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """k-NN class scores of test patches from a bank of labelled training patches.

    Features are L2-normalised (cosine similarity). Training patches labelled `ignore_index` (or negative) are left
    out. Each of a test patch's `k` nearest training patches votes for its label with weight
    `exp((cos - cos_max) / temperature)` (`cos_max`: the row's best similarity; `temperature=None`: weight 1, CAPI's
    unweighted mode); the scores are the votes divided by their sum, so a row sums to 1 and its argmax is the
    prediction (ties: the lowest class). Rows are computed `chunk_size` test patches at a time.

    Returns:
        (M, num_labels) float32 scores on the device of `train_features`.
    """
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError("train_features and test_features must be 2-D (N, D).")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"Feature sizes differ: train {train_features.shape[1]}, test {test_features.shape[1]}.")
    device = train_features.device
    train_labels = torch.as_tensor(train_labels).reshape(-1).long().to(device)
    if train_labels.shape[0] != train_features.shape[0]:
        raise ValueError(f"{train_features.shape[0]} train features but {train_labels.shape[0]} train labels.")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}.")
    if temperature is not None and temperature <= 0:
        raise ValueError(f"temperature must be positive (or None for an unweighted vote), got {temperature}.")
    keep = (train_labels != ignore_index) & (train_labels >= 0)
    train_labels = train_labels[keep]
    if train_labels.numel() == 0:
        raise ValueError("Every training patch is ignored: nothing to vote with.")
    if int(train_labels.max()) >= num_labels:
        raise ValueError(f"A training label ({int(train_labels.max())}) is >= num_labels ({num_labels}).")
    train = F.normalize(train_features[keep].float(), dim=1)
    k = min(k, train.shape[0])
    scores = []
    for start in range(0, test_features.shape[0], chunk_size):
        test = F.normalize(test_features[start : start + chunk_size].to(device).float(), dim=1)
        top_similarity, top_index = (test @ train.T).topk(k, dim=1)
        if temperature is None:
            weights = torch.ones_like(top_similarity)
        else:
            weights = ((top_similarity - top_similarity[:, :1]) / temperature).exp()
        votes = torch.zeros(test.shape[0], num_labels, device=device)
        votes.scatter_add_(1, train_labels[top_index], weights)
        scores.append(votes / votes.sum(dim=1, keepdim=True))
    if not scores:
        return torch.empty(0, num_labels, device=device)
    return torch.cat(scores)


class PatchLogisticRegression(nn.Module):
    """A fitted patch classifier: `FeatureScaler` (or identity) + `nn.Linear(D, num_labels)`; `forward(features (N,
    D)) -> logits (N, num_labels)`."""

    def __init__(self, linear: nn.Linear, scaler: FeatureScaler | None = None):
        super().__init__()
        self.scaler = scaler if scaler is not None else nn.Identity()
        self.linear = linear

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.scaler(features.float()))


def fit_logistic_regression(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    C: float = 1.0,
    max_iter: int = 1000,
    tol: float = 1e-9,
    standardize: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> PatchLogisticRegression:
    """Multinomial logistic regression on patch features, fitted by full-batch L-BFGS (CAPI's cuML L-BFGS
    `LogisticRegression`, C one value of its grid).

    Minimises `mean_i CE(W x_i + b, y_i) + ||W||^2 / (2 C N)` (the bias is not penalised) from zero weights, with
    `torch.optim.LBFGS(max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe", tolerance_grad=tol,
    tolerance_change=tol)`. With `standardize`, features are standardised first (`FeatureScaler` fit on them, CAPI's
    StandardScaler) and the returned module applies the same scaling. Labels equal to `ignore_index` (or negative) are
    left out. Runs on the device of `features`; the whole (N, D) bank must fit there.
    """
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}.")
    labels = torch.as_tensor(labels).reshape(-1).long().to(features.device)
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"{features.shape[0]} features but {labels.shape[0]} labels.")
    keep = (labels != ignore_index) & (labels >= 0)
    features, labels = features[keep].float(), labels[keep]
    if labels.numel() == 0:
        raise ValueError("No labelled patches to fit on.")
    if int(labels.max()) >= num_labels:
        raise ValueError(f"A label ({int(labels.max())}) is >= num_labels ({num_labels}).")
    scaler = FeatureScaler.fit(features).to(features.device) if standardize else None
    inputs = scaler(features) if scaler is not None else features
    linear = nn.Linear(features.shape[1], num_labels).to(features.device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    penalty = 1.0 / (2.0 * C * labels.numel())
    optimizer = torch.optim.LBFGS(
        linear.parameters(), lr=1.0, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe",
        tolerance_grad=tol, tolerance_change=tol,
    )  # fmt: skip

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(inputs), labels) + penalty * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    linear.requires_grad_(False)
    return PatchLogisticRegression(linear, scaler).eval()


def upsample_patch_scores(scores: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """(B, K, h, w) per-patch class scores -> (B, K, H, W) per-pixel scores. "nearest" repeats each patch's score over
    its pixels (CAPI: the patch label repeated over its 14x14 pixels); "bilinear" interpolates (`align_corners=False`)."""
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}.")
    if scores.ndim != 4:
        raise ValueError(f"scores must be (B, K, h, w), got {tuple(scores.shape)}.")
    if mode == "nearest":
        return F.interpolate(scores, size=tuple(size), mode="nearest")
    return F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------------------------- metrics


def _reduce_labels(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    reduced = labels - 1
    reduced[(labels == 0) | (labels == ignore_index)] = ignore_index
    return reduced


class SegmentationMetrics(MulticlassConfusionMatrix):
    """Mean IoU, per-class IoU, pixel accuracy and mean class accuracy from one torchmetrics confusion matrix.

    `update(preds, target)`: `preds` are (B, H, W) class indices or (B, K, h, w) logits / scores (resized bilinearly
    to the target's size when it differs, then arg-maxed); `target` is (B, H, W). Pixels whose target is
    `ignore_index` or negative, or whose prediction is negative (the Trainer pads both with -100), do not count. With `reduce_labels`, targets are first mapped
    as transformers' `do_reduce_labels` (0 -> ignore_index, others - 1; only the targets, as `evaluate`'s
    `mean_iou`). The confusion matrix is a summed torchmetrics state, so `compute()` syncs it across ranks (pass
    `sync_on_compute=False` when every rank already sees all the data, e.g. after the Trainer's gather).

    `compute()` returns tensors: "mean_iou", "pixel_accuracy" (correct / counted pixels, `evaluate`'s
    "overall_accuracy"), "mean_accuracy", "per_class_iou" (K,), "per_class_accuracy" (K,). A class absent from both
    the predictions and the targets has IoU NaN, a class absent from the targets accuracy NaN; means skip NaN.
    `summary(label_names)` flattens them to floats named as transformers' semantic-segmentation example does
    (`iou_<name>`, `accuracy_<name>`).
    """

    def __init__(
        self, num_labels: int, ignore_index: int = IGNORE_INDEX, reduce_labels: bool = False, **kwargs
    ) -> None:
        super().__init__(num_classes=num_labels, ignore_index=ignore_index, normalize=None, **kwargs)
        self.num_labels = num_labels
        self.reduce_labels = reduce_labels

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds, target = torch.as_tensor(preds), torch.as_tensor(target).long()
        if self.reduce_labels:
            target = _reduce_labels(target, self.ignore_index)
        target = target.masked_fill(target < 0, self.ignore_index)
        if preds.ndim == target.ndim + 1:
            if preds.shape[-2:] != target.shape[-2:]:
                preds = F.interpolate(preds.float(), size=target.shape[-2:], mode="bilinear", align_corners=False)
            preds = preds.argmax(dim=1)
        preds = preds.long()
        target = target.masked_fill(preds < 0, self.ignore_index)  # padded predictions (-100) do not count either
        super().update(preds.clamp(min=0).to(self.confmat.device), target.to(self.confmat.device))

    def compute(self) -> dict[str, torch.Tensor]:
        confmat = super().compute().double()  # rows: target class, columns: predicted class
        true_positive = confmat.diagonal()
        target_total = confmat.sum(dim=1)
        union = target_total + confmat.sum(dim=0) - true_positive
        nan = torch.full_like(true_positive, float("nan"))
        iou = torch.where(union > 0, true_positive / union.clamp(min=1), nan)
        accuracy = torch.where(target_total > 0, true_positive / target_total.clamp(min=1), nan)
        total = confmat.sum()
        pixel_accuracy = true_positive.sum() / total if total > 0 else torch.tensor(float("nan"))
        return {
            "mean_iou": iou.nanmean().float(),
            "pixel_accuracy": pixel_accuracy.float(),
            "mean_accuracy": accuracy.nanmean().float(),
            "per_class_iou": iou.float(),
            "per_class_accuracy": accuracy.float(),
        }

    def summary(self, label_names: Sequence[str] | None = None) -> dict[str, float]:
        """`compute()` as a flat dict of floats: mean_iou, pixel_accuracy, mean_accuracy, iou_<name>, accuracy_<name>
        (names: `label_names`, default the class indices)."""
        result = self.compute()
        names = list(label_names) if label_names is not None else [str(i) for i in range(self.num_labels)]
        if len(names) != self.num_labels:
            raise ValueError(f"{len(names)} label names for {self.num_labels} labels.")
        flat = {key: float(result[key]) for key in ("mean_iou", "pixel_accuracy", "mean_accuracy")}
        flat.update({f"iou_{name}": float(v) for name, v in zip(names, result["per_class_iou"].tolist())})
        flat.update({f"accuracy_{name}": float(v) for name, v in zip(names, result["per_class_accuracy"].tolist())})
        return flat


def argmax_logits(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Trainer's `preprocess_logits_for_metrics`: (B, K, h, w) logits -> (B, H, W) predictions (resized bilinearly to
    the labels' size first when it differs), so ranks gather class indices instead of K-channel maps."""
    if isinstance(logits, tuple | list):
        logits = logits[0]
    if labels is not None and logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)


class SegmentationComputeMetrics:
    """Trainer `compute_metrics` around `SegmentationMetrics`; works with `batch_eval_metrics=True` (updates per
    batch, returns the summary on the last) and without it (one call with the whole evaluation set). The Trainer has
    already gathered the predictions of every rank, so the metric does not sync again."""

    def __init__(
        self,
        num_labels: int,
        label_names: Sequence[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
        reduce_labels: bool = False,
    ):
        self.metric = SegmentationMetrics(
            num_labels, ignore_index=ignore_index, reduce_labels=reduce_labels, sync_on_compute=False
        )
        self.label_names = label_names

    def __call__(self, eval_prediction, compute_result: bool = True) -> dict[str, float]:
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        if isinstance(predictions, tuple | list):
            predictions = predictions[0]
        predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
        self.metric.to(predictions.device)
        self.metric.update(predictions, labels)
        if not compute_result:
            return {}
        result = self.metric.summary(self.label_names)
        self.metric.reset()
        return result


# ------------------------------------------------------------------------------------------------- visualisation


def segmentation_palette(num_labels: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(256, 3) uint8 colours: class 0 black, the others well-separated hues (golden-angle steps), `ignore_index`
    white."""
    import colorsys

    palette = np.zeros((256, 3), dtype=np.uint8)
    for label in range(1, min(num_labels, 256)):
        hue = (label * 0.618033988749895) % 1.0
        value = 1.0 if label % 2 else 0.75
        palette[label] = [round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, value)]
    if 0 <= ignore_index < 256:
        palette[ignore_index] = 255
    return palette


def colorize(mask, palette: np.ndarray) -> PIL.Image.Image:
    """(H, W) class indices -> an RGB PIL image through `palette` (indices outside 0..255 are shown as 255)."""
    mask = np.asarray(torch.as_tensor(mask).cpu().numpy(), dtype=np.int64)
    mask = np.where((mask < 0) | (mask > 255), 255, mask)
    return PIL.Image.fromarray(palette[mask])


def prediction_grid(
    images: Sequence, labels: Sequence, predictions: Sequence, num_labels: int, ignore_index: int = IGNORE_INDEX
) -> PIL.Image.Image:
    """One row per example: image | ground truth | prediction (masks colour-coded with `segmentation_palette`;
    ignored pixels white). `images` are PIL images or (H, W, 3) uint8 arrays of the masks' size."""
    palette = segmentation_palette(num_labels, ignore_index)
    rows = []
    for image, label, prediction in zip(images, labels, predictions):
        image = image if isinstance(image, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(image, np.uint8))
        tiles = [image.convert("RGB"), colorize(label, palette), colorize(prediction, palette)]
        rows.append(tiles)
    if not rows:
        raise ValueError("No examples to draw.")
    gap = 2
    width = max(sum(tile.width for tile in row) + gap * 2 for row in rows)
    height = sum(max(tile.height for tile in row) for row in rows) + gap * (len(rows) - 1)
    canvas = PIL.Image.new("RGB", (width, height), (255, 255, 255))
    top = 0
    for row in rows:
        left = 0
        for tile in row:
            canvas.paste(tile, (left, top))
            left += tile.width + gap
        top += max(tile.height for tile in row) + gap
    return canvas


def _text_size(draw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def labelled_prediction_grid(
    images: Sequence,
    labels: Sequence,
    predictions: Mapping[str, Sequence],
    num_labels: int,
    caption: Sequence[str] = (),
    label_names: Sequence[str] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> PIL.Image.Image:
    """`prediction_grid` with words on it: a title above each column ("image", "ground truth", then one column per
    entry of `predictions`, e.g. {"random-init prediction": [...], "pretrained prediction": [...]}), the `caption`
    lines under the grid (e.g. each column's mean IoU) and a colour legend of the classes (`label_names`)."""
    import PIL.ImageDraw
    import PIL.ImageFont

    palette = segmentation_palette(num_labels, ignore_index)
    titles = ["image", "ground truth", *predictions]
    columns = [list(images), list(labels), *(list(column) for column in predictions.values())]
    if not columns[0] or any(len(column) != len(columns[0]) for column in columns):
        raise ValueError("Every column needs one entry per example (and at least one example).")
    rows = []
    for index, image in enumerate(columns[0]):
        image = image if isinstance(image, PIL.Image.Image) else PIL.Image.fromarray(np.asarray(image, np.uint8))
        rows.append([image.convert("RGB")] + [colorize(column[index], palette) for column in columns[1:]])
    font = PIL.ImageFont.load_default()
    measure = PIL.ImageDraw.Draw(PIL.Image.new("RGB", (1, 1)))
    line_height = max(_text_size(measure, "Ag", font)[1], 8) + 6
    gap = 2
    cell = max(max(tile.width for tile in row) for row in rows)
    # A title wider than its tile gets a wider column, so no word is cut.
    widths = [max(cell, _text_size(measure, title, font)[0] + 4) for title in titles]
    names = list(label_names) if label_names is not None else [str(i) for i in range(num_labels)]
    swatch = line_height - 6
    legend_items = [(palette[i], name) for i, name in enumerate(names[:num_labels])]
    width = sum(widths) + gap * (len(widths) - 1)
    # Caption and legend wrap to the grid's width.
    caption_lines = []
    for text in caption:
        line = ""
        for word in text.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and _text_size(measure, candidate, font)[0] > width - 4:
                caption_lines.append(line)
                candidate = word
            line = candidate
        caption_lines.append(line)
    legend_lines, line, used = [], [], 0
    for colour, name in legend_items:
        item_width = swatch + 4 + _text_size(measure, name, font)[0] + 10
        if line and used + item_width > width:
            legend_lines.append(line)
            line, used = [], 0
        line.append((colour, name))
        used += item_width
    if line:
        legend_lines.append(line)
    grid_height = sum(max(tile.height for tile in row) for row in rows) + gap * (len(rows) - 1)
    height = line_height + grid_height + 4 + line_height * (len(caption_lines) + len(legend_lines))
    canvas = PIL.Image.new("RGB", (width, height), (255, 255, 255))
    draw = PIL.ImageDraw.Draw(canvas)
    left = 0
    for title, column_width in zip(titles, widths):
        text_width = _text_size(draw, title, font)[0]
        draw.text((left + (column_width - text_width) // 2, 3), title, fill=(0, 0, 0), font=font)
        left += column_width + gap
    top = line_height
    for row in rows:
        left = 0
        for tile, column_width in zip(row, widths):
            canvas.paste(tile, (left + (column_width - tile.width) // 2, top))
            left += column_width + gap
        top += max(tile.height for tile in row) + gap
    top += 4 - gap
    for text in caption_lines:
        draw.text((2, top + 3), text, fill=(0, 0, 0), font=font)
        top += line_height
    for legend_line in legend_lines:
        left = 2
        for colour, name in legend_line:
            draw.rectangle(
                (left, top + 3, left + swatch, top + 3 + swatch), fill=tuple(int(c) for c in colour), outline=(0, 0, 0)
            )
            draw.text((left + swatch + 4, top + 3), name, fill=(0, 0, 0), font=font)
            left += swatch + 4 + _text_size(draw, name, font)[0] + 10
        top += line_height
    return canvas


__all__ = [
    "IGNORE_INDEX",
    "FeatureScaler",
    "FrozenBackboneSegmenter",
    "LinearSegmentationHead",
    "PatchLogisticRegression",
    "SegmentationComputeMetrics",
    "SegmentationMetrics",
    "argmax_logits",
    "colorize",
    "dense_features",
    "fit_logistic_regression",
    "knn_segment",
    "labelled_prediction_grid",
    "patch_feature_bank",
    "patch_labels",
    "prediction_grid",
    "resize_concat",
    "segmentation_palette",
    "upsample_patch_scores",
]
