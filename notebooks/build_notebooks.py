"""Write the tutorial notebooks (outputs stripped) from the cell sources below.

    python notebooks/build_notebooks.py && ruff format notebooks

Keeping the sources here makes diffs readable and every notebook's shared setup identical.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent


def setup(name: str, plots: bool = True) -> str:
    pyplot = "import matplotlib.pyplot as plt\n" if plots else ""
    return f'''import logging
import os
import warnings
from pathlib import Path

import lightning as L
{pyplot}import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

# KD_FAST=1 (used by the tests) cuts every run to a couple of epochs: the numbers then mean little.
FAST = os.environ.get("KD_FAST") == "1"
OUT = Path(os.environ.get("KD_NOTEBOOK_OUTPUT", "runs/notebooks")) / "{name}"
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="lightning")
warnings.filterwarnings("ignore", category=UserWarning)'''


FIT = '''class ValAccuracy(Callback):
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
        max_epochs=epochs, logger=False, callbacks=[curve, best], deterministic=True,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=OUT / name,
    )
    trainer.fit(module, data)
    test = trainer.test(module, data, ckpt_path=best.best_model_path, verbose=False)[0]
    return curve.values, test["test/acc"], Path(best.best_model_path)'''


def transfer_learning() -> list:
    return [
        new_markdown_cell(
            "# 1. Transfer learning: pretrained backbone → linear probe → unfreeze\n\n"
            "A backbone trained on one task is reused for a new one with few labels. Three strategies of "
            "`FrozenBackboneFinetuner` are compared with training from scratch:\n\n"
            "- **linear probe**: the backbone is frozen (its BatchNorm statistics too), only a new head trains;\n"
            "- **freeze then unfreeze**: a linear probe first, then the backbone joins at a 10× lower learning "
            "rate (the `BackboneUnfreeze` callback);\n"
            "- **full**: everything trains from the pretrained weights.\n\n"
            "Everything runs offline on scikit-learn's digits, split into two tasks: the backbone is pretrained "
            "on the digits **0–4** (the source task), then reused for the digits **5–9** with only 10 labelled "
            "images per class (the target task). With the internet, swap in an ImageNet backbone, e.g. "
            '`ModelSpec("resnet18", pretrained=True)` with `image_size=64`.'
        ),
        new_code_cell(setup("01_transfer_learning")),
        new_code_cell(FIT),
        new_markdown_cell(
            "## Two tasks from one data set\n\n"
            "A DataModule only has to say how to load a split (`load_split`); batching, the train/val split "
            "and few-shot sampling come from `ImageClassificationDataModule`."
        ),
        new_code_cell(
            """from kd_lightning.data import DigitsDataModule, TensorImageDataset
from kd_lightning.models import ModelSpec
from kd_lightning.modules import FrozenBackboneFinetuner


class DigitSubset(DigitsDataModule):
    \"\"\"Only the given digits, relabelled 0..k-1.\"\"\"

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
EPOCHS = 2 if FAST else 20"""
        ),
        new_markdown_cell("## The pretrained backbone: a `small_cnn` trained on the digits 0–4"),
        new_code_cell(
            """L.seed_everything(0)
source = FrozenBackboneFinetuner(
    ModelSpec("small_cnn", kwargs={"width": 32}), num_classes=5, strategy="full", optimizer=adam(3e-3)
)
_, source_acc, source_ckpt = fit(source, DigitSubset(SOURCE), PRETRAIN_EPOCHS, "pretrained")
print(f"source task (digits 0-4): test accuracy {source_acc:.3f} ({source_ckpt})")"""
        ),
        new_markdown_cell(
            "## Fine-tuning on the digits 5–9 with 10 labels per class\n\n"
            "`weights_path` accepts any kd_lightning checkpoint: the network's weights are found inside it "
            "(the old head is replaced: the target task has other classes)."
        ),
        new_code_cell(
            """pretrained = ModelSpec("small_cnn", weights_path=str(source_ckpt), kwargs={"width": 32})
scratch = ModelSpec("small_cnn", kwargs={"width": 32})
runs = {
    "linear probe": dict(backbone=pretrained, strategy="linear_probe"),
    "freeze then unfreeze": dict(
        backbone=pretrained, strategy="freeze_then_unfreeze", unfreeze_at_epoch=EPOCHS // 2, backbone_lr_factor=0.1
    ),
    "full fine-tuning": dict(backbone=pretrained, strategy="full"),
    "from scratch": dict(backbone=scratch, strategy="full"),
}
curves, test_acc = {}, {}
for name, kwargs in runs.items():
    L.seed_everything(0)
    module = FrozenBackboneFinetuner(num_classes=5, optimizer=adam(1e-2), **kwargs)
    data = DigitSubset(TARGET, samples_per_class=10, batch_size=10)
    curves[name], test_acc[name], _ = fit(module, data, EPOCHS, name.replace(" ", "_"))
    print(f"{name:>22s}: test accuracy {test_acc[name]:.3f}")"""
        ),
        new_code_cell(
            """fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
