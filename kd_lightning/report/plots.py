"""Matplotlib figures of the report (no pyplot: safe headless)."""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure


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
