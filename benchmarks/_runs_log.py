"""The runs log every experiment driver keeps: one JSON row per finished run, appended at once (a rerun skips what
is there), each row carrying the commit and machine it ran on."""

from __future__ import annotations

import json
import math
import platform
import statistics
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_row(path: Path, row: dict) -> None:
    """One line per row, written in one call: parallel drivers appending to one log do not interleave."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def provenance() -> dict[str, str]:
    """The commit checked out (``dirty`` when tracked files differ from it) and this machine."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    # The result files the drivers append to and the reports they rewrite are not code: rows written by a
    # parallel run leave the code clean.
    not_code = (":!benchmarks/results", ":!benchmarks/RESULTS*.md")
    status = [*git, "status", "--porcelain", "--untracked-files=no", "--", ".", *not_code]
    changed = subprocess.run(status, capture_output=True, text=True)
    return {
        "commit": commit + (" dirty" if changed.stdout.strip() else ""),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}",
    }


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f} (1 seed)"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def student_t_quantile(p: float, dof: int) -> float:
    """The ``p`` quantile (p > 0.5) of Student's t with ``dof`` degrees of freedom: bisection on its CDF, the
    density integrated by Simpson's rule, so the report needs no SciPy."""
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def density(t: float) -> float:
        return math.exp(log_norm - (dof + 1) / 2 * math.log1p(t * t / dof))

    def cdf(x: float, steps: int = 2000) -> float:
        h = x / steps
        inner = sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
        return 0.5 + h / 3 * (density(0.0) + inner + density(x))

    low, high = 0.0, 1.0
    while cdf(high) < p:
        high *= 2
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


def mean_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """The two-sided ``level`` t-interval of the mean of ``values`` (per-seed paired differences): a mean whose
    interval holds zero is not told apart from no difference by this many seeds."""
    mean = statistics.mean(values)
    half = student_t_quantile((1 + level) / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def write_section(report: Path, lines: list[str]) -> None:
    """Replace (or append) a driver's section of ``report``, leaving the rest of the file as it is. The section's
    first and last lines are its markers, so each driver owns exactly the text between its own pair."""
    start, end = lines[0], lines[-1]
    text = report.read_text() if report.exists() else ""
    section = "\n".join(lines)
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    report.write_text(text)
