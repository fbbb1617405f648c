"""``kd-lightning export``: the trained network alone, to ONNX and TorchScript, checked against PyTorch.

Only ``module.network`` is exported (input normalisation + backbone + head): no teacher, loss
adapters or training-only heads, so the file takes plain ``[0, 1]`` images and returns logits.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from kd_lightning.errors import ConfigError
from kd_lightning.loading import check_fits_data, evaluation_batches, load_datamodule, load_trained

Format = Literal["onnx", "torchscript"]
FORMATS: tuple[Format, ...] = ("onnx", "torchscript")
# Float32 kernels differ between runtimes by accumulated rounding, typically ~1e-6 on logits.
DEFAULT_ATOL = 1e-4


@dataclass
class ExportResult:
    """One exported file and how far its outputs are from PyTorch's on the check batch."""

    format: str
    path: str
    max_abs_diff: float
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol


def export_onnx(network: nn.Module, example: torch.Tensor, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """Export with the ``torch.export``-based exporter (the default since torch 2.9; it needs ``onnxscript``,
    not the internet), batch size dynamic; returns an onnxruntime runner of the file."""
    import onnxruntime

    # Token ids (a text model) keep a free sequence length too: batches are padded to their longest text.
    text = not example.is_floating_point()
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")} if text else {0: torch.export.Dim("batch")}
    input_name = "tokens" if text else "images"
    torch.onnx.export(
        network,
        (example,),
        str(path),
        dynamo=True,
        input_names=[input_name],
        output_names=["logits"],
        dynamic_shapes={"x": dims},
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {input_name: x.numpy()})[0])


def export_torchscript(network: nn.Module, example: torch.Tensor, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """Trace to TorchScript (scripting would have to compile timm/torchvision internals; tracing does
    not). The trace fixes the input channel count to the example's; the batch size stays free."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit's deprecation notice
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(network, example)
        traced.save(str(path))
        loaded = torch.jit.load(str(path))
    return loaded


EXPORTERS = {"onnx": (export_onnx, ".onnx"), "torchscript": (export_torchscript, ".pt")}


def export_network(
    network: nn.Module,
    batch: torch.Tensor,
    output_dir: str | Path,
    name: str = "model",
    formats: tuple[str, ...] = FORMATS,
    atol: float = DEFAULT_ATOL,
) -> list[ExportResult]:
    """Export ``network`` in each format and compare each file's outputs with PyTorch's on ``batch``
    (a real batch of the data: parity on random noise says little about parity on images).

    Returns:
        One :class:`ExportResult` per format; ``ok`` is False when the difference exceeds ``atol``.
    """
    unknown = set(formats) - set(EXPORTERS)
    if unknown:
        raise ConfigError(f"unknown export formats {sorted(unknown)}; choose from {list(EXPORTERS)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    network = network.eval().cpu()
    batch = batch.cpu().float() if batch.is_floating_point() else batch.cpu()  # token ids stay integers
    # Token ids are also checked at a shorter length than the export example's, so a file whose
    # sequence axis was fixed during tracing fails the check instead of failing its users.
    checks = [batch] if batch.is_floating_point() else [batch, batch[:, : max(2, batch.shape[1] // 2)]]
    with torch.no_grad():
        references = [network(x) for x in checks]
    results = []
    with Progress(transient=True) as progress:
        task = progress.add_task("exporting", total=len(formats))
        for fmt in formats:
            exporter, suffix = EXPORTERS[fmt]
            progress.update(task, description=f"exporting {fmt}")
            path = output_dir / f"{name}{suffix}"
            with torch.no_grad():
                # Two samples, not one: torch.export specialises a size-1 dimension to a constant.
                runner = exporter(network, batch[:2], path)
                diff = max(
                    (runner(x).float() - ref).abs().max().item() for x, ref in zip(checks, references, strict=True)
                )
            results.append(ExportResult(fmt, str(path), diff, atol))
            progress.advance(task)
    return results


def export(
    checkpoint: Path,
    *,
    data: str = "digits",
    output: Path = Path("runs/export"),
    name: str | None = None,
    formats: tuple[Format, ...] = FORMATS,
    atol: float = DEFAULT_ATOL,
) -> list[ExportResult]:
    """Export the trained network alone to ONNX and TorchScript, each checked against PyTorch on a real batch.

    The files take the images the network was trained on (channels and size checked against the
    checkpoint), with a free batch size. Exits with status 1 when a file's outputs differ from
    PyTorch's by more than ``atol``.

    Args:
        checkpoint: a kd_lightning Lightning checkpoint (student or finetuned).
        data: config file with a data: section, or a data set name (digits, mnist, fashionmnist, cifar10, cifar100).
        output: folder for the exported files.
        name: file name stem (default: the checkpoint's).
        formats: formats to write.
        atol: largest accepted |exported - PyTorch| on the check batch.
    """
    if not formats:
        raise ConfigError("--formats needs at least one of " + ", ".join(FORMATS))
    console = Console(soft_wrap=True)
    trained = load_trained(checkpoint)
    datamodule = load_datamodule(data)
    images, _ = evaluation_batches(datamodule)[0]
    check_fits_data(trained, datamodule, images)
    results = export_network(trained.network, images, output, name or checkpoint.stem, tuple(formats), atol)
    for result in results:
        status = "[green]ok[/green]" if result.ok else "[red]FAILED[/red]"
        console.print(
            f"{result.format:12s} {result.path}  max |diff| = {result.max_abs_diff:.3g} "
            f"(batch of {len(images)}, input {tuple(images.shape[1:])}, atol {result.atol:g}) {status}"
        )
    if not all(r.ok for r in results):
        sys.exit(1)
    return results
