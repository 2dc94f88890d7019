"""Objectives: what a model learns and how it is measured, one owner for every consumer.

A task's model spec names its objective (``ModelSpec.objective``). Both device runtimes take
its loss (``loss_sum``, numpy, for the lean runtime; ``torch_loss_sum`` for the torch
runtime, the planner's scores and nothing else), every evaluation — the device's on its
held-out data, the orchestrator's on a validation set — takes ``metrics``, stop rules and
releases compare the ``primary`` metric in its direction, and a device's prediction path
turns model outputs into answers with ``predictions``. Torch-free at import: devices on the
lean runtime have no torch.

- ``classification``: cross-entropy on class ids (``y`` int64 in 0..num_classes-1);
  metrics ``loss``, ``accuracy`` (primary), ``macro_f1``.
- ``regression``: forecasting or any real-valued output (``y`` float32, one row of
  ``out_features`` values per sample); mean squared error per sample as the loss; metrics
  ``loss``, ``mse`` (primary, lower is better), ``mae``.
- ``reconstruction``: an autoencoder for unlabelled anomaly detection; the target is the
  input window itself, the loss its mean squared reconstruction error, and a window's
  anomaly score is that error. ``y`` holds optional anomaly labels (-1 unknown, 0 normal,
  1 anomaly); metrics ``loss``, ``mse`` (primary, lower is better) and, where held-out data
  has both kinds of labels, ``auc`` of the score. A device flags a window as anomalous when
  its score is above the device's own threshold: the ``THRESHOLD_QUANTILE`` quantile of the
  scores of its held-out windows (``anomaly_threshold``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ftte.metrics import MAX_ERROR
from ftte.tasks.layers import Linear

if TYPE_CHECKING:
    import torch

    from ftte.tasks.base import Dataset, ModelSpec

Array = np.ndarray[Any, Any]

# Held-out windows of a device are mostly normal: its threshold flags about 1 % of them,
# and a window whose reconstruction is worse than 99 % of the device's own normal data.
THRESHOLD_QUANTILE = 0.99
UNLABELLED, NORMAL, ANOMALY = -1, 0, 1


class Objective:
    """Loss, metrics and predictions of one kind of learning; subclasses are the kinds."""

    name: ClassVar[str]
    primary: ClassVar[str]  # the metric stop rules and releases compare
    higher_is_better: ClassVar[bool]

    def targets(self, data: Dataset) -> Array:
        """What the model's outputs are compared with, one row per sample."""
        raise NotImplementedError

    def loss_sum(self, outputs: Array, targets: Array) -> tuple[float, Array]:
        """The loss summed over the samples, and its gradient with respect to ``outputs``."""
        raise NotImplementedError

    def torch_loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The same summed loss in torch, for autograd."""
        raise NotImplementedError

    def metrics(self, outputs: Array, data: Dataset) -> dict[str, float]:
        """The objective's metrics of ``outputs`` on ``data`` (names from ``ftte.metrics``)."""
        raise NotImplementedError

    def predictions(
        self, outputs: Array, x: Array, threshold: float | None
    ) -> list[dict[str, Any]]:
        """One JSON-able answer per sample, as a device's prediction path returns it."""
        raise NotImplementedError

    def check(self, data: Dataset, model: ModelSpec, source: str) -> None:
        """Refuse targets this objective cannot learn from, naming ``source`` and the fix."""
        raise NotImplementedError

    def better(self, value: float, than: float) -> bool:
        """Whether ``value`` of the primary metric beats ``than``."""
        return value > than if self.higher_is_better else value < than

    def reached(self, value: float, target: float) -> bool:
        """Whether ``value`` of the primary metric meets ``target`` (>= or <=)."""
        return value >= target if self.higher_is_better else value <= target

    def describe_target(self, target: float) -> str:
        """The target as a person reads it, e.g. ``accuracy >= 0.9``."""
        return f"{self.primary} {'>=' if self.higher_is_better else '<='} {target:g}"


