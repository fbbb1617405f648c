"""Text distillation results: a fine-tuned MiniLM teacher, students alone and distilled, 5 seeds (issue 25).

For a data set (``trec6``, ``rotten_tomatoes``) and a student (``bilstm``: a 0.8 M-parameter BiLSTM over the
teacher's vocabulary; ``distilbert``: MiniLM with every other layer kept, ``distil_hf``), each seed trains

- ``scratch``: the student on labels alone (``FrozenBackboneFinetuner``, strategy ``full``);
- ``distilled``: the same student with ``DistillationModule`` (Hinton KD) from the teacher checkpoint written by
  ``configs/<set>/teacher.yaml``.

Each arm trains with a ``Recipe`` (learning rate, dropout, epochs and, for ``distilled``, temperature and
alpha). ``first`` is the recipe declared before any result (both arms lr 3e-3, 10 epochs, T=4, alpha=0.9);
``selected`` is the one ``--select`` chooses on validation accuracy alone: each arm gets its own grid
(``GRIDS``), scored after every epoch on the seeded validation split both arms share, and the winner is written
into ``SELECTED`` (and the configs) before any test run with it. Test accuracy is read at the last epoch of the
recipe on the fixed test split. The teacher's outputs on the training texts are computed once and served
through ``DataModule.use_source``, the declared way to feed pre-computed teacher outputs (what ``teacher_cache``
does from a config), so a distilled epoch costs only the student's step. Each finished run (selection runs
included, marked ``"selection": true``) is appended to ``benchmarks/results/text_runs.jsonl`` at once; a rerun
skips the runs already there; ``text.json`` and the section of ``benchmarks/RESULTS.md`` are rebuilt from those
rows after every run.

    python -m benchmarks.text_distillation --data trec6 --select --seeds 0 1      # the validation grid
    python -m benchmarks.text_distillation --data trec6 --recipe selected          # 5 test seeds, chosen recipe
    python -m benchmarks.text_distillation --data rotten_tomatoes --recipe selected --recipe-from trec6
    python -m benchmarks.text_distillation --report            # rebuild text.json / RESULTS.md only
    python -m benchmarks.text_distillation --smoke --out /tmp/t # the protocol on 64 texts, 1 epoch
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch

from benchmarks._common import latency_ranges, quiet
from benchmarks._runs_log import append_row, load_rows, provenance, write_section
from kd_lightning.data import RottenTomatoesDataModule, TREC6DataModule
from kd_lightning.data.batch import Batch
from kd_lightning.data.sources import BatchSource
from kd_lightning.data.text import TextClassificationDataModule
from kd_lightning.data.text_dataset import TokenizedTextDataset
from kd_lightning.loading import load_network
from kd_lightning.models import ModelSpec, read_weights_file
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner
from kd_lightning.outputs import ModelOutputs
from kd_lightning.report.measure import count_parameters

RESULTS = Path("benchmarks/results")
RUNS = RESULTS / "text_runs.jsonl"
# Taken once, when the run starts: a process runs the code it loaded, whatever the tree holds when a row is written.
code_provenance = functools.cache(provenance)
LATENCY = "latency"  # the arm of the rows that time every network side by side
SUMMARY = RESULTS / "text.json"
RESULTS_MD = Path("benchmarks/RESULTS.md")
CACHE = Path("runs/text")
MARKERS = ("<!-- text: written by benchmarks/text_distillation.py --report -->", "<!-- text: end -->")
SECTION = "## Text: MiniLM teacher, BiLSTM and DistilBERT-style students (issue 25)"
TEACHER_FOLDER = "data/all-MiniLM-L6-v2"
DATA = {"trec6": (TREC6DataModule, 64, "trec"), "rotten_tomatoes": (RottenTomatoesDataModule, 96, "rotten_tomatoes")}


@dataclass(frozen=True)
class Recipe:
    """One arm's training settings; ``temperature``/``alpha`` only for the distilled arm, ``dropout`` None keeps
    the student's default."""

    lr: float
    epochs: int
    weight_decay: float = 0.0
    dropout: float | None = None
    temperature: float | None = None
    alpha: float | None = None

    def settings(self) -> dict[str, float | int]:
        return {k: v for k, v in asdict(self).items() if v is not None}


