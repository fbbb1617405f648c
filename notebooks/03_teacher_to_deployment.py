# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. From teacher to deployment: report and export
#
# Train a teacher and distil a student (briefly), compare them with `kd_lightning.report.build_report` (accuracy,
# agreement, calibration, size, MACs, CPU latency), then export the student alone to ONNX and TorchScript with
# `kd_lightning.export.export_network`, which checks each file against PyTorch. The same steps exist as commands:
# `kd-lightning report` and `kd-lightning export`.

# %%
import logging
import os
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

# KD_FAST=1 (used by the tests) cuts every run to a couple of epochs: the numbers then mean little.
FAST = os.environ.get("KD_FAST") == "1"
OUT = Path(os.environ.get("KD_NOTEBOOK_OUTPUT", "runs/notebooks")) / "03_teacher_to_deployment"
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="lightning")
warnings.filterwarnings("ignore", category=UserWarning)


# %%
class ValAccuracy(Callback):
    """Validation accuracy after every epoch, for the learning curves."""

    def __init__(self):
        self.values = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.values.append(trainer.callback_metrics["val/acc"].item())


def adam(lr):
    return lambda params: torch.optim.Adam(params, lr=lr)


def fit(module, data, epochs, name):
    """Train with a best-on-validation checkpoint; return (val curve, test accuracy of that checkpoint, its path)."""
    curve = ValAccuracy()
    best = ModelCheckpoint(OUT / name, "best", monitor="val/acc", mode="max", enable_version_counter=False)
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        callbacks=[curve, best],
        deterministic=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=OUT / name,
    )
    trainer.fit(module, data)
    test = trainer.test(module, data, ckpt_path=best.best_model_path, verbose=False)[0]
    return curve.values, test["test/acc"], Path(best.best_model_path)


# %%
from kd_lightning.data import DigitsDataModule
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner

TEACHER_EPOCHS = 2 if FAST else 15
STUDENT_EPOCHS = 2 if FAST else 30
STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})
L.seed_everything(0, verbose=False)
teacher = FrozenBackboneFinetuner(
    ModelSpec("small_cnn", kwargs={"width": 32}), num_classes=10, strategy="full", optimizer=adam(3e-3)
)
_, _, teacher_ckpt = fit(teacher, DigitsDataModule(), TEACHER_EPOCHS, "teacher")
TEACHER = ModelSpec("small_cnn", weights_path=str(teacher_ckpt), kwargs={"width": 32})
L.seed_everything(0, verbose=False)
student = DistillationModule(STUDENT, TEACHER, num_classes=10, temperature=4.0, alpha=0.9, optimizer=adam(1e-2))
_, _, student_ckpt = fit(student, DigitsDataModule(), STUDENT_EPOCHS, "student_kd")
L.seed_everything(0, verbose=False)
scratch = FrozenBackboneFinetuner(STUDENT, num_classes=10, strategy="full", optimizer=adam(1e-2))
_, _, scratch_ckpt = fit(scratch, DigitsDataModule(), STUDENT_EPOCHS, "student_scratch")

# %% [markdown]
# ## The report

# %%
from IPython.display import Image, Markdown, display

from kd_lightning.report import build_report

report_dir = OUT / "report"
reports = build_report(
    teacher_ckpt,
    [student_ckpt, scratch_ckpt],
    "digits",
    report_dir,
    names=["teacher", "student_kd", "student_scratch"],
    latency_repeats=5 if FAST else 50,
)
display(Markdown((report_dir / "report.md").read_text().split("![")[0]))
display(Image(filename=str(report_dir / "accuracy_vs_latency.png")))

# %% [markdown]
# `report.json` holds the same numbers for scripts. Latency is measured on this machine's CPU: on a shared machine,
# rerun before trusting small differences.

# %% [markdown]
# ## Export the student

# %%
import onnxruntime

from kd_lightning.export import export_network
from kd_lightning.loading import evaluation_batches, load_datamodule, load_network

network = load_network(student_ckpt)  # the student alone: no teacher, no loss adapters
batches = evaluation_batches(load_datamodule("digits"))
results = export_network(network, batches[0][0], OUT / "export", "student")
for result in results:
    print(
        f"{result.format:12s} {result.path}: max |diff| vs PyTorch = {result.max_abs_diff:.2g} "
        f"({'ok' if result.ok else 'FAILED'})"
    )
assert all(result.ok for result in results)

# %%
onnx_path = str(OUT / "export" / "student.onnx")
session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
correct = total = 0
for images, labels in batches:
    (logits,) = session.run(None, {"images": images.numpy()})
    correct += (torch.from_numpy(logits).argmax(-1) == labels).sum().item()
    total += len(labels)
print(
    f"ONNX student in onnxruntime: test accuracy {correct / total:.3f} on {total} images "
    f"(report: {reports[1].test_acc:.3f})"
)

# %% [markdown]
# The ONNX file takes plain `[0, 1]` images `[batch, 1, 8, 8]` (any batch size) and returns logits: the input
# normalisation travels inside the model.
