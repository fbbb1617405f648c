"""All the labels: a teacher trained for the task, students at three sizes alone and distilled from it, and the
accuracy-vs-parameters curve a user chooses a student by.

Protocol (Fashion-MNIST, every label; configs in ``configs/fashion_mnist/full_labels/``):

- one fixed validation split of 6,000 training images (``val_fraction: 0.1``, data seed 0) for every stage and
  seed; every model trains on the other 54,000 and is the last step of a schedule fixed in advance;
- ``teacher``: WRN-16-4 from scratch (``teacher.yaml``), :data:`TEACHER_SEEDS`; seed 0 teaches every student;
- ``select``: per student size, Hinton KD with each (T, alpha) of :data:`GRID` on seed 0, judged by validation
  accuracy; the best is fixed for that size before any student's test accuracy is read (the selection never
  loads the test split);
- ``scratch`` and ``distilled``: each size alone (``scratch_<size>.yaml``) and distilled with its chosen T and
  alpha (``distill_<size>.yaml``, the teacher's outputs cached), the same recipe and optimizer steps, 5 seeds;
- every model's test accuracy read once, after its training; parameters, size on disk, wall time per run, and
  batch-1 CPU latency (a range over alternating rounds) per architecture.

Each finished run is appended at once to ``benchmarks/results/full_labels_runs.jsonl`` with its commit and
command; a rerun skips the runs already there, so the protocol can be spread over sessions and machines.
``full_labels.json`` (the issue's schema), the curve and the section of ``benchmarks/RESULTS.md`` are rebuilt
from those rows after every run (and by ``--report``).

    python benchmarks/full_labels.py --accelerator gpu                 # the whole protocol, everything missing
    python benchmarks/full_labels.py --threads 16                      # the same on CPUs
    python benchmarks/full_labels.py --stages scratch --sizes 5k --seeds 0 1
    python benchmarks/full_labels.py --timing 200                      # time each stage's step; no training
    python benchmarks/full_labels.py --report                          # rebuild json / curve / RESULTS.md only
    python benchmarks/full_labels.py --smoke --out /tmp/full           # the whole protocol on digits, a minute
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import StepTimer, latency_ranges  # noqa: E402
from benchmarks._runs_log import append_row, load_rows, mean_std, provenance, write_section  # noqa: E402
from kd_lightning.cli import lightning_main  # noqa: E402
from kd_lightning.data.tensor_dataset import TensorImageDataset  # noqa: E402
from kd_lightning.data.transforms import to_float_images  # noqa: E402
from kd_lightning.models.factory import create_model  # noqa: E402
from kd_lightning.report.measure import count_parameters, state_dict_bytes  # noqa: E402

CONFIGS = ROOT / "configs" / "fashion_mnist" / "full_labels"
RESULTS = ROOT / "benchmarks" / "results"
REPORT = ROOT / "benchmarks" / "RESULTS.md"
SECTION_START = "<!-- full_labels: written by benchmarks/full_labels.py --report -->"
SECTION_END = "<!-- full_labels: end -->"
STAGES = ("teacher", "select", "scratch", "distilled")
SIZES = ("5k", "50k", "500k")
SEEDS = tuple(range(5))
TEACHER_SEEDS = (0, 1, 2)
TEACHING_SEED = 0  # the teacher every student learns from; the other teacher seeds only show its spread
SELECTION_SEED = 0
# (temperature, alpha) candidates, declared before any run; the first is the configs' value.
GRID = ((2.0, 0.5), (2.0, 0.9), (4.0, 0.5), (4.0, 0.9))
# The bars: the teacher's test accuracy, and the distilled student's lead over scratch.
TEACHER_BAR = 0.935
LEAD_BAR_POINTS = 0.5
SIZES_NEEDED = 2

# --smoke: scikit-learn's digits (no download), a small_cnn teacher, schedules of a few epochs.
SMOKE_DATA = (
    "--data.class_path",
    "kd_lightning.data.DigitsDataModule",
    "--data.init_args.data_dir",
    "data",
    "--data.init_args.batch_size",
    "32",
    # 4 pixels of translation would move an 8-pixel digit half out of view.
    "--data.init_args.crop_padding",
    "1",
)
SMOKE_TEACHER = {"name": "small_cnn", "kwargs": {"width": 8, "depth": 2}}
SMOKE_EPOCHS = {"teacher": 5, "student": 3}


@dataclass
class Setting:
    """Where and how this invocation runs: real or smoke data, result folder, accelerator."""

    smoke: bool = False
    out: Path = RESULTS
    accelerator: str = "cpu"
    # Taken when the run starts: the code a process runs is the code it loaded, whatever the tree holds later.
    code: dict[str, str] = field(default_factory=lambda: provenance())

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if self.accelerator in ("gpu", "cuda") else "cpu")

    @property
    def cache_dir(self) -> Path:
        return (self.out / ".kd_cache") if self.smoke else ROOT / ".kd_cache"

    def run_dir(self, name: str, seed: int) -> Path:
        base = self.out / "runs" if self.smoke else ROOT / "runs" / "fashion_mnist" / "full_labels"
        return base / f"{name}_seed{seed}"

    def teacher_weights(self, seed: int = TEACHING_SEED) -> Path:
        return self.run_dir("teacher", seed) / "teacher.pt"


def read_config(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def teacher_spec(setting: Setting) -> dict:
    """The teacher network (``teacher.yaml``'s, or the smoke one), without weights."""
    if setting.smoke:
        return dict(SMOKE_TEACHER)
    return dict(read_config("teacher.yaml")["model"]["init_args"]["network"])


def student_spec(size: str) -> dict:
    """The student network of ``size`` (``scratch_<size>.yaml``'s; its distilled counterpart has the same)."""
    return dict(read_config(f"scratch_{size}.yaml")["model"]["init_args"]["network"])


def build(spec: dict) -> torch.nn.Module:
    return create_model(spec["name"], 10, **spec.get("kwargs", {})).eval()


def config_of(stage: str, size: str | None) -> str:
    if stage == "teacher":
        return "teacher.yaml"
    return f"scratch_{size}.yaml" if stage == "scratch" else f"distill_{size}.yaml"


def run_name(stage: str, size: str | None, temperature: float | None = None, alpha: float | None = None) -> str:
    if stage == "teacher":
        return "teacher"
    if stage == "select":
        return f"select_{size}_T{temperature:g}_a{alpha:g}"
    return f"{'distill' if stage == 'distilled' else 'scratch'}_{size}"


def cli_args(
    stage: str,
    size: str | None,
    seed: int,
    setting: Setting,
    temperature: float | None = None,
    alpha: float | None = None,
) -> list[str]:
    """The ``python -m kd_lightning.cli fit`` arguments of one run."""
    args = ["--config", str(CONFIGS / config_of(stage, size)), "--seed_everything", str(seed)]
    if setting.smoke:
        epochs = str(SMOKE_EPOCHS["teacher" if stage == "teacher" else "student"])
        args += [*SMOKE_DATA, "--trainer.max_epochs", epochs, "--model.init_args.lr_scheduler.init_args.T_max", epochs]
        if stage == "teacher":
            args += ["--model.init_args.network", json.dumps(SMOKE_TEACHER)]
        elif stage in ("select", "distilled"):
            args += ["--model.init_args.teacher_cache.views", epochs]
    if stage in ("select", "distilled"):
        teacher = teacher_spec(setting) | {"weights_path": str(setting.teacher_weights())}
        args += ["--model.init_args.teacher", json.dumps(teacher)]
        args += ["--model.init_args.teacher_cache.directory", str(setting.cache_dir / "teacher")]
        args += ["--model.init_args.temperature", str(temperature), "--model.init_args.alpha", str(alpha)]
    directory = setting.run_dir(run_name(stage, size, temperature, alpha), seed)
    return args + [
        "--trainer.accelerator",
        setting.accelerator,
        "--trainer.default_root_dir",
        str(directory),
        # The last callback of every config is its ModelCheckpoint.
        "--trainer.callbacks.init_args.dirpath",
        str(directory),
        "--trainer.enable_progress_bar",
        "false",
    ]


def fit(stage: str, size: str | None, seed: int, setting: Setting, **objective: float):
    """Train one run to the end of its schedule; the Lightning CLI objects and the wall time."""
    if stage in ("select", "distilled") and not setting.teacher_weights().exists():
        raise FileNotFoundError(f"{stage} {size} needs the teacher of seed {TEACHING_SEED}: run --stages teacher")
    start = time.time()
    cli = lightning_main(cli_args(stage, size, seed, setting, **objective), run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    return cli, round(time.time() - start, 1)


@torch.no_grad()
def accuracy(network: torch.nn.Module, dataset: TensorImageDataset, image_size: int | None, device) -> float:
    """Top-1 accuracy of ``network`` on a uint8 dataset, prepared as the DataModule prepares eval batches."""
    network = network.eval().to(device)
    correct = 0
    for start in range(0, len(dataset), 500):
        images = to_float_images(dataset.images[start : start + 500].to(device), image_size)
        correct += (network(images).argmax(1).cpu() == dataset.labels[start : start + 500]).sum().item()
    return correct / len(dataset)


def sizes_of(network: torch.nn.Module, cli) -> dict:
    return dict(
        params=count_parameters(network),
        size_bytes=state_dict_bytes(network.cpu()),
        steps=int(cli.trainer.global_step),
    )


def run_teacher(seed: int, setting: Setting) -> dict:
    """Train the teacher of ``seed``, store its network's weights for the students, read val then test once."""
    cli, fit_s = fit("teacher", None, seed, setting)
    network, data = cli.model.network.eval(), cli.datamodule
    path = setting.teacher_weights(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    val_acc = accuracy(network, data.val_set, data.image_size, setting.device)
    data.setup("test")
    test_acc = accuracy(network, data.test_set, data.image_size, setting.device)
    return dict(val_acc=round(val_acc, 4), test_acc=round(test_acc, 4), fit_s=fit_s, **sizes_of(network, cli))


def run_selection(size: str, temperature: float, alpha: float, setting: Setting) -> dict:
    """One (T, alpha) candidate of ``size`` on the selection seed, judged on the validation split alone: the
    DataModule is only set up for fitting, and the test split is never loaded."""
    cli, fit_s = fit("select", size, SELECTION_SEED, setting, temperature=temperature, alpha=alpha)
    network, data = cli.model.network.eval(), cli.datamodule
    val_acc = accuracy(network, data.val_set, data.image_size, setting.device)
    return dict(temperature=temperature, alpha=alpha, val_acc=round(val_acc, 4), fit_s=fit_s, **sizes_of(network, cli))


def run_student(stage: str, size: str, seed: int, setting: Setting, rows: list[dict]) -> dict:
    """A scratch or distilled student of ``size`` and ``seed``; the distilled one at its size's chosen T/alpha."""
    objective = {}
    if stage == "distilled":
        choice = chosen(rows, size)
        if choice is None:
            raise RuntimeError(f"distilled {size} needs its T/alpha: run --stages select --sizes {size} first")
        objective = {"temperature": choice[0], "alpha": choice[1]}
    cli, fit_s = fit(stage, size, seed, setting, **objective)
    network, data = cli.model.network.eval(), cli.datamodule
    data.setup("test")
    test_acc = accuracy(network, data.test_set, data.image_size, setting.device)
    return dict(**objective, test_acc=round(test_acc, 4), fit_s=fit_s, **sizes_of(network, cli))


def chosen(rows: list[dict], size: str) -> tuple[float, float] | None:
    """The (T, alpha) of :data:`GRID` with the best validation accuracy for ``size`` (ties: the earlier
    candidate), once every candidate has run; ``None`` before."""
    scores = {
        (r["temperature"], r["alpha"]): r["val_acc"] for r in rows if r["stage"] == "select" and r["size"] == size
    }
    if any(candidate not in scores for candidate in GRID):
        return None
    return max(GRID, key=lambda candidate: (scores[candidate], -GRID.index(candidate)))


def command_of(stage: str, size: str | None, seeds: list[int], setting: Setting) -> str:
    """The driver command that reruns exactly these runs (it appends to the runs log only what is missing)."""
    sizes = "" if size is None else f" --sizes {size}"
    extra = " --smoke" if setting.smoke else ""
    return f"python benchmarks/full_labels.py --stages {stage}{sizes} --seeds {' '.join(map(str, seeds))}{extra}"


@dataclass(frozen=True)
class Task:
    """One run of the protocol, and the key its row is found by."""

    stage: str
    size: str | None
    seed: int
    temperature: float | None = None
    alpha: float | None = None

    @property
    def key(self) -> tuple:
        select = self.stage == "select"
        return (
            self.stage,
            self.size,
            self.seed,
            self.temperature if select else None,
            self.alpha if select else None,
        )


def row_key(row: dict) -> tuple:
    select = row["stage"] == "select"
    return (
        row["stage"],
        row["size"],
        row["seed"],
        row.get("temperature") if select else None,
        row.get("alpha") if select else None,
    )


def plan(stages: list[str], sizes: list[str], seeds: list[int] | None) -> Iterator[Task]:
    """The runs in the order the protocol needs them: the teaching teacher, every size's selection, the
    students, and last the teacher's other seeds (they teach nobody)."""
    teacher_seeds = [s for s in (TEACHER_SEEDS if seeds is None else seeds) if s in TEACHER_SEEDS]
    if "teacher" in stages and TEACHING_SEED in teacher_seeds:
        yield Task("teacher", None, TEACHING_SEED)
    for size in sizes:
        if "select" in stages:
            for temperature, alpha in GRID:
                yield Task("select", size, SELECTION_SEED, temperature, alpha)
        for seed in SEEDS if seeds is None else seeds:
            for stage in ("scratch", "distilled"):
                if stage in stages:
                    yield Task(stage, size, seed)
    if "teacher" in stages:
        yield from (Task("teacher", None, seed) for seed in teacher_seeds if seed != TEACHING_SEED)


def run_task(task: Task, setting: Setting, rows: list[dict]) -> dict:
    if task.stage == "teacher":
        result = run_teacher(task.seed, setting)
    elif task.stage == "select":
        assert task.size is not None and task.temperature is not None and task.alpha is not None
        result = run_selection(task.size, task.temperature, task.alpha, setting)
    else:
        assert task.size is not None
        result = run_student(task.stage, task.size, task.seed, setting, rows)
    return dict(
        stage=task.stage,
        size=task.size,
        seed=task.seed,
        **result,
        accelerator=setting.accelerator,
        command=command_of(task.stage, task.size, [task.seed], setting),
        invocation=shlex.join(["python", *sys.argv]),
        **setting.code,
        time=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    )


def measure_latency(setting: Setting, rounds: int = 7) -> dict[str, dict[str, float]]:
    """Batch-1 CPU latency (ms, ``torch.inference_mode``) of the teacher and of each student, as a range.

    Each round times every network once (median of 20 passes) in turn, so load from other jobs shifts them
    alike; the result is the minimum, median and maximum over rounds. Weights do not change latency, so
    untrained networks of each architecture are timed.
    """
    networks = {"teacher": build(teacher_spec(setting))} | {size: build(student_spec(size)) for size in SIZES}
    side = 8 if setting.smoke else 28
    return latency_ranges(networks, torch.rand(1, 1, side, side), rounds)


def schedule(name: str) -> dict[str, int]:
    """Epochs, optimizer steps per epoch and training images of a config (smoke runs excepted)."""
    config = read_config(name)
    data = config["data"]["init_args"]
    train = 60_000 - round(60_000 * data["val_fraction"])
    return {
        "epochs": config["trainer"]["max_epochs"],
        "steps_per_epoch": math.ceil(train / data["batch_size"]),
        "train_images": train,
        "val_images": 60_000 - train,
    }


def time_steps(stage: str, size: str | None, steps: int, setting: Setting) -> float:
    """Median seconds per optimizer step of ``stage`` over ``steps`` steps (the first two excluded)."""
    directory = setting.run_dir(f"timing_{run_name(stage, size)}", 0)
    args = cli_args(stage, size, 0, setting)
    args += ["--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0"]
    args += ["--trainer.default_root_dir", str(directory), "--trainer.callbacks.init_args.dirpath", str(directory)]
    cli = lightning_main(args, run=False)
    timer = StepTimer()
    cli.trainer.callbacks.append(timer)  # type: ignore[attr-defined]  # set by Lightning's callback connector
    cli.trainer.fit(cli.model, cli.datamodule)
    return round(timer.median, 5)


@torch.no_grad()
def teacher_images_per_s(setting: Setting, batches: int = 5) -> float:
    """Inference throughput of the teacher at the eval batch size (what filling the teacher cache costs)."""
    network = build(teacher_spec(setting)).to(setting.device)
    side = 8 if setting.smoke else 28
    x = torch.rand(500, 1, side, side, device=setting.device)
    network(x)
    if setting.device.type == "cuda":  # the clock starts once the warm-up pass has finished
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        network(x)
    if setting.device.type == "cuda":
        torch.cuda.synchronize()
    return round(batches * len(x) / (time.perf_counter() - start), 1)


def measure_timing(steps: int, setting: Setting) -> dict:
    """Seconds per step of the teacher and of each scratch student, and the teacher's inference throughput.

    The distilled student's step is the scratch step plus reading its cached teacher outputs, so it is taken
    to cost the same; the teacher's forward passes are counted once, in the cache fill.
    """
    step_s = {"teacher": time_steps("teacher", None, steps, setting)}
    step_s |= {size: time_steps("scratch", size, steps, setting) for size in SIZES}
    return {"steps": steps, "step_s": step_s, "teacher_images_per_s": teacher_images_per_s(setting)}


def estimate_hours(timing: dict) -> dict[str, float]:
    """Device hours of the whole protocol from one timing row, per stage."""
    teacher = schedule("teacher.yaml")
    student = schedule(f"scratch_{SIZES[0]}.yaml")
    views = read_config(f"distill_{SIZES[0]}.yaml")["model"]["init_args"]["teacher_cache"]["views"]
    throughput = timing["teacher_images_per_s"]
    step_s = timing["step_s"]
    # Validation passes and precise-BN batches of the teacher, every 5 epochs.
    checks = teacher["epochs"] // 5 * (teacher["val_images"] + 64 * 128)
    one_teacher = teacher["epochs"] * teacher["steps_per_epoch"] * step_s["teacher"] + checks / throughput
    student_steps = student["epochs"] * student["steps_per_epoch"]
    hours = {
        "teacher": len(TEACHER_SEEDS) * one_teacher / 3600,
        "teacher_cache": student["train_images"] * views / throughput / 3600,
        "select": sum(len(GRID) * student_steps * step_s[size] for size in SIZES) / 3600,
        "scratch": sum(len(SEEDS) * student_steps * step_s[size] for size in SIZES) / 3600,
        "distilled": sum(len(SEEDS) * student_steps * step_s[size] for size in SIZES) / 3600,
    }
    return {stage: round(h, 2) for stage, h in hours.items()} | {"total": round(sum(hours.values()), 1)}


def entry(rows: list[dict], stage: str, size: str | None, setting: Setting) -> dict:
    """Test accuracy per seed (in seed order), seeds, wall time per run and the command of one cell."""
    runs = sorted((r for r in rows if r["stage"] == stage and r["size"] == size), key=lambda r: r["seed"])
    seeds = [r["seed"] for r in runs]
    return {
        "test_acc": [r["test_acc"] for r in runs],
        "seeds": seeds,
        "fit_s": [r["fit_s"] for r in runs],
        "steps": runs[0]["steps"] if runs else None,
        "commits": sorted({r["commit"] for r in runs}),
        "command": command_of(stage, size, seeds or list(SEEDS if stage != "teacher" else TEACHER_SEEDS), setting),
    }


def latency_of(latency: dict, name: str) -> dict:
    timing = latency.get(name)
    return {
        "latency_b1_ms": timing["median"] if timing else None,
        "latency_b1_ms_range": [timing["min"], timing["max"]] if timing else None,
    }


def summarise(rows: list[dict], latency: dict, setting: Setting) -> dict:
    """The issue's schema: ``{"teacher": {test_acc, params, latency_b1_ms, command, ...}, "students": [{name,
    params, latency_b1_ms, scratch: {test_acc, command}, distilled: {method, alpha, temperature, test_acc,
    command}}, ...]}``, every ``test_acc`` in seed order (``seeds`` says which)."""
    teacher_network = build(teacher_spec(setting))
    teacher_rows = [r for r in rows if r["stage"] == "teacher"]
    teacher = {
        "network": teacher_spec(setting),
        "params": count_parameters(teacher_network),
        "size_bytes": state_dict_bytes(teacher_network),
        **latency_of(latency, "teacher"),
        **entry(rows, "teacher", None, setting),
        "val_acc": [r["val_acc"] for r in sorted(teacher_rows, key=lambda r: r["seed"])],
    }
    students = []
    for size in SIZES:
        network = build(student_spec(size))
        choice = chosen(rows, size)
        grid = {
            f"T={r['temperature']:g} alpha={r['alpha']:g}": r["val_acc"]
            for r in rows
            if r["stage"] == "select" and r["size"] == size
        }
        students.append(
            {
                "name": size,
                "network": student_spec(size),
                "params": count_parameters(network),
                "size_bytes": state_dict_bytes(network),
                **latency_of(latency, size),
                "scratch": entry(rows, "scratch", size, setting),
                "distilled": {
                    "method": "kd",
                    "alpha": choice[1] if choice else None,
                    "temperature": choice[0] if choice else None,
                    "selection_val_acc": grid,
                    **entry(rows, "distilled", size, setting),
                },
            }
        )
    return {"teacher": teacher, "students": students}


def paired(student: dict) -> list[tuple[int, float]]:
    """``(seed, distilled − scratch)`` test accuracy for the seeds both finished."""
    scratch = dict(zip(student["scratch"]["seeds"], student["scratch"]["test_acc"], strict=True))
    distilled = dict(zip(student["distilled"]["seeds"], student["distilled"]["test_acc"], strict=True))
    return [(seed, distilled[seed] - scratch[seed]) for seed in distilled if seed in scratch]


def verdict_lines(summary: dict) -> list[str]:
    """The issue's bars, each said plainly: the teacher's test accuracy, and per size whether the distilled
    student leads scratch by at least :data:`LEAD_BAR_POINTS` on the mean and on every seed."""
    teacher = summary["teacher"]["test_acc"]
    if teacher:
        mean = statistics.mean(teacher)
        state = "meets" if mean >= TEACHER_BAR else "misses"
        lines = [
            f"- teacher: {100 * mean:.2f} % test accuracy ({len(teacher)} seed(s)); {state} the "
            f"{100 * TEACHER_BAR:.1f} % bar."
        ]
    else:
        lines = ["- teacher: not run yet."]
    met = 0
    for student in summary["students"]:
        diffs = paired(student)
        if not diffs:
            lines.append(f"- {student['name']}: no paired seeds yet.")
            continue
        lead = 100 * statistics.mean(d for _, d in diffs)
        ahead = sum(d > 0 for _, d in diffs)
        complete = len(diffs) == len(SEEDS)
        meets = lead >= LEAD_BAR_POINTS and ahead == len(diffs)
        met += meets and complete
        reasons = []
        if lead < LEAD_BAR_POINTS:
            reasons.append(f"mean lead {lead:+.2f} points < {LEAD_BAR_POINTS}")
        if ahead < len(diffs):
            reasons.append(f"ahead on {ahead} of {len(diffs)} seeds only")
        verdict = "meets the bar" if meets else "does NOT meet the bar (" + "; ".join(reasons) + ")"
        state = "all seeds" if complete else f"{len(diffs)} of {len(SEEDS)} seeds, provisional"
        lines.append(
            f"- {student['name']} ({student['params']:,} parameters): distilled − scratch {lead:+.2f} points, ahead on "
            f"{ahead} of {len(diffs)} seeds ({state}): {verdict}."
        )
    lines.append(
        f"- sizes where distillation meets the bar on all {len(SEEDS)} seeds: {met} of {len(SIZES)} "
        f"(the issue asks for {SIZES_NEEDED})."
    )
    return lines


def missing_runs(rows: list[dict]) -> list[str]:
    """Every run of the full protocol without a row, grouped by stage and size."""
    done = {row_key(r) for r in rows}
    missing: dict[str, list[str]] = {}
    for task in plan(list(STAGES), list(SIZES), None):
        if task.key not in done:
            label = task.stage + (f" {task.size}" if task.size else "")
            value = f"T={task.temperature:g}/α={task.alpha:g}" if task.stage == "select" else f"seed {task.seed}"
            missing.setdefault(label, []).append(value)
    return [f"{label}: {', '.join(values)}" for label, values in missing.items()]


def cell(values: list[float]) -> str:
    return mean_std(values) if values else "not run"


def latency_cell(entry: dict) -> str:
    span = entry["latency_b1_ms_range"]
    return f"{span[0]:.2f}-{span[1]:.2f}" if span else "not measured"


def report_lines(summary: dict, rows: list[dict], timing: dict | None) -> list[str]:
    """The RESULTS.md section: the protocol as declared, the table, the bars, what is missing and its cost."""
    teacher = summary["teacher"]
    lines = [
        SECTION_START,
        "## All the labels: a teacher trained for the task, and accuracy against student size (issue 23)",
        "",
        "Protocol, declared before any run (`benchmarks/full_labels.py`, configs in",
        "`configs/fashion_mnist/full_labels/`):",
        "Fashion-MNIST with every label; one fixed validation split of 6,000 training images (data seed 0) for every",
        "choice, every model trained on the other 54,000 and taken at the last step of a fixed schedule, the 10,000",
        "test images read once per model after its training. Teacher: WRN-16-4 from scratch (pad-4 crop + flip, SGD",
        "0.1 Nesterov, weight decay 5e-4, cosine, 60 epochs, batch 128, precise BN), seed 0 teaches every student.",
        "Students: `small_cnn` depth 3 at widths 4 / 13 / 42 (5k / 50k / 500k parameters), alone and distilled",
        "(Hinton KD, the teacher's outputs cached on 30 fixed augmented views, view e in epoch e) with the same recipe",
        "and optimizer steps (30 epochs, 12,660 steps, the teacher's augmentation and optimizer). T and α chosen per",
        "size on validation accuracy, seed 0, among T ∈ {2, 4} × α ∈ {0.5, 0.9}, then fixed; 5 seeds per cell.",
        "Latency: batch 1, one CPU thread, `torch.inference_mode`, min-max over 7 alternating rounds.",
        "",
        "![accuracy against parameters](results/full_labels_curve.png)",
        "",
        "| model | params | size (kB) | latency b=1 (ms) | T / α | seeds | test acc | fit s (per seed) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| teacher WRN-16-4 | {teacher['params']:,} | {teacher['size_bytes'] / 1000:.0f} | {latency_cell(teacher)} | "
        f"| {','.join(map(str, teacher['seeds'])) or '-'} | {cell(teacher['test_acc'])} | "
        f"{', '.join(f'{s:.0f}' for s in teacher['fit_s'])} |",
    ]
    for student in summary["students"]:
        for kind in ("scratch", "distilled"):
            run = student[kind]
            objective = f"{run['temperature']:g} / {run['alpha']:g}" if kind == "distilled" and run["alpha"] else ""
            lines.append(
                f"| {student['name']} {kind} | {student['params']:,} | {student['size_bytes'] / 1000:.0f} | "
                f"{latency_cell(student)} | {objective} | {','.join(map(str, run['seeds'])) or '-'} | "
                f"{cell(run['test_acc'])} | {', '.join(f'{s:.0f}' for s in run['fit_s'])} |"
            )
    lines += ["", "Selection (validation accuracy, seed 0):", ""]
    for student in summary["students"]:
        grid = student["distilled"]["selection_val_acc"]
        values = ", ".join(f"{k}: {v:.4f}" for k, v in grid.items()) if grid else "not run"
        lines.append(f"- {student['name']}: {values}")
    lines += ["", "Paired differences per seed, distilled − scratch (test accuracy points):", ""]
    for student in summary["students"]:
        diffs = paired(student)
        if diffs:
            lines.append(f"- {student['name']}: " + ", ".join(f"seed {s}: {100 * d:+.2f}" for s, d in diffs))
    lines += [
        "",
        "The issue's bars (teacher ≥ 93.5 %; distilled ≥ 0.5 points ahead on the mean and on every seed):",
        "",
    ]
    lines += verdict_lines(summary)
    missing = missing_runs(rows)
    lines += ["", "Runs missing: " + ("; ".join(missing) if missing else "none") + "."]
    lines += ["", "Cost and the one command:", ""]
    if timing is not None:
        hours = estimate_hours(timing)
        per_epoch = schedule("teacher.yaml")["steps_per_epoch"]
        step_ms = ", ".join(f"{name} {1000 * s:.1f} ({s * per_epoch / 60:.1f})" for name, s in timing["step_s"].items())
        lines += [
            f"- measured by `{timing['command']}` (commit {timing['commit'][:12]}; {timing['machine']}; load average "
            f"{timing['load_average']} on a shared machine): ms per optimizer step at batch 128 (minutes per "
            f"{per_epoch}-step epoch): {step_ms}; teacher "
            f"inference {timing['teacher_images_per_s']:.0f} images/s at batch 500.",
            "- estimated device hours of the whole protocol at that speed: "
            + ", ".join(f"{stage} {h:g}" for stage, h in hours.items())
            + " (the distilled step taken as the scratch step: the cached teacher outputs are read, not computed).",
        ]
    else:
        lines.append("- not timed yet: `python benchmarks/full_labels.py --timing 200`.")
    lines += [
        "- everything missing, resumable, one command: `python benchmarks/full_labels.py --accelerator gpu`",
        "  (or `--threads N` on CPUs); `--report` rebuilds this section, the json and the curve from the rows.",
        "",
        "Commands per cell:",
        "",
        f"- teacher: `{teacher['command']}`",
    ]
    for student in summary["students"]:
        for kind in ("scratch", "distilled"):
            lines.append(f"- {student['name']} {kind}: `{student[kind]['command']}`")
    return [*lines, SECTION_END]


def plot_curve(summary: dict, path: Path) -> None:
    """Test accuracy against parameters (log x): scratch and distilled, each seed a dot and the mean a line; the
    teacher a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, kind in enumerate(("scratch", "distilled")):
        xs, means = [], []
        shift = (0.93, 1.07)[i]  # side by side on the log axis, so the seeds of the two stay apart
        for student in summary["students"]:
            accs = student[kind]["test_acc"]
            if accs:
                ax.plot([student["params"] * shift] * len(accs), accs, ".", color=f"C{i}", alpha=0.5, ms=5)
                xs.append(student["params"] * shift)
                means.append(statistics.mean(accs))
        if xs:
            ax.plot(xs, means, "-o", color=f"C{i}", label=f"student, {kind}")
    teacher = summary["teacher"]
    if teacher["test_acc"]:
        ax.plot(teacher["params"], statistics.mean(teacher["test_acc"]), "*", color="C3", ms=14, label="teacher")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy")
    ax.set_title("Fashion-MNIST, all labels: each dot a seed, lines the means")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def rebuild(setting: Setting) -> dict:
    """full_labels.json, the curve and (outside smoke mode) the RESULTS.md section, from the rows."""
    out = setting.out
    rows = load_rows(out / "full_labels_runs.jsonl")
    latency_rows = load_rows(out / "full_labels_latency.jsonl")
    timing_rows = load_rows(out / "full_labels_timing.jsonl")
    summary = summarise(rows, latency_rows[-1]["latency_b1_ms"] if latency_rows else {}, setting)
    (out / "full_labels.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_curve(summary, out / "full_labels_curve.png")
    if not setting.smoke:
        write_section(REPORT, report_lines(summary, rows, timing_rows[-1] if timing_rows else None))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--sizes", nargs="+", choices=SIZES, default=list(SIZES))
    parser.add_argument("--seeds", nargs="+", type=int, help="default: every seed of each stage")
    parser.add_argument("--report", action="store_true", help="only rebuild full_labels.json, the curve and RESULTS.md")
    parser.add_argument("--latency", action="store_true", help="only (re)measure batch-1 CPU latency")
    parser.add_argument("--timing", type=int, metavar="STEPS", help="only time STEPS optimizer steps of each stage")
    parser.add_argument("--smoke", action="store_true", help="digits, a small_cnn teacher, a few epochs")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the result files")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the CPU is shared with other jobs)")
    parser.add_argument("--accelerator", default="cpu", help="the Trainer's accelerator (cpu, gpu) for every stage")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    setting = Setting(smoke=args.smoke, out=args.out, accelerator=args.accelerator)
    runs_file = args.out / "full_labels_runs.jsonl"
    latency_file = args.out / "full_labels_latency.jsonl"
    provenance_row = {
        "command": shlex.join(["python", "benchmarks/full_labels.py", *(sys.argv[1:] if argv is None else argv)]),
        **setting.code,
        "load_average": round(os.getloadavg()[0], 1),
    }
    if args.timing:
        append_row(args.out / "full_labels_timing.jsonl", measure_timing(args.timing, setting) | provenance_row)
    elif args.latency:
        append_row(latency_file, {"latency_b1_ms": measure_latency(setting), **provenance_row})
    elif not args.report:
        rows = load_rows(runs_file)
        for task in plan(args.stages, args.sizes, args.seeds):
            if task.key in {row_key(r) for r in rows}:
                print(f"skip {task}: already in {runs_file}", flush=True)
                continue
            row = run_task(task, setting, rows)
            append_row(runs_file, row)
            rows.append(row)
            rebuild(setting)
        if not load_rows(latency_file):
            append_row(latency_file, {"latency_b1_ms": measure_latency(setting), **provenance_row})
    summary = rebuild(setting)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