STUDENTS: dict[str, dict[str, Any]] = {
    "bilstm": {
        "spec": {"name": "bilstm", "kwargs": {"tokenizer": TEACHER_FOLDER, "embed_dim": 24, "hidden": 64}},
        "optimizer": torch.optim.Adam,
        "first": {
            "scratch": Recipe(lr=3e-3, epochs=10),
            "distilled": Recipe(lr=3e-3, epochs=10, temperature=4.0, alpha=0.9),
        },
    },
    "distilbert": {
        "spec": {"name": "distil_hf", "pretrained": True, "kwargs": {"source": TEACHER_FOLDER}},
        "optimizer": torch.optim.AdamW,
        "first": {
            "scratch": Recipe(lr=1e-4, epochs=1, weight_decay=0.01),
            "distilled": Recipe(lr=1e-4, epochs=1, weight_decay=0.01, temperature=4.0, alpha=0.9),
        },
    },
}

# The validation grid of each arm, per student (the BiLSTM's here): every recipe is trained for SELECTION_EPOCHS and
# scored on the validation split after each epoch, so the number of epochs is chosen too (1..SELECTION_EPOCHS). The
# scratch arm tunes what a baseline is usually tuned on (learning rate, dropout); the distilled arm tunes the
# distillation's own knobs at the first recipe's dropout, and the learning rate over the two the scratch grid
# found fastest, so neither arm is held at a rate its own grid would not pick.
SELECTION_EPOCHS = 12
EPOCH_CAP = SELECTION_EPOCHS  # lowered to 1 by --smoke
DISTILBERT_SELECTION_EPOCHS = 3
GRIDS: dict[str, dict[str, list[Recipe]]] = {
    "bilstm": {
        "scratch": [Recipe(lr=lr, epochs=SELECTION_EPOCHS, dropout=d) for lr in (1e-3, 3e-3, 1e-2) for d in (0.2, 0.5)],
        "distilled": [
            Recipe(lr=lr, epochs=SELECTION_EPOCHS, dropout=0.2, temperature=t, alpha=a)
            for lr in (3e-3, 1e-2)
            for t in (1.0, 2.0, 4.0)
            for a in (0.5, 0.9)
        ],
    },
    # The DistilBERT-style student starts from the teacher's layers, so a few epochs at fine-tuning rates; both
    # arms tune the rate over the same values, the distilled arm also T and alpha.
    "distilbert": {
        "scratch": [Recipe(lr=lr, epochs=DISTILBERT_SELECTION_EPOCHS, weight_decay=0.01) for lr in (5e-5, 1e-4, 2e-4)],
        "distilled": [
            Recipe(lr=lr, epochs=DISTILBERT_SELECTION_EPOCHS, weight_decay=0.01, temperature=t, alpha=a)
            for lr in (5e-5, 1e-4, 2e-4)
            for t in (2.0, 4.0)
            for a in (0.5, 0.9)
        ],
    },
}


def selection_epochs(student: str) -> int:
    return max(recipe.epochs for grid in GRIDS[student].values() for recipe in grid)


# What ``--select`` chose, per (data set, student), written here before the test runs that use it.
SELECTED: dict[tuple[str, str], dict[str, Recipe]] = {
    # Validation (seed 0): scratch 83.72 % at epoch 8; distilled 85.81 % at epoch 12.
    ("trec6", "bilstm"): {
        "scratch": Recipe(lr=1e-2, epochs=8, dropout=0.2),
        "distilled": Recipe(lr=1e-2, epochs=12, dropout=0.2, temperature=4.0, alpha=0.5),
    },
    # Validation (seed 0): scratch 77.84 % at epoch 11; distilled 78.04 % at epoch 8.
    ("rotten_tomatoes", "bilstm"): {
        "scratch": Recipe(lr=3e-3, epochs=11, dropout=0.5),
        "distilled": Recipe(lr=1e-2, epochs=8, dropout=0.2, temperature=2.0, alpha=0.9),
    },
    # Validation (seed 0): scratch 93.49 % at epoch 3; distilled 93.02 % at epoch 3 (8 of its 12 recipes run).
    ("trec6", "distilbert"): {
        "scratch": Recipe(lr=1e-4, epochs=3, weight_decay=0.01),
        "distilled": Recipe(lr=1e-4, epochs=3, weight_decay=0.01, temperature=2.0, alpha=0.5),
    },
}