@dataclass(frozen=True)
class Classification(Objective):
    """Cross-entropy on class ids; accuracy (primary) and macro-F1."""

    name: ClassVar[str] = "classification"
    primary: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True

    def targets(self, data: Dataset) -> Array:
        """The class ids."""
        return data.y

    def loss_sum(self, outputs: Array, targets: Array) -> tuple[float, Array]:
        """Summed cross-entropy of logits ``outputs`` against class ids, and its gradient."""
        shifted = outputs - outputs.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        sums = exp.sum(axis=1, keepdims=True)
        rows = np.arange(len(targets))
        loss = float(np.sum(np.log(sums[:, 0]) - shifted[rows, targets]))
        grad = exp / sums
        grad[rows, targets] -= 1.0
        return loss, grad

    def torch_loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``cross_entropy(reduction="sum")``."""
        from torch.nn import functional

        return functional.cross_entropy(outputs, targets, reduction="sum")

    def metrics(self, outputs: Array, data: Dataset) -> dict[str, float]:
        """Mean cross-entropy, accuracy and macro-F1."""
        loss = self.loss_sum(outputs.astype(np.float64), data.y)[0] / len(data)
        predicted = outputs.argmax(axis=1)
        return {
            "loss": min(loss, MAX_ERROR),
            "accuracy": float((predicted == data.y).mean()),
            "macro_f1": macro_f1(data.y, predicted),
        }

    def predictions(
        self, outputs: Array, x: Array, threshold: float | None
    ) -> list[dict[str, Any]]:
        """Each sample's class and the softmax scores of every class."""
        exp = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        scores = exp / exp.sum(axis=1, keepdims=True)
        return [{"class": int(s.argmax()), "scores": [float(v) for v in s]} for s in scores]

    def check(self, data: Dataset, model: ModelSpec, source: str) -> None:
        """Class ids as int64 in 0..num_classes-1, one per sample."""
        _check_inputs(data, model, source, np.dtype(np.int64), "int64 class ids")
        if data.y.ndim != 1:
            raise ValueError(f"{source}: y must hold one class id per sample, shape (n,)")
        if len(data) and (data.y.min() < 0 or data.y.max() >= model.num_classes):
            raise ValueError(
                f"{source}: labels must be class ids 0..{model.num_classes - 1} for model "
                f"{model.name!r}, found {int(data.y.min())}..{int(data.y.max())}; map raw labels "
                "(e.g. 1 and 2) to 0-based ids"
            )


@dataclass(frozen=True)
class _SquaredError(Objective):
    """Mean squared error per sample (over its output values), summed over samples."""

    primary: ClassVar[str] = "mse"
    higher_is_better: ClassVar[bool] = False

    def loss_sum(self, outputs: Array, targets: Array) -> tuple[float, Array]:
        """Summed per-sample mean squared error, and its gradient."""
        flat = outputs.reshape(len(outputs), -1)
        diff = flat - targets.reshape(len(targets), -1)
        width = flat.shape[1]
        loss = float(np.einsum("ij,ij->", diff, diff)) / width
        return loss, (diff * np.float32(2.0 / width)).reshape(outputs.shape)

    def torch_loss_sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The same in torch."""
        diff = outputs.reshape(len(outputs), -1) - targets.reshape(len(targets), -1)
        return diff.pow(2).mean(dim=1).sum()

    def errors(self, outputs: Array, targets: Array) -> Array:
        """Each sample's mean squared error (float64)."""
        diff = outputs.reshape(len(outputs), -1).astype(np.float64) - targets.reshape(
            len(targets), -1
        )
        out: Array = np.mean(diff * diff, axis=1)
        return out

    def _check_width(self, model: ModelSpec, width: int, source: str, what: str) -> None:
        produced = output_width(model)
        if produced is not None and produced != width:
            raise ValueError(
                f"{source}: model {model.name!r} outputs {produced} values per sample but "
                f"{what} has {width}; make its last Linear layer output {width}"
            )


@dataclass(frozen=True)
class Regression(_SquaredError):
    """Real-valued outputs (forecasting): MSE loss; mse (primary) and mae."""

    name: ClassVar[str] = "regression"

    def targets(self, data: Dataset) -> Array:
        """The target values, one row per sample."""
        return data.y.reshape(len(data.y), -1)

    def metrics(self, outputs: Array, data: Dataset) -> dict[str, float]:
        """Mean squared and absolute error over every output value."""
        diff = outputs.reshape(len(outputs), -1).astype(np.float64) - self.targets(data)
        mse = min(float(np.mean(diff * diff)), MAX_ERROR)
        return {"loss": mse, "mse": mse, "mae": min(float(np.mean(np.abs(diff))), MAX_ERROR)}

    def predictions(
        self, outputs: Array, x: Array, threshold: float | None
    ) -> list[dict[str, Any]]:
        """Each sample's output values."""
        return [{"output": [float(v) for v in row]} for row in outputs.reshape(len(outputs), -1)]

    def check(self, data: Dataset, model: ModelSpec, source: str) -> None:
        """float32 finite targets, as many per sample as the model outputs."""
        _check_inputs(data, model, source, np.dtype(np.float32), "float32 target values")
        if not np.isfinite(data.y).all():
            raise ValueError(f"{source}: targets y hold NaN or infinity; drop those samples")
        width = int(np.prod(data.y.shape[1:], dtype=np.int64))
        self._check_width(model, width, source, "each target y[i]")