for name, curve in curves.items():
    left.plot(range(1, len(curve) + 1), curve, marker="o", label=name)
left.axvline(EPOCHS // 2 + 0.5, color="grey", linestyle=":", label="unfreeze")
left.set(xlabel="epoch", ylabel="validation accuracy", title="digits 5-9, 10 labels per class")
left.legend()
right.barh(list(test_acc), list(test_acc.values()))
right.set(xlabel="test accuracy", title="best checkpoint on the test split", xlim=(0, 1))
plt.tight_layout()"""
        ),
        new_markdown_cell(
            "How much pretrained features help depends on how related the source task is. Features of the "
            "digits 0–4 put the linear probe well above chance (20 %) on 5–9, and unfreezing lets the "
            "backbone adapt to the new shapes. On 8×8 digits a small CNN trained from scratch is already "
            "strong with 50 images, so do not expect the pretrained runs to win here; the point is the "
            "mechanics, which are the same with an ImageNet backbone on a harder data set."
        ),
    ]


def knowledge_distillation() -> list:
    return [
        new_markdown_cell(
            "# 2. Knowledge distillation: teacher → student\n\n"
            "A large teacher is trained first; a student ~55× smaller is then trained on "
            "`(1 − α)·CE(labels) + α·T²·KL(teacher_T ‖ student_T)` (Hinton et al., 2015) by "
            "`DistillationModule`, and compared with the same student trained on labels alone. "
            "A sweep over the temperature `T` closes the notebook."
        ),
        new_code_cell(setup("02_knowledge_distillation")),
        new_code_cell(FIT),
        new_code_cell(
            """from kd_lightning.data import DigitsDataModule
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner

TEACHER_EPOCHS = 2 if FAST else 15
STUDENT_EPOCHS = 2 if FAST else 30
STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})
L.seed_everything(0)
teacher = FrozenBackboneFinetuner(ModelSpec("small_cnn", kwargs={"width": 32}), num_classes=10, strategy="full",
                                  optimizer=adam(3e-3))
_, teacher_acc, teacher_ckpt = fit(teacher, DigitsDataModule(), TEACHER_EPOCHS, "teacher")
TEACHER = ModelSpec("small_cnn", weights_path=str(teacher_ckpt), kwargs={"width": 32})
print(f"teacher: test accuracy {teacher_acc:.3f}")"""
        ),
        new_markdown_cell("## Student: distilled vs. trained on labels alone"),
        new_code_cell(
            """L.seed_everything(0)
scratch = FrozenBackboneFinetuner(STUDENT, num_classes=10, strategy="full", optimizer=adam(1e-2))
scratch_curve, scratch_acc, _ = fit(scratch, DigitsDataModule(), STUDENT_EPOCHS, "student_scratch")
L.seed_everything(0)
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
plt.legend()"""
        ),
        new_markdown_cell(
            "## Temperature sweep\n\n"
            "`T = 1` uses the teacher's plain probabilities; larger `T` reveals how it ranks the wrong "
            'classes ("dark knowledge"). The KD term is scaled by `T²` so its gradients keep their size.'
        ),
        new_code_cell(
            """TEMPERATURES = [1.0, 4.0] if FAST else [1.0, 2.0, 4.0, 8.0, 16.0]
sweep = {}
for temperature in TEMPERATURES:
    L.seed_everything(0)
    module = DistillationModule(STUDENT, TEACHER, num_classes=10, temperature=temperature, alpha=0.9,
                                optimizer=adam(1e-2))
    _, sweep[temperature], _ = fit(module, DigitsDataModule(), STUDENT_EPOCHS, f"sweep_T{temperature:g}")
    print(f"T={temperature:>4g}: test accuracy {sweep[temperature]:.3f}")

