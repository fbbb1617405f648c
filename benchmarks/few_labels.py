"""Few labels, many unlabeled images: a transfer-learned teacher teaches a tiny student (issue 14).

For each label budget (``k10``, ``k100`` labels per class, and ``full``) and each seed the driver trains
the configs of ``configs/fashion_mnist/few_labels/`` exactly as ``python -m kd_lightning.cli fit --config ...``
would (same parser, the overrides shown in each result's command), then measures the checkpoint (the best on
the DataModule's validation split; the last epoch for distillation) on all 10,000 Fashion-MNIST test images:

- ``teacher``: ImageNet EfficientNet-Lite0, frozen, with a linear head trained on its cached 112-px features
  (pooled from stages 3 and 4) of the ``k`` labelled images per class (test accuracy from cached test features,
  checked against the network);
- ``scratch``: the student (``small_cnn``) trained on the same ``k`` labelled images alone;
- ``distilled``: the same student on all training images, ``k`` per class labelled and the rest unlabeled,
  taught by the teacher of its regime and seed through the teacher cache. The teachers of all seeds and
  regimes share one frozen backbone, so the cache computes its features of the training images once
  (``teacher_cache.share_backbone_features``) and each teacher costs one pass of its head.

Each finished run is appended to ``benchmarks/results/few_labels_runs.jsonl`` at once, and a rerun skips
the runs already there, so the protocol can be spread over several sessions. ``few_labels.json`` (the
summary in the issue's schema), the plot and the section of ``benchmarks/RESULTS.md`` are rebuilt from
those rows after every run.

    python benchmarks/few_labels.py                                  # everything not yet run
    python benchmarks/few_labels.py --regimes k100 --models teacher --seeds 0 1
    python benchmarks/few_labels.py --report                         # rebuild json / plot / RESULTS.md only
    python benchmarks/few_labels.py --smoke --out /tmp/fl            # the whole protocol on tiny data
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from kd_lightning.cache.feature_cache import compute_features, feature_key  # noqa: E402
from kd_lightning.cache.store import CacheStore  # noqa: E402
from kd_lightning.cli import lightning_main  # noqa: E402
from kd_lightning.data.transforms import to_float_images  # noqa: E402
from kd_lightning.modules import FrozenBackboneFinetuner  # noqa: E402
from kd_lightning.report.measure import count_parameters, cpu_latency_ms, state_dict_bytes  # noqa: E402

CONFIGS = ROOT / "configs" / "fashion_mnist" / "few_labels"
RESULTS = ROOT / "benchmarks" / "results"
REPORT = ROOT / "benchmarks" / "RESULTS.md"
SECTION_START = "<!-- few_labels: written by benchmarks/few_labels.py --report -->"
SECTION_END = "<!-- few_labels: end -->"
SEEDS = (0, 1, 2, 3, 4)
# Labels per class of each regime; ``None`` keeps every label of the training split.
REGIMES: dict[str, int | None] = {"k10": 10, "k100": 100, "full": None}
MODELS = ("teacher", "scratch", "distilled", "patient")
# The patient schedule (Beyer et al., 2022): the distilled student trained longer on the cached teacher outputs.
# 10 epochs chosen on validation (k=100, seed 0: val 0.7983 after 3 epochs, 0.8200 after 5 of 10).
PATIENT = ("--trainer.max_epochs", "10", "--model.init_args.lr_scheduler.init_args.T_max", "10")
STUDENTS_OF_A_TEACHER = ("distilled", "patient")
# The schema has no teacher for the full-label comparison; the driver trains one only as the
# distilled student's teacher there.
REPORTED = {"k10": MODELS, "k100": MODELS, "full": ("scratch", "distilled")}
# With all labels an epoch has 58,800 labelled images instead of 1,000: shorter schedules (cosine over them).
FULL_SCHEDULES: dict[str, tuple[str, ...]] = {
    "teacher": ("--trainer.max_epochs", "5", "--trainer.check_val_every_n_epoch", "1"),
    "scratch": (
        "--trainer.max_epochs",
        "10",
        "--trainer.check_val_every_n_epoch",
        "1",
        "--model.init_args.lr_scheduler.init_args.T_max",
        "10",
    ),
    # Without a label budget there is no unlabeled rest. The scratch student's epochs and cosine schedule (as long
    # as the patient schedule of the label budgets, so no separate patient run) at distill.yaml's batch of 128:
    # half the scratch student's optimizer steps (batch 64), a comparison that favours scratch if either.
    "distilled": (
        "--data.init_args.unlabeled",
        "null",
        "--trainer.max_epochs",
        "10",
        "--model.init_args.lr_scheduler.init_args.T_max",
        "10",
    ),
}
# With k labels per class every model keeps its config's schedule; the patient student trains longer.
BUDGET_SCHEDULES: dict[str, tuple[str, ...]] = {"teacher": (), "scratch": (), "distilled": (), "patient": PATIENT}
MODEL_CONFIGS = {
    "teacher": "teacher_linear_probe.yaml",
    "scratch": "student_scratch.yaml",
    "distilled": "distill.yaml",
    "patient": "distill.yaml",
}


@dataclass(frozen=True)
class Stage:
    """One model of one regime: its config and the overrides that make it this regime's run."""

    regime: str
    model: str
    config: str
    overrides: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.regime}/{self.model}"


