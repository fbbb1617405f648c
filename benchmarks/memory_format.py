"""channels_last against the default (contiguous) layout for the small CNNs, on the machine at hand.

    python -m benchmarks.memory_format                          # Fashion-MNIST sizes: 28x28, teacher width 16
    python -m benchmarks.memory_format --size 8 --teacher-width 32 --batch 64     # digits

Times, interleaved per iteration, the three kinds of step a distillation pipeline runs: the
teacher's eval forward (online distillation), the teacher's training step (teacher configs) and
the student's training step (width 4). The end-to-end effect inside a Lightning fit (and of
``compile``) is measured by ``python -m benchmarks.peer_speed --layouts``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks._common import header
from kd_lightning.models import ModelSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--teacher-width", type=int, default=16)
    parser.add_argument("--student-width", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=25)
    args = parser.parse_args()
    header(
        f"memory format, small_cnn width {args.teacher_width} / {args.student_width}, "
        f"{args.size}x{args.size}, batch {args.batch}"
    )
    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    steps: dict[str, dict[str, Callable[[], None]]] = {}
    for layout in ("contiguous", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        teacher = ModelSpec("small_cnn", kwargs={"width": args.teacher_width}).build(10).to(memory_format=fmt)
        student = ModelSpec("small_cnn", kwargs={"width": args.student_width}).build(10).to(memory_format=fmt)
        inputs = x.contiguous(memory_format=fmt)
        steps[layout] = {
            "teacher forward (eval)": lambda t=teacher, i=inputs: _forward(t, i),
            "teacher training step": lambda t=teacher, i=inputs: F.cross_entropy(t.train()(i), y).backward(),
            "student training step": lambda s=student, i=inputs: F.cross_entropy(s.train()(i), y).backward(),
        }
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.iterations):
        for layout, named in steps.items():
            for name, step in named.items():
                start = time.perf_counter()
                step()
                times.setdefault((layout, name), []).append(time.perf_counter() - start)
    print(f"{'step':<26} {'contiguous ms':>14} {'channels_last ms':>17} {'ratio':>7}")
    for name in steps["contiguous"]:
        default, last = (statistics.median(times[(layout, name)][3:]) for layout in steps)
        print(f"{name:<26} {default * 1000:14.2f} {last * 1000:17.2f} {last / default:7.3f}")


@torch.no_grad()
def _forward(network: torch.nn.Module, x: torch.Tensor) -> None:
    network.eval()(x)


if __name__ == "__main__":
    main()
