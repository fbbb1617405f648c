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
# # 1. Transfer learning: pretrained backbone → linear probe → unfreeze
#
# A backbone trained on one task is reused for a new one with few labels. Three strategies of `FrozenBackboneFinetuner`
# are compared with training from scratch:
#
# - **linear probe**: the backbone is frozen (its BatchNorm statistics too), only a new head trains;
# - **freeze then unfreeze**: a linear probe first, then the backbone joins at a 10× lower learning rate (the
#   `BackboneUnfreeze` callback);
# - **full**: everything trains from the pretrained weights.
#
# Everything runs offline on scikit-learn's digits, split into two tasks: the backbone is pretrained on the digits
# **0–4** (the source task), then reused for the digits **5–9** with only 10 labelled images per class (the target
# task). With the internet, swap in an ImageNet backbone, e.g. `ModelSpec("resnet18", pretrained=True)` with
# `image_size=64`.

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
OUT = Path(os.environ.get("KD_NOTEBOOK_OUTPUT", "runs/notebooks")) / "01_transfer_learning"
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


# %% [markdown]
# ## Two tasks from one data set
#
# A DataModule only has to say how to load a split (`load_split`); batching, the train/val split and few-shot sampling
# come from `ImageClassificationDataModule`.

# %%
from kd_lightning.data import DigitsDataModule, TensorImageDataset
from kd_lightning.models import ModelSpec
from kd_lightning.modules import FrozenBackboneFinetuner


class DigitSubset(DigitsDataModule):
    """Only the given digits, relabelled 0..k-1."""

    def __init__(self, digits, **kwargs):
        super().__init__(**kwargs)
        self.digits = list(digits)
        self.class_names = [str(d) for d in self.digits]

    def load_split(self, split):
        full = super().load_split(split)
        keep = torch.isin(full.labels, torch.tensor(self.digits))
        relabel = {d: i for i, d in enumerate(self.digits)}
        labels = torch.tensor([relabel[int(y)] for y in full.labels[keep]])
        return TensorImageDataset(full.images[keep], labels)


SOURCE, TARGET = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]  # lists: checkpoints store them (weights_only)
PRETRAIN_EPOCHS = 2 if FAST else 15
EPOCHS = 2 if FAST else 20

# %% [markdown]
# ## The pretrained backbone: a `small_cnn` trained on the digits 0–4

# %%
L.seed_everything(0, verbose=False)
source = FrozenBackboneFinetuner(
    ModelSpec("small_cnn", kwargs={"width": 32}), num_classes=5, strategy="full", optimizer=adam(3e-3)
)
_, source_acc, source_ckpt = fit(source, DigitSubset(SOURCE), PRETRAIN_EPOCHS, "pretrained")
print(f"source task (digits 0-4): test accuracy {source_acc:.3f}")

# %% [markdown]
# ## Fine-tuning on the digits 5–9 with 10 labels per class
#
# `weights_path` accepts any kd_lightning checkpoint: the network's weights are found inside it (the old head is
# replaced: the target task has other classes).

# %%
pretrained = ModelSpec("small_cnn", weights_path=str(source_ckpt), kwargs={"width": 32})
scratch = ModelSpec("small_cnn", kwargs={"width": 32})
runs = {
    "linear probe": dict(network=pretrained, strategy="linear_probe"),
    "freeze then unfreeze": dict(
        network=pretrained, strategy="freeze_then_unfreeze", unfreeze_at_epoch=EPOCHS // 2, backbone_lr_factor=0.1
    ),
    "full fine-tuning": dict(network=pretrained, strategy="full"),
    "from scratch": dict(network=scratch, strategy="full"),
}
curves, test_acc = {}, {}
for name, kwargs in runs.items():
    L.seed_everything(0, verbose=False)
    module = FrozenBackboneFinetuner(num_classes=5, optimizer=adam(1e-2), **kwargs)
    data = DigitSubset(TARGET, samples_per_class=10, batch_size=10)
    curves[name], test_acc[name], _ = fit(module, data, EPOCHS, name.replace(" ", "_"))
    print(f"{name:>22s}: test accuracy {test_acc[name]:.3f}")

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
for name, curve in curves.items():
    left.plot(range(1, len(curve) + 1), curve, marker="o", label=name)
left.axvline(EPOCHS // 2 + 0.5, color="grey", linestyle=":", label="unfreeze")
left.set(xlabel="epoch", ylabel="validation accuracy", title="digits 5-9, 10 labels per class")
left.legend()
right.barh(list(test_acc), list(test_acc.values()))
right.set(xlabel="test accuracy", title="best checkpoint on the test split", xlim=(0, 1))
plt.tight_layout()

# %% [markdown]
# How much pretrained features help depends on how related the source task is. Features of the digits 0–4 put the linear
# probe well above chance (20 %) on 5–9, and unfreezing lets the backbone adapt to the new shapes. On 8×8 digits a small
# CNN trained from scratch is already strong with 50 images, so do not expect the pretrained runs to win here; the point
# is the mechanics, which are the same with an ImageNet backbone on a harder data set.