PROTOCOL = [
    "Generated by `benchmarks/text_distillation.py` from `benchmarks/results/text_runs.jsonl` (summary:",
    "`benchmarks/results/text.json`). Test accuracy at the last epoch of each recipe on the fixed test split (TREC-6:",
    "1,076 questions; Rotten Tomatoes: 2,550 reviews), mean ± std over seeds; agreement = student argmax equal to",
    "the teacher's; latency: batch-1 CPU forward (one thread, `torch.inference_mode`) of the median-length test",
    "text, the teacher and both students timed side by side in one run (`--latency`: 7 alternating rounds, each",
    "the median of 20 passes; min-median-max, the ratio from the medians) on a machine shared with other jobs.",
    "One teacher per data set (seed 0): MiniLM",
    "fine-tuned for one epoch (`configs/<set>/teacher.yaml`, AdamW 1e-4, batch 32). Students: the BiLSTM",
    "(embedding 24 over the teacher's 30,522 WordPiece ids, hidden 64 each way, Adam, batch 32) and the",
    "DistilBERT-style student (`distil_hf`: MiniLM's layers 0, 2, 4 and its embeddings, 1 epoch at AdamW 1e-4).",
    "Both arms of a seed share the initialisation seed, the batch order and the seeded train/val split (data",
    "seed 0, 10 % of the training file held out for validation); distillation is Hinton KD with the teacher's",
    "logits computed once and served through `DataModule.use_source`. The TREC-6 teacher was re-created from",
    "`configs/trec/teacher.yaml` (same seed) before the selected runs; its test accuracy is the recorded one.",
    "Rows marked `dirty` in the runs log were written while a tracked file differed from their commit: this",
    "section, which the driver rewrites after every row, and during the selection runs the driver's report and",
    "grid code (each row records the settings it ran with).",
    "",
    "Two declared recipes, in this order. **first**: lr 3e-3, dropout 0.2, 10 epochs for both arms, T=4,",
    "alpha=0.9, declared before its runs. **selected**: chosen afterwards on validation accuracy alone, before any",
    "test number under it was read: each arm its own grid, every recipe trained for "
    f"{SELECTION_EPOCHS} epochs and scored on the",
    "validation split after every epoch (so the epoch count is chosen too), mean over the selection seeds; the",
    "winner was committed into `SELECTED` in the driver and into the configs, then 5 test seeds ran with it. The",
    "grid: scratch lr ∈ {1e-3, 3e-3, 1e-2} × dropout ∈ {0.2, 0.5}; distilled (dropout 0.2) T ∈ {1, 2, 4} × alpha",
    "∈ {0.5, 0.9} × lr ∈ {3e-3, 1e-2}. The distilled grid was first declared at lr 3e-3 alone; its lr 1e-2 half",
    "was added once the scratch grid's validation scores showed lr 3e-3 still climbing at 12 epochs (no test",
    "number had been read), so the distilled arm chose among 12 recipes and scratch among 6, on one selection",
    "seed. `selected_on_trec6`: the TREC-6 choice used unchanged on another data set. The DistilBERT-style",
    "student's grid (3 epochs, AdamW, weight decay 0.01; scratch lr ∈ {5e-5, 1e-4, 2e-4}; distilled lr × T ∈ {2, 4}",
    "× alpha ∈ {0.5, 0.9}) is post hoc: declared after its first recipe's test rows showed distillation behind on",
    "every seed. Its distilled arm ran 8 of its 12 recipes (lr 5e-5 and 1e-4; the lr 2e-4 third was dropped for",
    "time, lr 2e-4 being the scratch grid's worst).",
]


class TeacherOutputSource(BatchSource):
    """Training batches of a text DataModule with the teacher's pre-computed logits attached."""

    def __init__(self, dataset: TokenizedTextDataset, logits: torch.Tensor) -> None:
        self.dataset, self.logits = dataset, logits

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        batch = self.dataset.__getitems__(indices)
        batch.teacher = ModelOutputs(self.logits[torch.as_tensor(indices, dtype=torch.long)])
        return batch


@torch.no_grad()
def logits_of(network: torch.nn.Module, dataset: TokenizedTextDataset, batch_size: int = 64) -> torch.Tensor:
    network.eval()
    parts = [
        network(dataset.pad(torch.arange(start, min(start + batch_size, len(dataset)))))
        for start in range(0, len(dataset), batch_size)
    ]
    return torch.cat(parts)


def teacher_labels(checkpoint: Path) -> list[str]:
    """The class order the teacher was trained with, as its checkpoint recorded it: the students must use it."""
    class_names = read_weights_file(checkpoint).class_names
    if class_names is None:
        raise SystemExit(f"{checkpoint} records no class order: retrain the teacher (its config's fit command)")
    return class_names


def datamodule(name: str, labels: list[str]) -> TextClassificationDataModule:
    cls, max_length, _ = DATA[name]
    data = cls(batch_size=32, max_length=max_length, seed=0, labels=labels)
    data.setup("fit")
    data.setup("test")
    return data


