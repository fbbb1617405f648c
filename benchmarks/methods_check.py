"""Short CPU check that every distillation method trains: loss goes down, accuracy beats chance.

A small CNN teacher is trained on scikit-learn's digits (8×8, 10 classes), then a 4-wide
student is distilled from it once per method with the paper's loss weights. The table lists
the mean training loss of the first and last epoch and the student's test accuracy (chance is
10%). It is a smoke test of the methods on real data, not a benchmark of their merits.

    PYTHONPATH=. python benchmarks/methods_check.py [--epochs 10]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import lightning as L
import torch

from kd_lightning.data import DigitsDataModule
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner

TEACHER = ModelSpec("small_cnn", kwargs={"width": 16})
STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})
# small_cnn modules: "5" ends the first stage (8×8 maps), "12" the second (4×4), "backbone" is pooled.
STAGES = {"student_layers": ["5", "12"], "teacher_layers": ["5", "12"]}
LAST = {"student_layers": ["12"], "teacher_layers": ["12"]}
CE = {"name": "ce", "weight": 1.0}

METHODS: dict[str, list[dict]] = {
    "ce only": [CE],
    "kd": [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "kwargs": {"temperature": 4.0}}],
    "dkd": [CE, {"name": "dkd", "kwargs": {"beta": 8.0, "temperature": 4.0}}],
    "dist": [CE, {"name": "dist", "kwargs": {"beta": 2.0, "gamma": 2.0, "temperature": 4.0}}],
    "fitnet": [CE, {"name": "fitnet", "weight": 100.0, "kwargs": LAST}],
    "at": [CE, {"name": "at", "weight": 1000.0, "kwargs": STAGES}],
    # AT averages over map positions, so its CIFAR weight (32×32 maps) is far too large for 8×8 digits.
    "at (weight 1)": [CE, {"name": "at", "weight": 1.0, "kwargs": STAGES}],
    "sp": [CE, {"name": "sp", "weight": 3000.0, "kwargs": LAST}],
    "rkd": [CE, {"name": "rkd", "weight": 1.0}],
    "pkt": [CE, {"name": "pkt", "weight": 30000.0}],
    "crd": [CE, {"name": "crd", "weight": 0.8, "kwargs": {"num_negatives": 512}}],
}


class EpochLoss(L.Callback):
    """Mean training loss of each epoch."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self._sum, self._count = 0.0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sum += float(outputs["loss"])
        self._count += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append(self._sum / self._count)
        self._sum, self._count = 0.0, 0


def trainer(epochs: int, *callbacks: L.Callback) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        callbacks=list(callbacks),
    )


def test_accuracy(fit: L.Trainer, module: L.LightningModule, data: DigitsDataModule) -> float:
    return fit.test(module, data, verbose=False)[0]["test/acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="student epochs per method")
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--methods", nargs="*", default=list(METHODS), help="subset of the methods to run")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)

    L.seed_everything(0, verbose=False)
    data = DigitsDataModule(batch_size=64)
    teacher = FrozenBackboneFinetuner(TEACHER, num_classes=10, strategy="full", optimizer=_adam)
    fit = trainer(args.teacher_epochs)
    fit.fit(teacher, data)
    teacher_acc = test_accuracy(fit, teacher, data)
    path = "/tmp/kd_lightning_methods_check_teacher.pt"
    torch.save(teacher.network.state_dict(), path)
    teacher_spec = ModelSpec(TEACHER.name, weights_path=path, kwargs=TEACHER.kwargs)
    print(f"teacher small_cnn(width=16): test acc {teacher_acc:.3f}, {args.teacher_epochs} epochs\n")

    print("| method | loss terms (weight) | train loss, epoch 1 | train loss, last epoch | test acc | seconds |")
    print("|---|---|---|---|---|---|")
    for method in args.methods:
        losses = METHODS[method]
        L.seed_everything(0, verbose=False)
        data = DigitsDataModule(batch_size=64, return_indices=method == "crd")
        if method == "crd":
            data.setup("fit")
            losses = [losses[0], {**losses[1], "kwargs": {**losses[1]["kwargs"], "num_samples": len(data.train_set)}}]
        module = DistillationModule(
            STUDENT, teacher_spec, num_classes=10, losses=losses, input_shape=(1, 8, 8), optimizer=_adam
        )
        record = EpochLoss()
        fit = trainer(args.epochs, record)
        start = time.perf_counter()
        fit.fit(module, data)
        seconds = time.perf_counter() - start
        acc = test_accuracy(fit, module, data)
        terms = " + ".join(f"{t['name']} ({t.get('weight', 1.0):g})" for t in losses)
        print(
            f"| {method} | {terms} | {record.epochs[0]:.4f} | {record.epochs[-1]:.4f} | {acc:.3f} | {seconds:.0f} |",
            flush=True,
        )


def _adam(params):
    return torch.optim.Adam(params, lr=0.01)


if __name__ == "__main__":
    main()
