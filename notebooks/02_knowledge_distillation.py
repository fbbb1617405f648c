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
# # 2. Knowledge distillation: teacher → student
#
# A large teacher is trained first; a student ~55× smaller is then trained on `(1 − α)·CE(labels) + α·T²·KL(teacher_T ‖
# student_T)` (Hinton et al., 2015) by `DistillationModule`, and compared with the same student trained on labels alone.
# A sweep over the temperature `T` closes the notebook.

# %%
import logging
import os
import warnings
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

# KD_FAST=1 (used by the tests) cuts every run to a couple of epochs: the numbers then mean little.
FAST = os.environ.get("KD_FAST") == "1"
OUT = Path(os.environ.get("KD_NOTEBOOK_OUTPUT", "runs/notebooks")) / "02_knowledge_distillation"
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
_, teacher_acc, teacher_ckpt = fit(teacher, DigitsDataModule(), TEACHER_EPOCHS, "teacher")
TEACHER = ModelSpec("small_cnn", weights_path=str(teacher_ckpt), kwargs={"width": 32})
print(f"teacher: test accuracy {teacher_acc:.3f}")

# %% [markdown]
# ## Student: distilled vs. trained on labels alone

# %%
L.seed_everything(0, verbose=False)
scratch = FrozenBackboneFinetuner(STUDENT, num_classes=10, strategy="full", optimizer=adam(1e-2))
scratch_curve, scratch_acc, _ = fit(scratch, DigitsDataModule(), STUDENT_EPOCHS, "student_scratch")
L.seed_everything(0, verbose=False)
student = DistillationModule(STUDENT, TEACHER, num_classes=10, temperature=4.0, alpha=0.9, optimizer=adam(1e-2))
kd_curve, kd_acc, _ = fit(student, DigitsDataModule(), STUDENT_EPOCHS, "student_kd")


def params(module):
    return sum(p.numel() for p in module.network.parameters())


print(f"teacher {params(teacher):,} parameters, student {params(student):,}")
print(f"test accuracy: scratch {scratch_acc:.3f}, distilled {kd_acc:.3f}, teacher {teacher_acc:.3f}")

plt.figure(figsize=(6, 4))
plt.plot(range(1, len(scratch_curve) + 1), scratch_curve, label="student from labels")
plt.plot(range(1, len(kd_curve) + 1), kd_curve, label="student distilled (T=4, α=0.9)")
plt.axhline(teacher_acc, color="grey", linestyle=":", label="teacher (test)")
plt.xlabel("epoch")
plt.ylabel("validation accuracy")
plt.title("KD vs. scratch")
plt.legend()
plt.show()

# %% [markdown]
# ## Temperature sweep
#
# `T = 1` uses the teacher's plain probabilities; larger `T` reveals how it ranks the wrong classes ("dark knowledge").
# The KD term is scaled by `T²` so its gradients keep their size.

# %%
TEMPERATURES = [1.0, 4.0] if FAST else [1.0, 2.0, 4.0, 8.0, 16.0]
sweep = {4.0: kd_acc}  # T = 4 is the distilled student above: same seed, same settings
for temperature in [t for t in TEMPERATURES if t not in sweep]:
    L.seed_everything(0, verbose=False)
    module = DistillationModule(
        STUDENT, TEACHER, num_classes=10, temperature=temperature, alpha=0.9, optimizer=adam(1e-2)
    )
    _, sweep[temperature], _ = fit(module, DigitsDataModule(), STUDENT_EPOCHS, f"sweep_T{temperature:g}")
    print(f"T={temperature:>4g}: test accuracy {sweep[temperature]:.3f}")

plt.figure(figsize=(6, 4))
plt.plot(sorted(sweep), [sweep[t] for t in sorted(sweep)], marker="o", label="distilled student")
plt.axhline(scratch_acc, color="tab:red", linestyle="--", label="student from labels")
plt.axhline(teacher_acc, color="grey", linestyle=":", label="teacher")
plt.xscale("log", base=2)
plt.xlabel("temperature T")
plt.ylabel("test accuracy")
plt.legend()
plt.title("temperature sweep (α = 0.9, one seed)")
plt.show()

# %% [markdown]
# One seed per point: a tiny network on 1,797 images moves by about a point from seed to seed, so read the trend, not
# single differences (`kd-lightning quickstart` averages seeds).

# %% [markdown]
# ## On real data: few labels, many unlabeled images (Fashion-MNIST)
#
# Digits are a toy. The case people bring to this library is *few labels, many unlabeled images, a pretrained
# backbone and a device that needs a tiny model*: a linear probe on a frozen ImageNet EfficientNet-Lite0 (3.4 M
# parameters) learns from `k` labelled images per class, then teaches a 4,370-parameter CNN through all 60,000
# training images, most of them unlabeled (Hinton's transfer set). It is measured the way a reviewer of a
# semi-supervised paper would: every seed draws its own labelled subset and trains its own teacher, no stage reads
# a label outside the budget (no validation split, schedules fixed in advance), and the distilled student is
# compared with the same student alone, self-trained on the teacher's hard labels, trained by FixMatch without a
# teacher, and with the teacher itself. Hatched bars are variants added after the declared student trailed
# self-training, reported as post hoc: `distilled_t1` (T=1), the pair `distilled_views` / `pseudo_label_views`
# (soft / hard teacher targets on the same augmented view the student sees) and the pair `distilled_long` /
# `pseudo_label_long` (30 epochs instead of 10). The runs take hours on a CPU, so this cell plots the recorded
# results of `python benchmarks/few_labels.py` (full 10,000-image test set; one dot per seed, bars at the mean;
# seeds still running are missing; paired differences and commands in `benchmarks/RESULTS.md`) instead of training.

# %%
import json  # noqa: E402
import statistics  # noqa: E402

results_file = Path("../benchmarks/results/few_labels.json")
if not results_file.exists():  # run from the repository root rather than notebooks/
    results_file = Path("benchmarks/results/few_labels.json")
few_labels = json.loads(results_file.read_text())
regimes = [regime for regime in ("k10", "k100") if few_labels.get(regime)]
models = list(dict.fromkeys(model for regime in regimes for model in few_labels[regime]))  # the driver's order
print(f"labels any stage of one run read: {few_labels['protocol']['labels_used']}")
fig, axes = plt.subplots(1, max(1, len(regimes)), figsize=(5 * max(1, len(regimes)), 3.8), squeeze=False)
for ax, regime in zip(axes[0], regimes, strict=False):
    for i, model in enumerate(models):
        entry = few_labels[regime].get(model)
        if entry is None:
            continue
        accuracies = entry["test_acc"]
        ax.bar(i, statistics.mean(accuracies), color=f"C{i}", alpha=0.5, hatch="//" if entry.get("post_hoc") else None)
        ax.plot([i] * len(accuracies), accuracies, "k.", ms=4)
        print(f"{regime} {model:18s} seeds {entry['seeds']}: mean {statistics.mean(accuracies):.4f}")
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
    ax.set_ylim(0.3, 0.95)
    ax.set_ylabel("test accuracy (10,000 images)")
    ax.set_title(f"Fashion-MNIST, {regime}")
    ax.grid(axis="y", alpha=0.3)
fig.tight_layout()
plt.show()
