"""Matplotlib figures of the report and the confusion-matrix callback (no pyplot: safe headless)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure


def confusion_matrix_figure(matrix: torch.Tensor, class_names: Sequence[str], title: str) -> Figure:
    """A ``[C, C]`` count matrix (rows: true class, columns: predicted) with counts written in the cells."""
    size = max(4.0, 0.45 * len(class_names) + 1.5)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(matrix.numpy(), cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90 if max(map(len, class_names)) > 2 else 0)
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(class_names) <= 20:  # beyond that the numbers are unreadable anyway
        threshold = matrix.max().item() / 2
        for (i, j), count in zip(matrix.nonzero().tolist(), matrix[matrix != 0].tolist(), strict=True):
            color = "white" if count > threshold else "black"
            ax.text(j, i, str(int(count)), ha="center", va="center", color=color, fontsize=7)
    return fig


def accuracy_latency_figure(
    names: Sequence[str], accuracies: Sequence[float], latencies_ms: Sequence[float], batch_size: int
) -> Figure:
    """One labelled point per model: what a student buys in speed and pays in accuracy."""
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(latencies_ms, accuracies, s=40)
    for name, x, y in zip(names, latencies_ms, accuracies, strict=True):
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"CPU latency per batch of {batch_size} (ms, median, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy vs. latency")
    ax.grid(True, alpha=0.3)
    return fig


def bar_figure(names: Sequence[str], values: Sequence[float], ylabel: str, title: str) -> Figure:
    fig = Figure(figsize=(max(4.0, 1.2 * len(names) + 2), 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(names)), values)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return fig
