"""Distillation step time against its physical limits, and with the teacher-output cache.

    python -m benchmarks.distill_step [--teacher resnet8x4] [--student resnet8] [--steps 8]

Measures, in one run and on the same batches (Fashion-MNIST, batch 64, 28×28):
  * the plain student step (the student trained on labels alone, same Lightning loop),
  * the teacher forward alone (eval, no_grad),
  * the distillation step (student step + teacher forward + KD loss),
  * the distillation step with the teacher-output cache.
Each step time is the median interval between consecutive batch starts, so it includes data
loading, the optimizer and Lightning's logging. CIFAR ResNets from the KD literature: the
4×-wide ResNet-8 teacher (1.2M parameters) costs about two student forwards of ResNet-8 (78k).
"""

from __future__ import annotations

import argparse
import statistics

import lightning as L
import torch

from benchmarks._common import StepTimer, fashion_mnist, header, median_time, quiet, trainer
from kd_lightning.cache.teacher import TeacherCacheConfig
from kd_lightning.cache.teacher.entry import TeacherOutputCache, ViewTable
from kd_lightning.cache.teacher.in_memory import TeacherPass, build_teacher_cache
from kd_lightning.data.transforms import to_float_images
from kd_lightning.losses import StepContext
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner


def data(per_class: int):
    return fashion_mnist(batch_size=64, samples_per_class=per_class, val_fraction=0.01)[0]


def step_time(module: L.LightningModule, per_class: int, steps: int) -> float:
    timer = StepTimer(warmup=2)
    trainer(max_epochs=1, limit_train_batches=steps + 2, limit_val_batches=0, callbacks=[timer]).fit(
        module, data(per_class)
    )
    return timer.median


def bare_steps(
    student, distill, cache: TeacherOutputCache, images: torch.Tensor, labels: torch.Tensor, iterations: int
):
    """Forward + backward of each configuration outside Lightning, interleaved per iteration.

    Interleaving at this grain makes the ratios robust to the load drift of a shared machine;
    what Lightning adds (logging, metrics, the loop) is in the fit-based figures above.
    """
    x = to_float_images(images)
    index = torch.arange(len(images))

    def student_step() -> None:
        student.cross_entropy(student(x), labels).backward()

    def teacher_forward() -> None:
        distill.teacher(x)

    def distill_step(cached: bool) -> None:
        view = cache.render(images, index, 0) if cached else x
        teacher = cache.teacher_outputs(index, 0) if cached else distill.teacher(view)
        terms = distill.loss_components(distill.student_outputs(view), teacher, StepContext(labels))
        sum(distill.loss_weights[name] * value for name, value in terms.items()).backward()

    fns = {
        "student": student_step,
        "teacher": teacher_forward,
        "distill": lambda: distill_step(cached=False),
        "cached": lambda: distill_step(cached=True),
    }
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iterations):
        for name, fn in fns.items():
            times[name].append(median_time(fn, repeats=1, warmup=0))
    return {name: statistics.median(v[1:]) for name, v in times.items()}


def print_table(student_step: float, teacher_fwd: float, distill_step: float, cached_step: float) -> None:
    print(f"{'step':<40} {'ms':>8} {'ratio':>8}")
    rows = [
        ("student step (labels only)", student_step),
        ("teacher forward (no_grad, eval)", teacher_fwd),
        ("student step + teacher forward (sum)", student_step + teacher_fwd),
        ("distillation step", distill_step),
        ("distillation step, teacher-output cache", cached_step),
    ]
    for name, seconds in rows:
        print(f"{name:<40} {seconds * 1000:8.1f} {seconds / student_step:7.2f}x")
    print(f"distillation / (student + teacher): {distill_step / (student_step + teacher_fwd):.3f} (goal <= 1.05)")
    print(f"cached distillation / student step: {cached_step / student_step:.3f} (goal <= 1.15)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", default="resnet8x4")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--per-class", type=int, default=64, help="training images per class (cache size)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bare-iterations", type=int, default=8)
    args = parser.parse_args()
    quiet()
    L.seed_everything(0, verbose=False)
    _, source = fashion_mnist()
    header(f"distillation step, teacher {args.teacher}, student {args.student}, batch 64, {source}")
    teacher_spec = ModelSpec(args.teacher)  # random weights: the cost of a forward does not depend on them

    student = FrozenBackboneFinetuner(args.student, 10, strategy="full")
    distill = DistillationModule(args.student, teacher_spec, num_classes=10)
    cached = DistillationModule(args.student, teacher_spec, num_classes=10, teacher_cache=TeacherCacheConfig())
    dm = data(args.per_class)
    dm.setup("fit")
    x = to_float_images(dm.train_set.images[:64])
    teacher = distill.teacher.eval()

    def teacher_forward() -> float:
        with torch.no_grad():
            return median_time(lambda: teacher(x), repeats=args.steps)

    # Interleaved rounds, median per configuration: the load of the shared machine drifts, and
    # interleaving spreads that drift over all configurations alike. The cache is built in the
    # first round's fit start (not timed: outside the training batches) and reused afterwards.
    times: dict[str, list[float]] = {"student": [], "teacher": [], "distill": [], "cached": []}
    for _ in range(args.rounds):
        times["student"].append(step_time(student, args.per_class, args.steps))
        times["teacher"].append(teacher_forward())
        times["distill"].append(step_time(distill, args.per_class, args.steps))
        times["cached"].append(step_time(cached, args.per_class, args.steps))
    student_step, teacher_fwd, distill_step, cached_step = (statistics.median(v) for v in times.values())

    print("-- Lightning fit, median interval between batch starts (data + step + optimizer + logging):")
    print_table(student_step, teacher_fwd, distill_step, cached_step)
    print(f"-- bare forward + backward, interleaved per iteration ({args.bare_iterations} iterations):")
    images, labels = dm.train_set.images[:64], dm.train_set.labels[:64]
    views = ViewTable.sample(len(images), 1, 0, False)
    settings = cached.teacher_cache
    assert settings is not None
    cache = build_teacher_cache(settings, distill.teacher, images, views, TeacherPass(None, 64, torch.device("cpu")))
    bare = bare_steps(student, distill, cache, images, labels, args.bare_iterations)
    print_table(bare["student"], bare["teacher"], bare["distill"], bare["cached"])


if __name__ == "__main__":
    main()
