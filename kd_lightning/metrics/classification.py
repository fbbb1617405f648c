"""The metric set every kd_lightning module logs for its trained network."""

from __future__ import annotations

from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError, MulticlassF1Score

from kd_lightning.metrics.accuracy import TopKAccuracy

# Top-5 accuracy says little when there are barely more than five classes, and is always 1 below.
TOP5_MIN_CLASSES = 6
ECE_BINS = 15


def classification_metrics(num_classes: int, evaluation: bool = True) -> MetricCollection:
    """Top-1 (``acc``) and top-5 (``acc_top5``, only with more than 5 classes) accuracy, plus for evaluation
    macro F1 (``f1_macro``) and the expected calibration error (``ece``, 15 equal-width bins, L1).

    Args:
        num_classes: classes of the task.
        evaluation: add F1 and ECE. Training leaves them out: ECE keeps every prediction's confidence
            until the epoch ends, and on augmented training batches neither number is what users read.
            Training accuracies are :class:`TopKAccuracy`, updated in every step without torchmetrics'
            input checks (whose ``torch.unique`` on the targets is a host-device sync) or its general
            statistics path.
    """
    if not evaluation:
        # Updated in every training step: the light top-k accuracy (same numbers, a fraction of the
        # cost), which also leaves out unlabeled samples (an unlabeled transfer set).
        metrics: dict[str, Metric | MetricCollection] = {"acc": TopKAccuracy(1)}
        if num_classes >= TOP5_MIN_CLASSES:
            metrics["acc_top5"] = TopKAccuracy(5)
        return MetricCollection(metrics, compute_groups=False)
    metrics = {"acc": MulticlassAccuracy(num_classes, average="micro")}
    if num_classes >= TOP5_MIN_CLASSES:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    metrics["f1_macro"] = MulticlassF1Score(num_classes, average="macro")
    metrics["ece"] = MulticlassCalibrationError(num_classes, n_bins=ECE_BINS, norm="l1")
    return MetricCollection(metrics, compute_groups=False)
