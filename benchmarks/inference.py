"""Student vs. teacher at inference: latency at batch 1 and 64, parameters, size on disk.

    python -m benchmarks.inference [--teacher resnet8x4] [--student resnet8] [--image-size 28]

Latency is the median of repeated eval-mode forwards under ``torch.inference_mode`` on
Fashion-MNIST-shaped input (1×28×28, the input adapter expands it to the nets' 3 channels);
size on disk is the saved ``state_dict`` file.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks._common import header, median_time, quiet
from kd_lightning.models import create_model


def static_stats(model: torch.nn.Module) -> dict[str, float]:
    stats = {"params (M)": sum(p.numel() for p in model.parameters()) / 1e6}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.pt"
        torch.save(model.state_dict(), path)
        stats["disk (MB)"] = path.stat().st_size / 1e6
    return stats


def latencies(models: list[torch.nn.Module], batch: int, image_size: int, repeats: int) -> list[float]:
    """Median latency (ms) of each model, timed alternately so load drift hits all of them alike."""
    x = torch.rand(batch, 1, image_size, image_size)
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for model in models:
            model(x)  # warm-up
        for _ in range(repeats):
            for model, record in zip(models, times, strict=True):
                record.append(median_time(lambda: model(x), repeats=1, warmup=0) * 1000)  # noqa: B023
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", default="resnet8x4")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    quiet()
    header(f"inference, {args.image_size}x{args.image_size} grayscale input")
    models = [create_model(name, num_classes=10).eval() for name in (args.teacher, args.student)]
    teacher, student = (static_stats(m) for m in models)
    for batch in (1, 64):
        teacher[f"batch {batch} (ms)"], student[f"batch {batch} (ms)"] = latencies(
            models, batch, args.image_size, args.repeats
        )
    for stats in (teacher, student):
        stats["images/s @64"] = 64_000 / stats["batch 64 (ms)"]
    print(f"{'':<14} {'teacher ' + args.teacher:>18} {'student ' + args.student:>18} {'teacher/student':>16}")
    for key in teacher:
        print(f"{key:<14} {teacher[key]:18.3f} {student[key]:18.3f} {teacher[key] / student[key]:15.2f}x")


if __name__ == "__main__":
    main()
