"""What the report measures about one network: quality on the test set, size, compute and CPU latency."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchmetrics.classification import MulticlassCalibrationError

from kd_lightning.metrics.classification import ECE_BINS
from kd_lightning.metrics.distillation import teacher_student_kl


@torch.no_grad()
def predict_logits(network: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([network(x) for x, _ in batches]).float()


def quality(
    logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor | None = None
) -> dict[str, float]:
    """Test accuracy, ECE and, against a teacher, top-1 agreement and mean KL(teacher ‖ model)."""
    num_classes = logits.shape[-1]
    ece = MulticlassCalibrationError(num_classes, n_bins=ECE_BINS, norm="l1")
    result = {
        "test_acc": (logits.argmax(-1) == targets).float().mean().item(),
        "ece": ece(logits, targets).item(),
    }
    if teacher_logits is not None:
        result["agreement"] = (logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean().item()
        result["kl_from_teacher"] = teacher_student_kl(logits, teacher_logits).mean().item()
    return result


def count_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def count_macs(network: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on a single image (PyTorch's FLOP counter counts a
    multiply-add as 2 FLOPs)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(example[:1])
    return counter.get_total_flops() // 2


def state_dict_bytes(network: nn.Module, path: Path | None = None) -> int:
    """Size on disk of the network's saved state dict (written to ``path``, or a temporary file)."""
    if path is not None:
        torch.save(network.state_dict(), path)
        return path.stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        return state_dict_bytes(network, Path(tmp) / "weights.pt")


@torch.inference_mode()
def cpu_latency_ms(
    network: nn.Module, example: torch.Tensor, batch_size: int, warmup: int = 3, repeats: int = 20
) -> float:
    """Median wall time of one forward pass on a CPU batch of ``batch_size`` (after ``warmup`` passes).

    The median, not the mean: on a shared machine a few runs are slowed by other processes.
    """
    network = network.eval().cpu()
    x = example[:1].cpu().expand(batch_size, *example.shape[1:]).contiguous()
    for _ in range(warmup):
        network(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        network(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0