def stages(regime: str) -> list[Stage]:
    """The teacher, scratch and distilled runs of ``regime``, in the order they depend on each other."""
    k = REGIMES[regime]
    labels = ("--data.init_args.samples_per_class", "null" if k is None else str(k))
    schedules = FULL_SCHEDULES if k is None else BUDGET_SCHEDULES
    return [Stage(regime, model, MODEL_CONFIGS[model], labels + schedule) for model, schedule in schedules.items()]


def run_dir(regime: str, model: str, seed: int) -> Path:
    return ROOT / "runs" / "fashion_mnist" / "few_labels" / regime / f"{model}_seed{seed}"


def teacher_checkpoint(regime: str, seed: int) -> Path:
    """The distilled student of a regime and seed learns from the teacher of the same regime and seed."""
    return run_dir(regime, "teacher", seed) / "best.ckpt"


# Tiny settings for --smoke: scikit-learn's digits (no download), small networks, one epoch.
SMOKE_OVERRIDES = (
    "--data.class_path",
    "kd_lightning.data.DigitsDataModule",
    "--data.init_args.data_dir",
    "data",
    "--data.init_args.val_fraction",
    "0.1",
    "--trainer.max_epochs",
    "1",
    "--trainer.check_val_every_n_epoch",
    "1",
)
# The smoke teacher pools its last stage through a standardised head, like the real one pools stages 3 and 4.
SMOKE_NETWORK = {"name": "small_cnn", "kwargs": {"width": 8}, "feature_layers": ["stage:-1"], "head_norm": True}
SMOKE_TEACHER = ("--model.init_args.network", json.dumps(SMOKE_NETWORK | {"pretrained": False}))


def smoke_overrides(stage: Stage, seed: int, out: Path) -> tuple[str, ...]:
    extra = SMOKE_OVERRIDES
    if stage.model == "teacher":
        extra += SMOKE_TEACHER + ("--data.init_args.image_size", "16")
    if stage.model in STUDENTS_OF_A_TEACHER:
        teacher = SMOKE_NETWORK | {"input_size": 16}
        teacher["weights_path"] = str(smoke_teacher(stage, seed, out))
        extra += ("--model.init_args.teacher", json.dumps(teacher))
    return extra


def smoke_teacher(stage: Stage, seed: int, out: Path) -> Path:
    return out / "runs" / stage.regime / f"teacher_seed{seed}" / "best.ckpt"


def cli_args(stage: Stage, seed: int, smoke: bool, out: Path) -> list[str]:
    args = ["--config", str(CONFIGS / stage.config), *stage.overrides, "--seed_everything", str(seed)]
    if smoke:
        return args + list(smoke_overrides(stage, seed, out))
    if stage.model in STUDENTS_OF_A_TEACHER:
        args += ["--model.init_args.teacher.weights_path", str(teacher_checkpoint(stage.regime, seed))]
    return args


def command_of(stage: Stage) -> str:
    """The CLI command of one seed of ``stage`` (``N`` = the seed), and the driver command of all of them."""
    overrides = " ".join(str(Path(a).relative_to(ROOT)) if a.startswith(str(ROOT)) else a for a in stage.overrides)
    if stage.model in STUDENTS_OF_A_TEACHER:
        teacher = teacher_checkpoint(stage.regime, 0).relative_to(ROOT)
        overrides += f" --model.init_args.teacher.weights_path {str(teacher).replace('seed0', 'seedN')}"
    return (
        f"python -m kd_lightning.cli fit --config configs/fashion_mnist/few_labels/{stage.config} {overrides} "
        f"--seed_everything N; all seeds, with the test: python benchmarks/few_labels.py --regimes {stage.regime} "
        f"--models {stage.model}"
    )