def teacher_outputs(name: str, data: TextClassificationDataModule, checkpoint: Path) -> dict[str, torch.Tensor]:
    """The teacher's logits on the training and test texts, computed once per checkpoint and kept on disk."""
    cache = CACHE / f"{name}_teacher_logits.pt"
    stamp = f"{checkpoint.stat().st_size}:{checkpoint.stat().st_mtime_ns}"
    if cache.is_file():
        stored = torch.load(cache, weights_only=True)
        if stored.get("stamp") == stamp:
            return stored
    teacher = load_network(checkpoint)
    stored = {"train": logits_of(teacher, data.train_set), "test": logits_of(teacher, data.test_set)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**stored, "stamp": stamp}, cache)
    return stored


def measure_latency(data: TextClassificationDataModule, checkpoint: Path, rounds: int = 7) -> dict:
    """The teacher's and every student's batch-1 latency, timed side by side in one run (weights do not change
    latency, so untrained students of each architecture are timed)."""
    networks = {"teacher": load_network(checkpoint)} | {
        student: ModelSpec(**json.loads(json.dumps(setting["spec"]))).build(data.num_classes)
        for student, setting in STUDENTS.items()
    }
    return latency_ranges(networks, median_example(data.test_set), rounds)


def median_example(dataset: TokenizedTextDataset) -> torch.Tensor:
    """The test text of median token length, as a batch of one: what batch-1 latency is measured on."""
    lengths = dataset.lengths()
    index = int(lengths.argsort()[len(lengths) // 2])
    return dataset.pad(torch.tensor([index]))


def test_scores(network: torch.nn.Module, data: TextClassificationDataModule, teacher_test: torch.Tensor) -> dict:
    logits = logits_of(network, data.test_set)
    labels = data.test_set.labels
    return {
        "test_acc": (logits.argmax(1) == labels).float().mean().item(),
        "agreement": (logits.argmax(1) == teacher_test.argmax(1)).float().mean().item(),
    }


class ValidationCurve(L.Callback):
    """Validation accuracy after every training epoch: one run scores every epoch count of a recipe."""

    def __init__(self, data: TextClassificationDataModule) -> None:
        self.data, self.val_acc = data, []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        network = pl_module.network  # type: ignore[attr-defined]  # both modules keep the student here
        logits = logits_of(network, self.data.val_set)
        network.train()
        self.val_acc.append((logits.argmax(1) == self.data.val_set.labels).float().mean().item())


def run_arm(
    arm: str, student: str, name: str, seed: int, recipe: Recipe, data: TextClassificationDataModule, teacher: dict
) -> dict:
    """Train one arm with ``recipe``; its test scores at the last epoch and the validation accuracy per epoch."""
    setting = STUDENTS[student]
    _, max_length, config_dir = DATA[name]
    spec_dict = json.loads(json.dumps(setting["spec"]))
    spec_dict["kwargs"]["max_length"] = max_length
    if recipe.dropout is not None:
        spec_dict["kwargs"]["dropout"] = recipe.dropout
    spec = ModelSpec(**spec_dict)

    def optimizer(params):
        return setting["optimizer"](params, lr=recipe.lr, weight_decay=recipe.weight_decay)

    L.seed_everything(seed, verbose=False)
    module: FrozenBackboneFinetuner | DistillationModule
    if arm == "scratch":
        module = FrozenBackboneFinetuner(spec, data.num_classes, strategy="full", optimizer=optimizer)
    else:
        teacher_spec = ModelSpec(
            f"hf/{TEACHER_FOLDER}",
            kwargs={"max_length": max_length},
            weights_path=f"runs/{config_dir}/teacher/best.ckpt",
        )
        module = DistillationModule(
            spec,
            teacher_spec,
            num_classes=data.num_classes,
            temperature=recipe.temperature,
            alpha=recipe.alpha,
            optimizer=optimizer,
        )
        data.use_source("train", TeacherOutputSource(data.train_set, teacher["train"]))
    curve = ValidationCurve(data)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=min(recipe.epochs, EPOCH_CAP),
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[curve],
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - start
    data.clear_sources()
    network = module.network.eval()
    return {
        **test_scores(network, data, teacher["test"]),
        "val_acc": [round(v, 4) for v in curve.val_acc],
        "params": count_parameters(network),
        "fit_s": seconds,
    }


def choose(rows: list[dict], name: str, student: str, arm: str) -> tuple[Recipe, float] | None:
    """The grid recipe and epoch count with the best mean validation accuracy over the selection seeds.

    Only recipes run on every selection seed compete; ties go to fewer epochs, then to the earlier grid entry.
    """
    runs = [r for r in rows if r.get("selection") and (r["data"], r["student"], r["arm"]) == (name, student, arm)]
    seeds = {r["seed"] for r in runs}
    best: tuple[float, int, int] | None = None
    for index, recipe in enumerate(GRIDS[student][arm]):
        curves = [r["val_acc"] for r in runs if r["settings"] == recipe.settings()]
        if not seeds or {r["seed"] for r in runs if r["settings"] == recipe.settings()} != seeds:
            continue
        for epoch, accs in enumerate(zip(*curves, strict=False), start=1):
            key = (statistics.mean(accs), -epoch, -index)
            if best is None or key > best:
                best = key
    if best is None:
        return None
    score, epoch, index = best[0], -best[1], -best[2]
    return replace(GRIDS[student][arm][index], epochs=epoch), score


def arm_key(row: dict) -> str:
    """``<student>_<arm>`` for the first declared recipe, ``<student>_<arm>_<recipe>`` for a later one."""
    recipe = row.get("recipe", "first")
    return f"{row['student']}_{row['arm']}" + ("" if recipe == "first" else f"_{recipe}")


def selection_summary(rows: list[dict], name: str) -> dict:
    """Per student: the grid's mean validation accuracy per epoch, and the recipe ``choose`` picks per arm."""
    out: dict[str, dict] = {}
    for student in sorted({r["student"] for r in rows if r.get("selection") and r["data"] == name}):
        runs = [r for r in rows if r.get("selection") and (r["data"], r["student"]) == (name, student)]
        grid: dict[str, list[dict]] = {}
        chosen: dict[str, dict] = {}
        for arm, recipes in GRIDS[student].items():
            for recipe in recipes:
                curves = [r["val_acc"] for r in runs if r["arm"] == arm and r["settings"] == recipe.settings()]
                if curves:
                    mean = [round(statistics.mean(accs), 4) for accs in zip(*curves, strict=False)]
                    grid.setdefault(arm, []).append({"settings": recipe.settings(), "val_acc_mean": mean})
            picked = choose(rows, name, student, arm)
            if picked is not None:
                chosen[arm] = {"settings": picked[0].settings(), "val_acc_mean": round(picked[1], 4)}
        out[student] = {
            "seeds": sorted({r["seed"] for r in runs}),
            "grid": grid,
            "chosen": chosen,
            "command": sorted({r["command"] for r in runs}),
            "commit": sorted({r["commit"] for r in runs}),
        }
    return out


def summarise(rows: list[dict]) -> dict:
    """``{set: {teacher, <student>_<arm>[_<recipe>], <student>[_<recipe>]_paired, selection, scratch, distilled}}``.

    ``scratch``/``distilled`` (the issue's shape) are the BiLSTM's arms under the validation-selected recipe where
    it has run, else under the first declared one.
    """
    out: dict[str, dict] = {}
    for row in rows:
        if row.get("selection"):
            continue
        if row["arm"] == LATENCY:
            timed = {k: row[k] for k in ("latency_b1_ms", "command", "commit")}
            out.setdefault(row["data"], {})[LATENCY] = timed | {"commands": [row["command"]]}
            continue
        entry = out.setdefault(row["data"], {})
        key = "teacher" if row["arm"] == "teacher" else arm_key(row)
        arm = entry.setdefault(key, {"test_acc": [], "agreement": [], "seeds": []})
        for field in ("params", "command", "commit", "recipe", "settings"):
            if field in row:
                arm[field] = row[field]
        if row["command"] not in arm.setdefault("commands", []):
            arm["commands"].append(row["command"])
        arm["test_acc"].append(round(row["test_acc"], 4))
        arm["agreement"].append(round(row.get("agreement", 1.0), 4))
        arm["seeds"].append(row.get("seed", 0))
    for name, entry in out.items():
        timed = entry.get(LATENCY, {}).get("latency_b1_ms", {})
        for key, arm in entry.items():
            if key != LATENCY and key.split("_")[0] in timed:
                arm["latency_b1_ms"] = timed[key.split("_")[0]]["median"]
        for key in [k for k in entry if "_scratch" in k]:
            scratch, distilled = entry[key], entry.get(key.replace("_scratch", "_distilled"))
            if not distilled:
                continue
            by_seed = dict(zip(scratch["seeds"], scratch["test_acc"], strict=True))
            diffs = [
                round(acc - by_seed[s], 4)
                for s, acc in zip(distilled["seeds"], distilled["test_acc"], strict=True)
                if s in by_seed
            ]
            entry[key.replace("_scratch", "") + "_paired"] = {
                "distilled_minus_scratch": diffs,
                "mean": round(statistics.mean(diffs), 4) if diffs else None,
                "wins": sum(d > 0 for d in diffs),
                "seeds": len(diffs),
            }
        selection = selection_summary(rows, name)
        if selection:
            entry["selection"] = selection
        for suffix in [
            "_selected",
            *sorted(k.removeprefix("bilstm_scratch") for k in entry if "_selected_on_" in k),
            "",
        ]:
            if f"bilstm_scratch{suffix}" in entry and f"bilstm_distilled{suffix}" in entry:
                entry["scratch"], entry["distilled"] = (
                    entry[f"bilstm_scratch{suffix}"],
                    entry[f"bilstm_distilled{suffix}"],
                )
                break
    return out


def mean_pm(values: list[float]) -> str:
    if len(values) < 2:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def shown(settings: dict) -> str:
    names = {"lr": "lr", "dropout": "dropout", "temperature": "T", "alpha": "alpha", "epochs": "epochs"}
    return ", ".join(f"{names[k]} {v:g}" for k, v in settings.items() if k in names)


def selection_lines(selection: dict) -> list[str]:
    lines = []
    for student, result in selection.items():
        last = selection_epochs(student)
        shown_epochs = list(range(2, last + 1, 2)) if last > 4 else list(range(1, last + 1))
        lines += [
            f"Validation grid ({student}, seeds {', '.join(map(str, result['seeds']))}; mean validation accuracy %"
            f" after epochs {', '.join(map(str, shown_epochs))} and the best epoch; **chosen**):",
            "",
            "| arm | recipe | " + " | ".join(f"ep {e}" for e in shown_epochs) + " | best (epoch) |",
            "|---|---|" + "---|" * len(shown_epochs) + "---|",
        ]
        for arm, entries in result["grid"].items():
            chosen = result["chosen"].get(arm, {}).get("settings", {})
            for item in entries:
                curve = item["val_acc_mean"]
                cells = [f"{100 * curve[e - 1]:.2f}" if e <= len(curve) else "" for e in shown_epochs]
                best = max(range(len(curve)), key=lambda i: (curve[i], -i))
                mark = "**" if {**item["settings"], "epochs": chosen.get("epochs")} == chosen else ""
                label = shown({k: v for k, v in item["settings"].items() if k != "epochs"})
                lines.append(
                    f"| {arm} | {mark}{label}{mark} | "
                    + " | ".join(cells)
                    + f" | {100 * curve[best]:.2f} ({best + 1}) |"
                )
        lines.append("")
        for arm, pick in result["chosen"].items():
            lines.append(
                f"- chosen for {arm}: {shown(pick['settings'])} (validation {100 * pick['val_acc_mean']:.2f} %)"
            )
        lines += ["", "    " + "\n    ".join(result["command"]), ""]
    return lines


def markdown(summary: dict) -> list[str]:
    lines = [
        MARKERS[0],
        SECTION,
        "",
        *PROTOCOL,
        "",
    ]
    for name, entry in summary.items():
        lines += [
            f"### {name}",
            "",
            "| model | recipe | params | test acc % | agreement % | batch-1 latency ms, median (range) | seeds |",
            "|---|---|---|---|---|---|---|",
        ]
        side_by_side = entry.get(LATENCY, {}).get("latency_b1_ms", {})
        for key, arm in entry.items():
            if key.endswith("_paired") or key in ("scratch", "distilled", "selection", LATENCY):
                continue
            timed = side_by_side.get(key.split("_")[0])
            span = f"{timed['median']:.2f} ({timed['min']:.2f}-{timed['max']:.2f})" if timed else ""
            recipe = shown(arm["settings"]) if "settings" in arm else ("" if key == "teacher" else "first")
            lines.append(
                f"| {key} | {recipe} | {arm.get('params', 0) / 1e6:.2f} M | {mean_pm(arm['test_acc'])} | "
                f"{mean_pm(arm['agreement'])} | {span} | {len(arm['test_acc'])} |"
            )
        lines.append("")
        for key, paired in entry.items():
            if key.endswith("_paired"):
                diffs = ", ".join(f"{100 * d:+.2f}" for d in paired["distilled_minus_scratch"])
                lines.append(
                    f"- {key.removesuffix('_paired')}: distilled − scratch per seed (points): {diffs}; "
                    f"mean {100 * paired['mean']:+.2f}; distilled better on {paired['wins']}/{paired['seeds']} seeds."
                )
        lines.append("")
        if "scratch" not in entry and "selection" not in entry:
            lines += [
                "No BiLSTM student runs yet; the command that runs them with the TREC-6 choice:",
                "",
                f"    python -m benchmarks.text_distillation --data {name} --recipe selected --recipe-from trec6",
                "",
            ]
        lines += verdict_lines(entry, name)
        if "selection" in entry:
            lines += selection_lines(entry["selection"])
        arms = [arm for arm in entry.values() if isinstance(arm, dict) and "command" in arm]
        commands = sorted({c for arm in arms for c in arm["commands"]})
        commits = sorted({arm["commit"][:7] for arm in arms})
        lines += ["Commands (commits " + ", ".join(commits) + "):", "", *[f"    {c}" for c in commands], ""]
    return [*lines, MARKERS[1]]


def verdict_lines(entry: dict, name: str) -> list[str]:
    """The issue's bar for the headline arms: distilled ahead on every seed, ≥ 20× fewer parameters and latency."""
    teacher, scratch, distilled = entry.get("teacher"), entry.get("scratch"), entry.get("distilled")
    if not (teacher and scratch and distilled):
        return []
    key = next(k for k, v in entry.items() if v is scratch and k != "scratch")
    paired = [entry[k] for k in [key.replace("_scratch", "") + "_paired"] if k in entry]
    wins = f"{paired[0]['wins']}/{paired[0]['seeds']}" if paired else "?"
    ratio_params = teacher["params"] / distilled["params"]
    timed = entry.get(LATENCY, {}).get("latency_b1_ms")
    if not timed:
        return [f"No side-by-side latency yet: `python -m benchmarks.text_distillation --data {name} --latency`.", ""]
    ratio_latency = timed["teacher"]["median"] / timed["bilstm"]["median"]
    every = bool(paired) and paired[0]["wins"] == paired[0]["seeds"] == 5
    return [
        f"Headline (BiLSTM, recipe {distilled.get('recipe', 'first')}), against the issue's bar: distilled ahead of"
        f" scratch on {wins} seeds ({'met' if every else 'not met'}: every one of 5 required);"
        f" {ratio_params:.0f}× fewer parameters than the teacher ({'met' if ratio_params >= 20 else 'not met'});"
        f" {ratio_latency:.0f}× lower batch-1 latency ({'met' if ratio_latency >= 20 else 'not met'}); teacher"
        f" {100 * statistics.mean(teacher['test_acc']):.2f} %"
        + (f" ({'≥' if min(teacher['test_acc']) >= 0.9 else '<'} 90 % required)." if name == "trec6" else "."),
        "",
    ]


def write_report() -> None:
    summary = summarise(load_rows(RUNS))
    SUMMARY.write_text(json.dumps(summary, indent=1) + "\n")
    write_section(RESULTS_MD, markdown(summary))


def run_selection(args: argparse.Namespace, data: TextClassificationDataModule, teacher: dict, command: str) -> None:
    """Every grid recipe of both arms on the selection seeds, scored on validation only; prints the choice."""
    done = {
        (r["arm"], json.dumps(r["settings"]), r["seed"])
        for r in load_rows(RUNS)
        if r.get("selection") and (r["data"], r["student"]) == (args.data, args.student)
    }
    for seed in args.seeds:
        for arm in args.arms:
            for index, recipe in enumerate(GRIDS[args.student][arm]):
                if (arm, json.dumps(recipe.settings()), seed) in done or (args.grid and index not in args.grid):
                    continue
                result = run_arm(arm, args.student, args.data, seed, recipe, data, teacher)
                # The choice must not see the test split: its scores are dropped before the row is written.
                scores = {k: v for k, v in result.items() if k not in ("test_acc", "agreement")}
                row = {"data": args.data, "arm": arm, "student": args.student, "seed": seed, "selection": True}
                row |= {"settings": recipe.settings(), **scores, "command": command, **code_provenance()}
                append_row(RUNS, row)
                write_report()
    for arm in args.arms:
        print(arm, choose(load_rows(RUNS), args.data, args.student, arm), flush=True)


def recipe_for(args: argparse.Namespace, arm: str) -> tuple[str, Recipe]:
    if args.recipe == "first":
        return "first", STUDENTS[args.student]["first"][arm]
    source = args.recipe_from or args.data
    if (source, args.student) not in SELECTED:
        raise SystemExit(f"no selected recipe for {source}/{args.student}: run --select, then write it into SELECTED")
    chosen = SELECTED[(source, args.student)][arm]
    picked = choose(load_rows(RUNS), source, args.student, arm)
    if picked is None or picked[0] != chosen:
        raise SystemExit(f"SELECTED[{source!r}, {args.student!r}][{arm!r}] is not what the validation rows choose")
    return ("selected" if source == args.data else f"selected_on_{source}"), chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=sorted(DATA), default="trec6")
    parser.add_argument("--student", choices=sorted(STUDENTS), default="bilstm")
    parser.add_argument("--arms", nargs="+", default=["scratch", "distilled"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--recipe", choices=["first", "selected"], default="first")
    parser.add_argument("--recipe-from", choices=sorted(DATA), help="take the recipe selected on another data set")
    parser.add_argument("--select", action="store_true", help="run the student's validation grid (GRIDS) on --seeds")
    parser.add_argument("--grid", nargs="+", type=int, help="only these grid entries (to split a grid across runs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="only rebuild text.json and RESULTS.md")
    parser.add_argument("--latency", action="store_true", help="only time the teacher and students side by side")
    parser.add_argument("--smoke", action="store_true", help="64 training and test texts, one epoch, into --out")
    parser.add_argument("--out", type=Path, help="folder for the smoke run's rows and summaries")
    args = parser.parse_args()
    if args.smoke:
        global RUNS, SUMMARY, RESULTS_MD, CACHE, EPOCH_CAP
        out = args.out or Path("runs/text_smoke")
        out.mkdir(parents=True, exist_ok=True)
        RUNS, SUMMARY, RESULTS_MD, CACHE = out / "runs.jsonl", out / "text.json", out / "RESULTS.md", out
        EPOCH_CAP = 1
    if args.report:
        write_report()
        return
    code_provenance()
    quiet()
    torch.set_num_threads(args.threads)
    command = (
        f"python -m benchmarks.text_distillation --data {args.data} --student {args.student} "
        f"--arms {' '.join(args.arms)} --seeds {' '.join(map(str, args.seeds))} --threads {args.threads}"
    )
    if args.select:
        command += " --select" + (f" --grid {' '.join(map(str, args.grid))}" if args.grid else "")
    elif args.recipe != "first":
        command += f" --recipe {args.recipe}" + (f" --recipe-from {args.recipe_from}" if args.recipe_from else "")
    _, _, config_dir = DATA[args.data]
    checkpoint = Path(f"runs/{config_dir}/teacher/best.ckpt")
    data = datamodule(args.data, teacher_labels(checkpoint))
    if args.smoke:
        data.train_set, data.test_set = data.train_set.subset(torch.arange(64)), data.test_set.subset(torch.arange(64))
        data.val_set = data.val_set.subset(torch.arange(64))
    if args.latency:
        command = f"python -m benchmarks.text_distillation --data {args.data} --latency --threads {args.threads}"
        row = {"data": args.data, "arm": LATENCY, "latency_b1_ms": measure_latency(data, checkpoint)}
        append_row(RUNS, {**row, "command": command, **code_provenance()})
        write_report()
        return
    teacher = teacher_outputs(args.data, data, checkpoint)
    if args.select:
        run_selection(args, data, teacher, command)
        return
    recipes = {arm: recipe_for(args, arm) for arm in args.arms}
    rows = [r for r in load_rows(RUNS) if not r.get("selection")]
    done = {(r["data"], r["arm"], r.get("student"), r.get("seed"), r.get("recipe", "first")) for r in rows}
    if (args.data, "teacher", None, None, "first") not in done:
        network = load_network(checkpoint)
        labels = data.test_set.labels
        row = {
            "data": args.data,
            "arm": "teacher",
            "test_acc": (teacher["test"].argmax(1) == labels).float().mean().item(),
            "params": count_parameters(network),
            "command": f"python -m kd_lightning.cli fit --config configs/{config_dir}/teacher.yaml; then {command}",
        }
        append_row(RUNS, {**row, **code_provenance()})
        write_report()
    for seed in args.seeds:
        for arm in args.arms:
            name, recipe = recipes[arm]
            if (args.data, arm, args.student, seed, name) in done:
                continue
            result = run_arm(arm, args.student, args.data, seed, recipe, data, teacher)
            row = {"data": args.data, "arm": arm, "student": args.student, "seed": seed, "recipe": name}
            row |= {"settings": recipe.settings(), **result, "command": command, **code_provenance()}
            append_row(RUNS, row)
            write_report()


if __name__ == "__main__":
    main()
