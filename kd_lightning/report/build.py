"""Build the teacher-vs-students report: measure every model, then write report.md, report.json, plots."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress

from kd_lightning.data import ImageClassificationDataModule
from kd_lightning.errors import ConfigError, NonFiniteError
from kd_lightning.loading import check_fits_data, evaluation_batches, load_datamodule, load_trained
from kd_lightning.report import measure
from kd_lightning.report.plots import accuracy_latency_figure, bar_figure

LATENCY_BATCH_SIZES = (1, 64)


@dataclass
class ModelReport:
    """Every number the report gives for one model (``agreement``/``kl_from_teacher``: students only)."""

    name: str
    role: str
    checkpoint: str
    test_acc: float
    ece: float
    params: int
    macs: int
    size_bytes: int
    latency_ms: dict[str, float]
    agreement: float | None = None
    kl_from_teacher: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def build_report(
    teacher: str | Path,
    students: list[str | Path],
    data: str | Path | ImageClassificationDataModule,
    output: str | Path,
    names: list[str] | None = None,
    latency_repeats: int = 20,
) -> list[ModelReport]:
    """Measure the teacher and each student on ``data``'s test split; write the report to ``output``.

    Writes ``report.md``, ``report.json``, ``accuracy_vs_latency.png``, ``accuracy.png``, ``params.png``
    and each network's state dict under ``weights/`` (the files whose size is reported).

    Args:
        teacher: the teacher's kd_lightning checkpoint.
        students: students' checkpoints (distilled, or trained from scratch for comparison).
        data: a DataModule, a config file with a ``data:`` section, or a data set name (``digits``).
        output: folder for the report.
        names: display names, teacher first (default: from the checkpoint paths).
        latency_repeats: timed forward passes per batch size (the median is reported).
    """
    output = Path(output)
    checkpoints = [Path(teacher), *map(Path, students)]
    if not students:
        raise ConfigError("--students needs at least one student checkpoint")
    names = names or _default_names(checkpoints)
    if len(names) != len(checkpoints):
        raise ConfigError(
            f"--names gives {len(names)} names for {len(checkpoints)} models (the teacher first, then each student)"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"--names must differ from each other (they name the weight files), got {names}")
    if latency_repeats < 1:
        raise ConfigError(f"--latency_repeats must be >= 1, got {latency_repeats}")
    datamodule = data if isinstance(data, ImageClassificationDataModule) else load_datamodule(data)
    batches = evaluation_batches(datamodule)
    targets = torch.cat([y for _, y in batches])
    example = batches[0][0][:1]
    # Every checkpoint is read and checked against the data before the first file is written.
    trained = [load_trained(path) for path in checkpoints]
    for model in trained:
        check_fits_data(model, datamodule, batches[0][0])
    (output / "weights").mkdir(parents=True, exist_ok=True)

    reports: list[ModelReport] = []
    teacher_logits = None
    with Progress(transient=True) as progress:
        task = progress.add_task("measuring", total=len(checkpoints))
        for index, (name, path, model) in enumerate(zip(names, checkpoints, trained, strict=True)):
            progress.update(task, description=f"measuring {name}")
            network = model.network
            logits = measure.predict_logits(network, batches)
            if not torch.isfinite(logits).all():
                raise NonFiniteError(f"{path} gives non-finite outputs on the test images: the weights are damaged")
            if index == 0:
                teacher_logits = logits
            scores = measure.quality(logits, targets, None if index == 0 else teacher_logits)
            latency = {
                f"batch_{b}": measure.cpu_latency_ms(network, example, b, repeats=latency_repeats)
                for b in LATENCY_BATCH_SIZES
            }
            reports.append(
                ModelReport(
                    name=name,
                    role="teacher" if index == 0 else "student",
                    checkpoint=str(path),
                    params=measure.count_parameters(network),
                    macs=measure.count_macs(network, example),
                    size_bytes=measure.state_dict_bytes(network, output / "weights" / f"{name}.pt"),
                    latency_ms=latency,
                    test_acc=scores["test_acc"],
                    ece=scores["ece"],
                    agreement=scores.get("agreement"),
                    kl_from_teacher=scores.get("kl_from_teacher"),
                )
            )
            progress.advance(task)
    _write(reports, output, len(targets), torch.get_num_threads())
    return reports


def _default_names(checkpoints: list[Path]) -> list[str]:
    """``runs/digits/distill/best.ckpt`` → ``distill``; a descriptive file stem is kept as is."""
    names: list[str] = []
    for path in checkpoints:
        name = path.parent.name if path.stem in ("best", "last") or path.stem.startswith("epoch=") else path.stem
        names.append(name if name not in names else f"{name}_{len(names)}")
    return names


def _write(reports: list[ModelReport], output: Path, num_test: int, threads: int) -> None:
    payload = {
        "test_images": num_test,
        "cpu_threads": threads,
        "latency_batch_sizes": list(LATENCY_BATCH_SIZES),
        "models": [asdict(r) for r in reports],
    }
    (output / "report.json").write_text(json.dumps(payload, indent=2))
    names = [r.name for r in reports]
    accuracies = [r.test_acc for r in reports]
    plots = {
        "accuracy_vs_latency.png": accuracy_latency_figure(
            names, accuracies, [r.latency_ms["batch_1"] for r in reports], batch_size=1
        ),
        "accuracy.png": bar_figure(names, accuracies, "test accuracy", "test accuracy"),
        "params.png": bar_figure(names, [r.params for r in reports], "parameters", "parameters"),
    }
    for filename, figure in plots.items():
        figure.savefig(output / filename, dpi=110)
    (output / "report.md").write_text(_markdown(reports, num_test, threads))


def _markdown(reports: list[ModelReport], num_test: int, threads: int) -> str:
    teacher = reports[0]
    header = (
        "| model | role | test acc | agreement w/ teacher | KL(teacher‖model) | ECE | parameters | MACs "
        "| size | latency b=1 (ms) | latency b=64 (ms) |\n|" + " --- |" * 11
    )
    rows = []
    for r in reports:
        agreement = "—" if r.agreement is None else f"{r.agreement:.4f}"
        kl = "—" if r.kl_from_teacher is None else f"{r.kl_from_teacher:.4f}"
        rows.append(
            f"| {r.name} | {r.role} | {r.test_acc:.4f} | {agreement} | {kl} | {r.ece:.4f} | {r.params:,} "
            f"| {r.macs:,} | {r.size_bytes / 1024:.1f} KiB | {r.latency_ms['batch_1']:.3f} "
            f"| {r.latency_ms['batch_64']:.3f} |"
        )
    ratios = [
        f"- **{r.name}**: {teacher.params / max(r.params, 1):.1f}× fewer parameters, "
        f"{teacher.latency_ms['batch_1'] / r.latency_ms['batch_1']:.2f}× the teacher's speed at batch 1, "
        f"{100 * (r.test_acc - teacher.test_acc):+.2f} points of accuracy"
        for r in reports[1:]
    ]
    return "\n".join(
        [
            "# Teacher vs. students",
            "",
            f"Test split of {num_test} images. Latency: median CPU wall time of one forward pass "
            f"({threads} CPU thread{'s' if threads != 1 else ''}, after warm-up). "
            "MACs: one image. Size: the saved state dict.",
            "",
            header,
            *rows,
            "",
            "## Students against the teacher",
            "",
            *ratios,
            "",
            "![accuracy vs. latency](accuracy_vs_latency.png)",
            "",
            "![accuracy](accuracy.png) ![parameters](params.png)",
            "",
        ]
    )


def report(
    *,
    teacher: Path,
    students: list[Path],
    data: str = "digits",
    output: Path = Path("runs/report"),
    names: list[str] | None = None,
    latency_repeats: int = 20,
    threads: int | None = None,
) -> list[ModelReport]:
    """Compare a teacher and its students on one test set: report.md, report.json and plots.

    Args:
        teacher: the teacher's checkpoint.
        students: student checkpoints (distilled, or trained from scratch for comparison).
        data: config file with a data: section, or a data set name (digits, mnist, fashionmnist, cifar10, cifar100).
        output: folder for the report.
        names: display names, teacher first (default: from the checkpoint paths).
        latency_repeats: timed forward passes per batch size (the median is reported).
        threads: CPU threads for the latency runs (default: torch's).
    """
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        reports = build_report(teacher, list(students), data, output, names, latency_repeats)
    finally:
        torch.set_num_threads(previous)
    console = Console(soft_wrap=True)
    for r in reports:
        console.print(
            f"{r.name:>16s}  acc {r.test_acc:.4f}  params {r.params:>9,}  "
            f"latency b=1 {r.latency_ms['batch_1']:.3f} ms  b=64 {r.latency_ms['batch_64']:.3f} ms"
        )
    console.print(f"report written to {Path(output) / 'report.md'}")
    return reports