@dataclass(frozen=True)
class Reconstruction(_SquaredError):
    """An autoencoder: the input is the target; anomaly score = reconstruction error."""

    name: ClassVar[str] = "reconstruction"

    def targets(self, data: Dataset) -> Array:
        """The input windows, flattened."""
        return data.x.reshape(len(data.x), -1)

    def metrics(self, outputs: Array, data: Dataset) -> dict[str, float]:
        """Mean reconstruction error, and the AUC of the anomaly score where ``y`` has both
        normal and anomalous windows."""
        scores = self.errors(outputs, self.targets(data))
        mse = min(float(scores.mean()), MAX_ERROR)
        metrics = {"loss": mse, "mse": mse}
        labelled = data.y != UNLABELLED
        auc = roc_auc(data.y[labelled], scores[labelled])
        if auc is not None:
            metrics["auc"] = auc
        return metrics

    def predictions(
        self, outputs: Array, x: Array, threshold: float | None
    ) -> list[dict[str, Any]]:
        """Each window's anomaly score and, with a threshold, whether it is above it."""
        scores = self.errors(outputs, x.reshape(len(x), -1))
        if threshold is None:
            return [{"score": float(s)} for s in scores]
        return [
            {"score": float(s), "anomaly": bool(s > threshold), "threshold": threshold}
            for s in scores
        ]

    def check(self, data: Dataset, model: ModelSpec, source: str) -> None:
        """Labels optional: int64 -1 (unknown), 0 (normal) or 1 (anomaly) per window."""
        _check_inputs(data, model, source, np.dtype(np.int64), "int64 anomaly labels")
        if data.y.ndim != 1 or (len(data) and not np.isin(data.y, (-1, 0, 1)).all()):
            raise ValueError(
                f"{source}: y must hold one anomaly label per window: -1 (unknown), 0 (normal) "
                "or 1 (anomaly); unlabelled data is np.full(n, -1)"
            )
        self._check_width(model, int(np.prod(model.input_shape)), source, "the input window")


CLASSIFICATION = Classification()
REGRESSION = Regression()
RECONSTRUCTION = Reconstruction()
OBJECTIVES: dict[str, Objective] = {o.name: o for o in (CLASSIFICATION, REGRESSION, RECONSTRUCTION)}


def output_width(model: ModelSpec) -> int | None:
    """Values per sample the model outputs, when its last layer is a ``Linear``."""
    last = model.layers[-1] if model.layers else None
    return last.out_features if isinstance(last, Linear) else None


def anomaly_threshold(scores: Array) -> float:
    """A device's anomaly threshold: the ``THRESHOLD_QUANTILE`` quantile of the anomaly
    scores of its own held-out windows."""
    if not len(scores):
        raise ValueError("no held-out windows to set the anomaly threshold from")
    return float(np.quantile(scores, THRESHOLD_QUANTILE))


def macro_f1(y: Array, predicted: Array) -> float:
    """Unweighted mean of per-class F1 over the classes in ``y`` or ``predicted``."""
    classes = np.union1d(y, predicted)
    if not len(classes):
        return 0.0
    scores = []
    for k in classes:
        tp = float(np.sum((predicted == k) & (y == k)))
        fp = float(np.sum((predicted == k) & (y != k)))
        fn = float(np.sum((predicted != k) & (y == k)))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def roc_auc(labels: Array, scores: Array) -> float | None:
    """ROC AUC of ``scores`` for ``labels`` 1 against 0 (ties count a half), or ``None``
    unless both kinds are present: the Mann–Whitney U statistic over n1·n0."""
    positive, negative = scores[labels == ANOMALY], scores[labels == NORMAL]
    if not len(positive) or not len(negative):
        return None
    order = np.concatenate([positive, negative])
    ranks = _average_ranks(order)
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def _average_ranks(values: Array) -> Array:
    """1-based ranks, tied values sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    start = 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def _check_inputs(
    data: Dataset, model: ModelSpec, source: str, y_dtype: np.dtype[Any], what: str
) -> None:
    """Samples float32 of the model's input shape, ``y`` of ``y_dtype``, one per sample."""
    if data.x.dtype != np.float32 or data.y.dtype != y_dtype:
        raise ValueError(
            f"{source}: x must be float32 and y {what} for a {model.objective.name} model "
            f"(got {data.x.dtype}, {data.y.dtype}); convert with .astype"
        )
    if data.x.shape[1:] != model.input_shape or data.x.shape[0] != data.y.shape[0]:
        raise ValueError(
            f"{source}: samples of shape {data.x.shape[1:]}, {data.y.shape[0]} targets for "
            f"{data.x.shape[0]} samples; model {model.name!r} takes {model.input_shape}"
        )
