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
# # 4. Text: a BERT-style teacher, a BiLSTM student
#
# The finetuner and the distiller of the image notebooks, unchanged, on text. A text model takes one `[B, L]`
# tensor of token ids and derives its attention mask from the pad id its input config declares, so batches,
# losses, report and export are the image path's. This notebook runs in seconds on a small labelled set it
# writes itself (questions about places vs people) with a tiny BERT it builds; the real runs (TREC-6 with
# all-MiniLM-L6-v2 as the teacher) are read from `benchmarks/results/text.json` at the end.

# %%
import logging
import os
import warnings
from pathlib import Path

import lightning as L
import torch

FAST = os.environ.get("KD_FAST") == "1"
OUT = Path(os.environ.get("KD_NOTEBOOK_OUTPUT", "runs/notebooks")) / "04_text_distillation"
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("transformers").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")

# %% [markdown]
# ## A tokenizer, a teacher folder and a data file
#
# The teacher is a Hugging Face model folder (`config.json`, weights, `tokenizer.json`), the form
# `hf/<folder>` reads. Here a 2-layer BERT with hidden size 32 and a word-level tokenizer; for real work the
# preparation step writes all-MiniLM-L6-v2's folder (README, "Text classification").

# %%
import csv
import random

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import BertConfig, BertModel

PLACES = ["city", "river", "country", "mountain", "capital", "lake", "island", "state"]
PEOPLE = ["author", "president", "singer", "painter", "inventor", "actor", "king", "scientist"]
FILLER = ["what", "is", "the", "a", "of", "in", "which", "name", "famous", "largest", "first", "old"]
vocab = {
    t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "where", "who", *PLACES, *PEOPLE, *FILLER, "?"])
}
tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
tokenizer.normalizer = normalizers.Lowercase()
tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
tokenizer.post_processor = processors.TemplateProcessing(
    single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
)
teacher_dir = OUT / "tiny_bert"
torch.manual_seed(0)
config = BertConfig(
    vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=32,
)  # fmt: skip
BertModel(config).save_pretrained(teacher_dir)
tokenizer.save(str(teacher_dir / "tokenizer.json"))


def question(rng):
    """A place or person question; the noun, not the question word, carries the label in half of them."""
    label = rng.choice(["LOC", "HUM"])
    noun = rng.choice(PLACES if label == "LOC" else PEOPLE)
    opener = ("where" if label == "LOC" else "who") if rng.random() < 0.5 else "what"
    words = [opener, "is", "the", *rng.sample(FILLER[3:], 2), noun, "?"]
    return " ".join(words), label


rng = random.Random(0)
data_dir = OUT / "questions"
data_dir.mkdir(parents=True, exist_ok=True)
for split, n in (("train", 400), ("test", 200)):
    with open(data_dir / f"{split}.tsv", "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["text", "label"])
        writer.writerows(question(rng) for _ in range(n))
print((data_dir / "train.tsv").read_text().splitlines()[:3])

# %% [markdown]
# ## The DataModule: tokenized once, padded per batch

# %%
from kd_lightning.data import TextClassificationDataModule


def questions():
    return TextClassificationDataModule(str(teacher_dir), data_dir=str(data_dir), batch_size=16, max_length=16)


data = questions()
data.setup("fit")
batch = next(iter(data.train_dataloader()))
print(data.class_names, len(data.train_set), "train,", len(data.val_set), "val")
print("token ids", tuple(batch.inputs.shape), "- padded to this batch's longest question:")
print(batch.inputs[:2])

# %% [markdown]
# ## Fine-tune the teacher, then distil it into a BiLSTM over the teacher's vocabulary

# %%
from lightning.pytorch.callbacks import ModelCheckpoint

from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner


def adam(lr):
    return lambda params: torch.optim.Adam(params, lr=lr)


def fit(module, epochs, name):
    best = ModelCheckpoint(OUT / name, "best", monitor="val/acc", mode="max", enable_version_counter=False)
    trainer = L.Trainer(
        max_epochs=epochs, logger=False, callbacks=[best], enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(module, questions())
    test = trainer.test(module, questions(), ckpt_path=best.best_model_path, verbose=False)[0]
    return test, Path(best.best_model_path)


TEACHER_EPOCHS, STUDENT_EPOCHS = (2, 2) if FAST else (8, 10)
L.seed_everything(0, verbose=False)
teacher = FrozenBackboneFinetuner(
    ModelSpec(f"hf/{teacher_dir}", pretrained=True), num_classes=2, strategy="full", optimizer=adam(1e-3)
)
teacher_test, teacher_ckpt = fit(teacher, TEACHER_EPOCHS, "teacher")
print(f"teacher test accuracy {teacher_test['test/acc']:.3f}")

STUDENT = ModelSpec("bilstm", kwargs={"tokenizer": str(teacher_dir), "embed_dim": 8, "hidden": 8})
TEACHER = ModelSpec(f"hf/{teacher_dir}", weights_path=str(teacher_ckpt))
L.seed_everything(0, verbose=False)
distiller = DistillationModule(STUDENT, TEACHER, num_classes=2, temperature=4.0, alpha=0.9, optimizer=adam(1e-2))
student_test, student_ckpt = fit(distiller, STUDENT_EPOCHS, "student_kd")
print(f"distilled BiLSTM: test accuracy {student_test['test/acc']:.3f}, agreement {student_test['test/agreement']:.3f}")

# %% [markdown]
# A student over another vocabulary is refused before training, in one line (two-tokenizer distillation is not
# supported yet):

# %%
from kd_lightning.errors import ConfigError
from kd_lightning.models import create_model

try:
    questions().check_models(create_model("bilstm", 2, vocab_size=10))
except ConfigError as err:
    print("ConfigError:", err)

# %% [markdown]
# ## Report and export, as for images

# %%
from kd_lightning.export import export_network
from kd_lightning.loading import load_network
from kd_lightning.report import build_report

reports = build_report(
    teacher_ckpt, [student_ckpt], questions(), OUT / "report", names=["teacher", "bilstm_kd"], latency_repeats=5
)
for r in reports:
    print(
        f"{r.name:10s} {r.params:>8,d} parameters  test acc {r.test_acc:.3f}  batch-1 {r.latency_ms['batch_1']:.2f} ms"
    )
results = export_network(
    load_network(student_ckpt), batch.inputs, OUT / "export", "bilstm_kd", formats=("torchscript",)
)
print(f"TorchScript student: max |diff| vs PyTorch {results[0].max_abs_diff:.2g} at two sequence lengths")

# %% [markdown]
# ## The real runs: TREC-6, MiniLM teacher, students alone vs distilled
#
# From `benchmarks/text_distillation.py` (commands and commits in `benchmarks/RESULTS.md`).

# %%
import json

import matplotlib.pyplot as plt

results_file = Path("benchmarks/results/text.json")  # the kernel runs from the repository root
summary = json.loads(results_file.read_text()) if results_file.is_file() else {}
fig, ax = plt.subplots(figsize=(6, 3.2))
for dataset, entry in summary.items():
    arms = [
        (k, v)
        for k, v in entry.items()
        if isinstance(v, dict) and "test_acc" in v and k not in ("scratch", "distilled")
    ]
    for name, arm in arms:
        accs = [100 * a for a in arm["test_acc"]]
        ax.scatter([f"{dataset}\n{name}"] * len(accs), accs, s=14)
ax.set_ylabel("test accuracy %")
ax.tick_params(axis="x", labelrotation=60, labelsize=7)
ax.set_title("teacher and students (one point per seed)")
fig.tight_layout()
plt.show()
