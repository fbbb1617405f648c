"""Shared pieces of the performance benchmarks: offline Fashion-MNIST, step timing, reporting."""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import statistics
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from kd_lightning.data import FashionMNISTDataModule, ImageClassificationDataModule, TensorImageDataset
from kd_lightning.report.measure import cpu_latency_ms

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR = Path("data")


def quiet() -> None:
    """Benchmarks print their own table; silence Lightning's banners and known benign warnings."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("WANDB_MODE", "disabled")


class RandomFashionShaped(ImageClassificationDataModule):
    """60,000/10,000 random 28×28 uint8 images with random labels: the fallback when the real data is absent."""

    class_names = [str(i) for i in range(10)]

    def load_split(self, split: str) -> TensorImageDataset:
        n = 60_000 if split == "train" else 10_000
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
        return TensorImageDataset(images, torch.randint(0, 10, (n,), generator=g))


def fashion_mnist(**kwargs) -> tuple[ImageClassificationDataModule, str]:
    """Real Fashion-MNIST from the Debian package (decompressed once into ``data/``), else random data."""
    raw = DATA_DIR / "FashionMNIST" / "raw"
    if not (raw / "train-images-idx3-ubyte").exists() and DEBIAN_FASHION_MNIST.exists():
        raw.mkdir(parents=True, exist_ok=True)
        for gz in DEBIAN_FASHION_MNIST.glob("*.gz"):
            with gzip.open(gz) as src, open(raw / gz.stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
    if (raw / "train-images-idx3-ubyte").exists():
        return FashionMNISTDataModule(data_dir=str(DATA_DIR), **kwargs), "Fashion-MNIST (real)"
    return RandomFashionShaped(**kwargs), "random Fashion-MNIST-shaped data (accuracy meaningless)"


def trainer(**overrides) -> L.Trainer:
    options = dict(
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    options.update(overrides)
    return L.Trainer(**options)


class EpochTimer(L.Callback):
    """Wall time of each training epoch (training batches only, validation excluded)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.times.append(time.perf_counter() - self._start)


class StepTimer(L.Callback):
    """Interval between consecutive batch starts (data + step + logging), after ``warmup`` steps."""

    def __init__(self, warmup: int = 2) -> None:
        self.warmup = warmup
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())

    @property
    def median(self) -> float:
        intervals = [b - a for a, b in zip(self.starts[:-1], self.starts[1:], strict=True)]
        return statistics.median(intervals[self.warmup :])


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def header(title: str) -> None:
    print(f"\n== {title} ==")
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU cores {os.cpu_count()}, "
        f"load average {os.getloadavg()[0]:.1f} (shared machine: absolute times are context only)"
    )


def median_epoch_times(times: dict[str, list[float]]) -> dict[str, float]:
    """Each configuration's median epoch time, the first epoch (warm-up, one-off work) left out."""
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def print_ratios(medians: dict[str, float], pairs: list[tuple[str, ...]]) -> None:
    """``a / b`` of median epoch times for each pair ``(a, b[, goal])`` whose two configurations both ran."""
    print("\nratios of median epoch times (goal in brackets):")
    for a, b, *goal in pairs:
        if a in medians and b in medians:
            print(f"  {a} / {b}: {medians[a] / medians[b]:.3f} {' '.join(goal)}".rstrip())


def latency_ranges(
    networks: dict[str, torch.nn.Module], example: torch.Tensor, rounds: int
) -> dict[str, dict[str, float]]:
    """Batch-1 CPU latency (ms) of each network on ``example`` as a min-median-max range over ``rounds``. Each round
    times every network once, in turn, so load from other jobs on a shared machine shifts them all alike."""
    times: dict[str, list[float]] = {name: [] for name in networks}
    for _ in range(rounds):
        for name, network in networks.items():
            times[name].append(cpu_latency_ms(network, example, batch_size=1))
    return {
        name: {"min": round(min(t), 3), "median": round(statistics.median(t), 3), "max": round(max(t), 3)}
        for name, t in times.items()
    }