plt.figure(figsize=(6, 4))
plt.plot(list(sweep), list(sweep.values()), marker="o", label="distilled student")
plt.axhline(scratch_acc, color="tab:red", linestyle="--", label="student from labels")
plt.axhline(teacher_acc, color="grey", linestyle=":", label="teacher")
plt.xscale("log", base=2)
plt.xlabel("temperature T")
plt.ylabel("test accuracy")
plt.legend()
plt.title("temperature sweep (α = 0.9, one seed)")"""
        ),
        new_markdown_cell(
            "One seed per point: a tiny network on 1,797 images moves by about a point from seed to seed, "
            "so read the trend, not single differences (`kd-lightning quickstart` averages seeds)."
        ),
    ]


def teacher_to_deployment() -> list:
    return [
        new_markdown_cell(
            "# 3. From teacher to deployment: report and export\n\n"
            "Train a teacher and distil a student (briefly), compare them with `kd_lightning.report.build_report` "
            "(accuracy, agreement, calibration, size, MACs, CPU latency), then export the student alone to "
            "ONNX and TorchScript with `kd_lightning.export.export_network`, which checks each file against "
            "PyTorch. The same steps exist as commands: `kd-lightning report` and `kd-lightning export`."
        ),
        new_code_cell(setup("03_teacher_to_deployment", plots=False)),
        new_code_cell(FIT),
        new_code_cell(
            """from kd_lightning.data import DigitsDataModule
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner

TEACHER_EPOCHS = 2 if FAST else 15
STUDENT_EPOCHS = 2 if FAST else 30
STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})
L.seed_everything(0)
teacher = FrozenBackboneFinetuner(ModelSpec("small_cnn", kwargs={"width": 32}), num_classes=10, strategy="full",
                                  optimizer=adam(3e-3))
_, _, teacher_ckpt = fit(teacher, DigitsDataModule(), TEACHER_EPOCHS, "teacher")
TEACHER = ModelSpec("small_cnn", weights_path=str(teacher_ckpt), kwargs={"width": 32})
L.seed_everything(0)
student = DistillationModule(STUDENT, TEACHER, num_classes=10, temperature=4.0, alpha=0.9, optimizer=adam(1e-2))
_, _, student_ckpt = fit(student, DigitsDataModule(), STUDENT_EPOCHS, "student_kd")
L.seed_everything(0)
scratch = FrozenBackboneFinetuner(STUDENT, num_classes=10, strategy="full", optimizer=adam(1e-2))
_, _, scratch_ckpt = fit(scratch, DigitsDataModule(), STUDENT_EPOCHS, "student_scratch")"""
        ),
        new_markdown_cell("## The report"),
        new_code_cell(
            """from IPython.display import Image, Markdown, display

from kd_lightning.report import build_report

report_dir = OUT / "report"
reports = build_report(teacher_ckpt, [student_ckpt, scratch_ckpt], "digits", report_dir,
                       names=["teacher", "student_kd", "student_scratch"], latency_repeats=5 if FAST else 50)
display(Markdown((report_dir / "report.md").read_text().split("![")[0]))
display(Image(filename=str(report_dir / "accuracy_vs_latency.png")))"""
        ),
        new_markdown_cell(
            "`report.json` holds the same numbers for scripts. Latency is measured on this machine's CPU: "
            "on a shared machine, rerun before trusting small differences."
        ),
        new_markdown_cell("## Export the student"),
        new_code_cell(
            """import onnxruntime

from kd_lightning.export import export_network
from kd_lightning.loading import evaluation_batches, load_datamodule, load_network

network = load_network(student_ckpt)  # the student alone: no teacher, no loss adapters
batches = evaluation_batches(load_datamodule("digits"))
results = export_network(network, batches[0][0], OUT / "export", "student")
for result in results:
    print(f"{result.format:12s} {result.path}: max |diff| vs PyTorch = {result.max_abs_diff:.2g} "
          f"({'ok' if result.ok else 'FAILED'})")
assert all(result.ok for result in results)"""
        ),
        new_code_cell(
            """onnx_path = str(OUT / "export" / "student.onnx")
session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
correct = total = 0
for images, labels in batches:
    (logits,) = session.run(None, {"images": images.numpy()})
    correct += (torch.from_numpy(logits).argmax(-1) == labels).sum().item()
    total += len(labels)
print(f"ONNX student in onnxruntime: test accuracy {correct / total:.3f} on {total} images "
      f"(report: {reports[1].test_acc:.3f})")"""
        ),
        new_markdown_cell(
            "The ONNX file takes plain `[0, 1]` images `[batch, 1, 8, 8]` (any batch size) and returns logits: "
            "the input normalisation travels inside the model."
        ),
    ]


NOTEBOOKS = {
    "01_transfer_learning.ipynb": transfer_learning,
    "02_knowledge_distillation.ipynb": knowledge_distillation,
    "03_teacher_to_deployment.ipynb": teacher_to_deployment,
}


def main() -> None:
    for filename, cells in NOTEBOOKS.items():
        notebook = new_notebook(cells=cells())
        for index, cell in enumerate(notebook.cells):
            cell.id = f"cell-{index}"  # stable ids: regenerating changes nothing that was not edited
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        notebook.metadata["language_info"] = {"name": "python"}
        nbformat.write(notebook, HERE / filename)


if __name__ == "__main__":
    main()
