"""``kd-lightning quickstart``: the whole embedded pipeline on scikit-learn's digits in about a minute.

Teacher (a small CNN trained from scratch) → a student ~55× smaller distilled from it, against the
same student trained on labels alone. Students are trained with several seeds because a single
run of a tiny network on 1,797 images differs by about a point from seed to seed.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from rich.console import Console
from rich.table import Table

from kd_lightning.data import DigitsDataModule
from kd_lightning.errors import ConfigError
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner, SupervisedModule
from kd_lightning.run_lock import RunFolderLock

TEACHER = ModelSpec("small_cnn", kwargs={"width": 32})
STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})
TEACHER_EPOCHS = 15
STUDENT_EPOCHS = 30


def _adam(lr: float):
    import torch

    return lambda params: torch.optim.Adam(params, lr=lr)


def _fit_and_test(module: SupervisedModule, epochs: int, out_dir: Path, seed: int) -> tuple[float, Path]:
    """Train with a best-on-val checkpoint, test that checkpoint, return (test accuracy, its path)."""
    L.seed_everything(seed, verbose=False)
    data = DigitsDataModule(batch_size=64, seed=seed)
    checkpoint = ModelCheckpoint(
        dirpath=out_dir, filename="best", monitor="val/acc", mode="max", enable_version_counter=False
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        deterministic=True,
        logger=False,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out_dir,
    )
    trainer.fit(module, data)
    result = trainer.test(module, data, ckpt_path=checkpoint.best_model_path, verbose=False)
    return float(result[0]["test/acc"]), Path(checkpoint.best_model_path)


def _params(module: SupervisedModule) -> int:
    return sum(p.numel() for p in module.network.parameters())


def run(
    output: Path,
    seeds: tuple[int, ...] = (0, 1, 2),
    student_epochs: int = STUDENT_EPOCHS,
    teacher_epochs: int = TEACHER_EPOCHS,
) -> dict[str, Any]:
    """Run the pipeline and write ``output/results.json``; returns the same dictionary."""
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    L.seed_everything(seeds[0], verbose=False)  # before construction: the seed fixes the initial weights
    teacher = FrozenBackboneFinetuner(TEACHER, num_classes=10, strategy="full", optimizer=_adam(3e-3))
    teacher_acc, teacher_ckpt = _fit_and_test(teacher, teacher_epochs, output / "teacher", seed=seeds[0])
    teacher_from_ckpt = ModelSpec(TEACHER.name, weights_path=str(teacher_ckpt), kwargs=TEACHER.kwargs)

    scratch, distilled = [], []
    for seed in seeds:
        L.seed_everything(seed, verbose=False)
        baseline = FrozenBackboneFinetuner(STUDENT, num_classes=10, strategy="full", optimizer=_adam(1e-2))
        scratch.append(_fit_and_test(baseline, student_epochs, output / f"student_scratch/seed{seed}", seed)[0])
        L.seed_everything(seed, verbose=False)
        student = DistillationModule(
            STUDENT, teacher_from_ckpt, num_classes=10, temperature=4.0, alpha=0.9, optimizer=_adam(1e-2)
        )
        distilled.append(_fit_and_test(student, student_epochs, output / f"student_distilled/seed{seed}", seed)[0])

    results = {
        "teacher": {"test_acc": teacher_acc, "params": _params(teacher)},
        "student_scratch": _summary(scratch, _params(baseline)),
        "student_distilled": _summary(distilled, _params(student)),
        "seeds": list(seeds),
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    (output / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _summary(accuracies: list[float], params: int) -> dict[str, Any]:
    std = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    return {
        "test_acc": statistics.mean(accuracies),
        "test_acc_std": std,
        "test_acc_per_seed": accuracies,
        "params": params,
    }


def print_table(results: dict[str, Any], console: Console | None = None) -> None:
    table = Table(title=f"kd_lightning quick-start on digits (students: mean ± std over seeds {results['seeds']})")
    table.add_column("model")
    table.add_column("test accuracy", justify="right")
    table.add_column("parameters", justify="right")
    for name in ("teacher", "student_scratch", "student_distilled"):
        row = results[name]
        std = f" ± {row['test_acc_std']:.4f}" if "test_acc_std" in row else ""
        table.add_row(name, f"{row['test_acc']:.4f}{std}", f"{row['params']:,}")
    (console or Console()).print(table)


def quickstart(
    *,
    output: Path = Path("runs/quickstart"),
    seeds: tuple[int, ...] = (0, 1, 2),
    student_epochs: int = STUDENT_EPOCHS,
    teacher_epochs: int = TEACHER_EPOCHS,
) -> dict[str, Any]:
    """Train a digits teacher, then a ~55x smaller student with and without distillation (about a minute).

    Args:
        output: folder for the checkpoints and results.json.
        seeds: seeds of the students (each trained with and without the teacher).
        student_epochs: training epochs of each student.
        teacher_epochs: training epochs of the teacher.
    """
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    for name, epochs in (("student_epochs", student_epochs), ("teacher_epochs", teacher_epochs)):
        if epochs < 1:
            raise ConfigError(f"--{name} must be >= 1, got {epochs}")
    # Lightning's per-fit banners and hints would bury the one table this command is for.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")
    with RunFolderLock([output]):
        results = run(output, tuple(seeds), student_epochs, teacher_epochs)
    print_table(results)
    print(f"results written to {output / 'results.json'} ({results['wall_time_s']} s)")
    return results
