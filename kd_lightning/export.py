"""``kd-lightning export``: the trained network alone, to ONNX and TorchScript, checked against PyTorch.

Only ``module.network`` is exported (input normalisation + backbone + head): no teacher, loss
adapters or training-only heads, so the file takes plain ``[0, 1]`` images and returns logits.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from kd_lightning.loading import evaluation_batches, load_datamodule, load_network

FORMATS = ("onnx", "torchscript")
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

    batch = torch.export.Dim("batch")
    torch.onnx.export(
        network,
        (example,),
        str(path),
        dynamo=True,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: batch}},
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


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
        raise ValueError(f"unknown export formats {sorted(unknown)}; choose from {list(EXPORTERS)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    network = network.eval().cpu()
    batch = batch.cpu().float()
    with torch.no_grad():
        reference = network(batch)
    results = []
    with Progress(transient=True) as progress:
        task = progress.add_task("exporting", total=len(formats))
        for fmt in formats:
            exporter, suffix = EXPORTERS[fmt]
            progress.update(task, description=f"exporting {fmt}")
            path = output_dir / f"{name}{suffix}"
            with torch.no_grad():
                runner = exporter(network, batch[:1], path)
                diff = (runner(batch).float() - reference).abs().max().item()
            results.append(ExportResult(fmt, str(path), diff, atol))
            progress.advance(task)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kd-lightning export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a kd_lightning Lightning checkpoint (student or finetuned)")
    parser.add_argument("--data", default="digits", help="config file with a data: section, or a data set name")
    parser.add_argument("--output", type=Path, default=Path("runs/export"), help="folder for the exported files")
    parser.add_argument("--name", default=None, help="file name stem (default: the checkpoint's)")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="largest accepted |exported - PyTorch|")
    args = parser.parse_args(argv)
    console = Console(soft_wrap=True)
    network = load_network(args.checkpoint)
    images, _ = evaluation_batches(load_datamodule(args.data))[0]
    results = export_network(
        network, images, args.output, args.name or args.checkpoint.stem, tuple(args.formats), args.atol
    )
    for result in results:
        status = "[green]ok[/green]" if result.ok else "[red]FAILED[/red]"
        console.print(
            f"{result.format:12s} {result.path}  max |diff| = {result.max_abs_diff:.3g} "
            f"(batch of {len(images)}, atol {result.atol:g}) {status}"
        )
    if not all(r.ok for r in results):
        sys.exit(1)