def train_and_test(stage: Stage, seed: int, smoke: bool, out: Path) -> dict:
    """Fit one seed of ``stage``, reload its checkpoint (best on validation; the last for ``distilled``), test it."""
    directory = (
        (out / "runs" / stage.regime / f"{stage.model}_seed{seed}")
        if smoke
        else run_dir(stage.regime, stage.model, seed)
    )
    args = cli_args(stage, seed, smoke, out) + [
        "--trainer.default_root_dir",
        str(directory),
        "--trainer.callbacks.init_args.dirpath",
        str(directory),
        "--trainer.enable_progress_bar",
        "false",
    ]
    if stage.model in STUDENTS_OF_A_TEACHER:
        teacher = smoke_teacher(stage, seed, out) if smoke else teacher_checkpoint(stage.regime, seed)
        if not teacher.exists():
            raise FileNotFoundError(f"{stage.name} needs its teacher {teacher}: run --models teacher first")
    start = time.time()
    cli = lightning_main(args, run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    fit_s = time.time() - start
    checkpoint = cli.trainer.checkpoint_callback
    saved = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    cli.model.load_state_dict(saved["state_dict"])
    network = cli.model.network.eval()
    data = cli.datamodule
    data.setup("test")
    if isinstance(cli.model, FrozenBackboneFinetuner) and cli.model.feature_cache is not None:
        test_acc = probe_accuracy(network, data, cli.model.feature_cache.store)
    else:
        test_acc = accuracy(network, data.test_set.images, data.test_set.labels, data.image_size)
    if checkpoint.best_model_score is not None:
        val_acc = float(checkpoint.best_model_score)
    else:  # trained without validation (distillation: it would run the teacher): the last epoch is the result
        val_acc = accuracy(network, data.val_set.images, data.val_set.labels, data.image_size)
    return dict(
        regime=stage.regime,
        model=stage.model,
        seed=seed,
        test_acc=test_acc,
        val_acc=round(val_acc, 4),
        best_epoch=int(saved["epoch"]),
        labelled=10 * REGIMES[stage.regime] if REGIMES[stage.regime] else len(data.train_set),
        params=count_parameters(network),
        size_bytes=state_dict_bytes(network),
        input_size=data.image_size or data.test_set.images.shape[-1],
        fit_s=round(fit_s, 1),
        test_s=round(time.time() - start - fit_s, 1),
        command=command_of(stage),
    )


@torch.no_grad()
def accuracy(network: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, image_size: int | None) -> float:
    """Top-1 accuracy of ``network`` on uint8 ``images``, prepared as the DataModule prepares eval batches."""
    correct = 0
    for start in range(0, len(images), 500):
        logits = network(to_float_images(images[start : start + 500], image_size))
        correct += (logits.argmax(1) == labels[start : start + 500]).sum().item()
    return correct / len(images)


@torch.no_grad()
def probe_accuracy(network: torch.nn.Module, data, store: CacheStore) -> float:
    """Test accuracy of a linear probe from the frozen backbone's test features, computed once per backbone,
    data and resolution and kept in the probe's own feature store (EfficientNet-Lite0 at 112 px takes minutes
    for 10,000 images on this CPU; every seed and label budget shares the features).

    The features are checked against a full forward pass of the network on the first test images, so a
    stale or mismatched entry fails loudly instead of giving a wrong accuracy.
    """
    images, labels = data.test_set.images, data.test_set.labels
    key = feature_key(network, images, labels, data.image_size, precision="32-true")
    entry = store.get(key, slot="test")
    if entry is None:
        features = compute_features(network, images, data.image_size, data.eval_batch_size, torch.device("cpu"))
        entry = store.put(key, {"features": features}, slot="test")
    features = entry["features"]
    direct = network(to_float_images(images[:16], data.image_size))
    if not torch.allclose(network.head(features[:16]), direct, atol=1e-4, rtol=1e-4):
        raise RuntimeError(f"cached test features {key} do not reproduce the network's logits")
    return (network.head(features).argmax(1) == labels).float().mean().item()


def measure_latency(rows: list[dict], smoke: bool, out: Path, repeats: int = 5) -> dict[str, float]:
    """Batch-1 CPU latency (ms) of each distinct network of ``rows``, measured alternately and side by side.

    Networks are rebuilt from their configs (latency does not depend on the weights); each round times
    every network once (median of 20 passes) and the figure is the median over rounds, so load from
    other jobs shifts all networks alike.
    """
    networks = {}
    for row in rows:
        key = f"{row['regime']}/{row['model']}"
        if key not in networks:
            stage = next(s for s in stages(row["regime"]) if s.model == row["model"])
            cli = lightning_main(cli_args(stage, 0, smoke, out) + ["--trainer.logger", "false"], run=False)
            side = row["input_size"]
            networks[key] = (cli.model.network.eval(), torch.rand(1, 1, side, side))
    times: dict[str, list[float]] = {key: [] for key in networks}
    for _ in range(repeats):
        for key, (network, example) in networks.items():
            times[key].append(cpu_latency_ms(network, example, batch_size=1))
    return {key: round(statistics.median(t), 3) for key, t in times.items()}


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_row(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    row = row | {"machine": machine(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"


def summarise(rows: list[dict], latency: dict[str, float]) -> dict:
    """The issue's schema: ``{regime: {model: {test_acc: [per seed], params, latency_b1_ms, command, ...}}}``.

    Seeds are sorted, so ``test_acc[i]`` of every model of a regime belongs to the same seed
    (``seeds`` says which) wherever both models ran it.
    """
    summary: dict[str, dict] = {}
    for regime, models in REPORTED.items():
        for model in models:
            runs = sorted((r for r in rows if r["regime"] == regime and r["model"] == model), key=lambda r: r["seed"])
            if not runs:
                continue
            summary.setdefault(regime, {})[model] = {
                "test_acc": [r["test_acc"] for r in runs],
                "seeds": [r["seed"] for r in runs],
                "val_acc": [r["val_acc"] for r in runs],
                "params": runs[0]["params"],
                "size_bytes": runs[0]["size_bytes"],
                "input_size": runs[0]["input_size"],
                "latency_b1_ms": latency.get(f"{regime}/{model}"),
                "fit_s": [r["fit_s"] for r in runs],
                "labelled": runs[0]["labelled"],
                "command": runs[0]["command"],
            }
    return summary


def paired(summary: dict, regime: str, a: str, b: str) -> list[tuple[int, float]]:
    """``(seed, a − b)`` for the seeds both models of ``regime`` ran."""
    models = summary.get(regime, {})
    if a not in models or b not in models:
        return []
    first = dict(zip(models[a]["seeds"], models[a]["test_acc"], strict=True))
    second = dict(zip(models[b]["seeds"], models[b]["test_acc"], strict=True))
    return [(seed, first[seed] - second[seed]) for seed in first if seed in second]


def gap_closed(summary: dict, regime: str, student: str) -> list[tuple[int, float]]:
    """``(seed, (student − scratch) / (teacher − scratch))`` for the seeds all three models of ``regime`` ran."""
    above_scratch = dict(paired(summary, regime, student, "scratch"))
    teacher_gap = dict(paired(summary, regime, "teacher", "scratch"))
    return [(seed, gain / teacher_gap[seed]) for seed, gain in above_scratch.items() if teacher_gap.get(seed)]


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f} (1 seed)"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def report_lines(summary: dict) -> list[str]:
    """The RESULTS.md section: per regime, accuracy, size, latency, wall time and paired differences."""
    lines = [
        SECTION_START,
        "## Few labels, many unlabeled images: transfer-learned teacher → tiny student (issue 14)",
        "",
        "Test accuracy on all 10,000 Fashion-MNIST test images, mean ± std over seeds (the labelled subset and",
        "the 2 % validation split are fixed by the data seed 0; the run seed changes initialisation and batch",
        "order). Teacher and scratch checkpoints were chosen on validation accuracy; the distilled student is its",
        "last epoch (validation would run the teacher). The distilled student of each seed learns from the",
        "teacher of the same regime and seed; `patient` is the same distillation for 10 epochs instead of 3.",
        "Latency: batch 1, one CPU thread, at the network's input size, median of alternating rounds",
        "(absolute values inflated by other jobs on the machine; the ratio is the figure).",
        "Raw rows:",
        "`benchmarks/results/few_labels_runs.jsonl`; summary: `benchmarks/results/few_labels.json`.",
        "",
        "| regime | model | seeds | test acc | params | size on disk | input | latency b=1 | fit s (per seed) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for regime, models in summary.items():
        for model, entry in models.items():
            latency = f"{entry['latency_b1_ms']:.2f} ms" if entry["latency_b1_ms"] is not None else "n/a"
            fit = ", ".join(f"{s:.0f}" for s in entry["fit_s"])
            lines.append(
                f"| {regime} | {model} | {','.join(map(str, entry['seeds']))} | {mean_std(entry['test_acc'])} "
                f"| {entry['params']:,} | {entry['size_bytes'] / 1e6:.2f} MB | {entry['input_size']} px | {latency} "
                f"| {fit} |"
            )
    lines += ["", "Student against teacher:", ""]
    for regime, models in summary.items():
        teacher, student = models.get("teacher"), models.get("scratch")
        if teacher and student:
            ratio = f"{teacher['params'] / student['params']:.0f}× fewer parameters"
            if teacher["latency_b1_ms"] and student["latency_b1_ms"]:
                ratio += f", {teacher['latency_b1_ms'] / student['latency_b1_ms']:.0f}× lower batch-1 latency"
            lines.append(f"- {regime}: {ratio}")
    lines += ["", "Paired differences per seed (test accuracy points):", ""]
    for regime in summary:
        for a, b in (("teacher", "scratch"), ("distilled", "scratch"), ("patient", "scratch")):
            diffs = paired(summary, regime, a, b)
            if diffs:
                per_seed = ", ".join(f"seed {s}: {100 * d:+.2f}" for s, d in diffs)
                lines.append(
                    f"- {regime}, {a} − {b}: {per_seed}; mean {100 * statistics.mean(d for _, d in diffs):+.2f}"
                )
    lines += ["", "Share of the teacher − scratch gap closed, (student − scratch) / (teacher − scratch):", ""]
    for regime in summary:
        for student in STUDENTS_OF_A_TEACHER:
            closed = gap_closed(summary, regime, student)
            if closed:
                per_seed = ", ".join(f"seed {s}: {100 * c:.0f} %" for s, c in closed)
                mean = statistics.mean(c for _, c in closed)
                lines.append(f"- {regime}, {student}: {per_seed}; mean {100 * mean:.0f} %")
    lines += ["", "Commands:", ""]
    for regime, models in summary.items():
        for model, entry in models.items():
            lines.append(f"- {regime} {model}: `{entry['command']}`")
    return [*lines, SECTION_END]


def write_section(report: Path, lines: list[str]) -> None:
    """Replace (or append) the driver's section of ``report``, leaving the rest of the file as it is."""
    text = report.read_text() if report.exists() else ""
    section = "\n".join(lines)
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        tail = rest.split(SECTION_END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    report.write_text(text)


def plot_accuracy_vs_labels(summary: dict, path: Path) -> None:
    """Test accuracy (mean ± std over seeds) against labels per class, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for model, marker in zip(MODELS, "osDv", strict=True):
        points = []
        for models in summary.values():
            if model in models:
                entry = models[model]
                per_class = entry["labelled"] / 10
                points.append((per_class, statistics.mean(entry["test_acc"]), _std(entry["test_acc"])))
        if points:
            points.sort()
            x, y, err = zip(*points, strict=True)
            ax.errorbar(x, y, yerr=err, marker=marker, capsize=3, label=model)
    ax.set_xscale("log")
    ax.set_xlabel("labelled images per class")
    ax.set_ylabel("test accuracy (10,000 images)")
    ax.set_title("Fashion-MNIST: few labels + unlabeled transfer set")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def rebuild(out: Path, smoke: bool) -> dict:
    """few_labels.json, the plot and (outside smoke mode) the RESULTS.md section, from the run rows."""
    rows = load_rows(out / "few_labels_runs.jsonl")
    latency_rows = [r for r in load_rows(out / "few_labels_latency.jsonl")]
    latency = latency_rows[-1]["latency_b1_ms"] if latency_rows else {}
    summary = summarise(rows, latency)
    (out / "few_labels.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_accuracy_vs_labels(summary, out / "few_labels_accuracy.png")
    if not smoke:
        write_section(REPORT, report_lines(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regimes", nargs="+", choices=list(REGIMES), default=list(REGIMES))
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--latency", action="store_true", help="(re)measure CPU latency of the networks run so far")
    parser.add_argument("--report", action="store_true", help="only rebuild few_labels.json, the plot and RESULTS.md")
    parser.add_argument("--smoke", action="store_true", help="tiny data and networks, one epoch: checks the pipeline")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the result files")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the CPU is shared with other jobs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
    runs_file = args.out / "few_labels_runs.jsonl"
    if not args.report:
        done = {(r["regime"], r["model"], r["seed"]) for r in load_rows(runs_file)}
        for regime in args.regimes:
            for stage in stages(regime):
                if stage.model not in args.models:
                    continue
                for seed in args.seeds:
                    if (regime, stage.model, seed) in done:
                        print(f"skip {stage.name} seed {seed}: already in {runs_file}", flush=True)
                        continue
                    append_row(runs_file, train_and_test(stage, seed, args.smoke, args.out))
                    rebuild(args.out, args.smoke)
        if args.latency:
            append_row(
                args.out / "few_labels_latency.jsonl",
                {"latency_b1_ms": measure_latency(load_rows(runs_file), args.smoke, args.out)},
            )
    summary = rebuild(args.out, args.smoke)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
