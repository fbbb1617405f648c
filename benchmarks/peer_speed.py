"""Distillation speed against its floor (a bare PyTorch loop) and its peer (torchdistill), one process.

    python -m benchmarks.peer_speed                        # all 60,000 images, 4 epochs per configuration
    python -m benchmarks.peer_speed --per-class 2000 --threads 2   # 20,000 images (recorded, also --threads 1)

Fashion-MNIST, teacher ``small_cnn`` width 16, student ``small_cnn`` width 4, batch 128, SGD,
Hinton KD T=4 α=0.9, the same seed for every student (so every student starts from the same
weights). Configurations:

  * ``bare distill``: a hand-written loop over float tensors held in memory: teacher forward
    (no_grad) + student step, the batch order drawn like kd_lightning's sampler (same batches).
  * ``kd_lightning online``: :class:`~kd_lightning.modules.DistillationModule` in a Lightning fit.
  * ``kd_lightning cached``: the same with ``teacher_cache=TeacherCacheConfig()`` (built before the first epoch).
  * ``bare student`` / ``kd_lightning student``: the student alone on labels (the cache's floor).
  * ``torchdistill``: torchdistill's ``DistillationBox`` in the loop of its example script, over
    torchvision's per-sample pipeline (PIL image, ``ToTensor``, ``Normalize``) as in its sample
    configs, when installed (``pip install 'kd-lightning[bench]'``); see ``benchmarks/_torchdistill.py``.
  * with ``--layouts``: kd_lightning online with ``channels_last=True`` and with ``compile=True``.

Every configuration trains in its own thread and they take turns, ``--steps-per-turn`` steps at a
time (see ``benchmarks/_turns.py``), so load drift on a shared machine hits all alike. Reported: the median
epoch time after the first (warm-up, compilation) epoch, the ratios the project's goals are set
on, and each student's final test accuracy (10,000 test images, eval mode). The teacher is
trained first by the bare loop and its BatchNorm statistics recalibrated.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import _torchdistill
from benchmarks._common import fashion_mnist, header, median_epoch_times, print_ratios, quiet, trainer
from benchmarks._turns import Clock, RoundRobin, TurnCallback
from kd_lightning.cache.teacher import TeacherCacheConfig
from kd_lightning.data.transforms import to_float_images
from kd_lightning.losses.kd import kd_loss
from kd_lightning.models import ModelSpec
from kd_lightning.models.batchnorm import recalibrate_batchnorm
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner

BATCH = 128
SGD = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
TEACHER = ModelSpec("small_cnn", kwargs={"width": 16})
STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})
BARE_DISTILL, ONLINE, CACHED = "bare distill", "kd_lightning online", "kd_lightning cached"
BARE_STUDENT, KD_STUDENT, TORCHDISTILL = "bare student", "kd_lightning student", "torchdistill"


def bare_epochs(
    student: nn.Module,
    teacher: nn.Module | None,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    seed: int,
    temperature: float,
    alpha: float,
) -> Iterator[Callable[[Clock | None], None]]:
    """Epochs of the hand-written loop: no framework, no metrics, no logging; the floor."""
    optimizer = torch.optim.SGD(student.parameters(), **SGD)
    if teacher is not None:
        teacher.eval()

    def epoch(index: int, clock: Clock | None = None) -> None:
        student.train()
        # kd_lightning's ResumableRandomSampler order: randperm seeded with seed + epoch.
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + index))
        for idx in order.split(BATCH):
            if clock is not None:
                clock.step()
            # index_select, as kd_lightning's datasets gather (images[idx] costs ~10x more on the CPU).
            x, y = images.index_select(0, idx), labels.index_select(0, idx)
            logits = student(x)
            loss = F.cross_entropy(logits, y)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(x)
                loss = (1.0 - alpha) * loss + alpha * kd_loss(logits, teacher_logits, temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    for index in range(epochs):
        yield functools.partial(epoch, index)


@torch.no_grad()
def accuracy(network: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    network.eval()
    batches = zip(images.split(1000), labels.split(1000), strict=True)
    correct = sum(int((network(x).argmax(-1) == y).sum()) for x, y in batches)
    return correct / len(labels)


def train_teacher(images: torch.Tensor, labels: torch.Tensor, test: tuple[torch.Tensor, torch.Tensor], epochs: int):
    torch.manual_seed(0)
    teacher = TEACHER.build(10)
    for epoch in bare_epochs(teacher, None, images, labels, epochs, 0, 1.0, 0.0):
        epoch()
    before = accuracy(teacher, *test)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))[: 50 * BATCH]
    recalibrate_batchnorm(teacher, (images[idx] for idx in order.split(BATCH)))
    print(
        f"teacher: {epochs} epoch(s) of the bare loop, test accuracy {before:.4f} in eval mode, "
        f"{accuracy(teacher, *test):.4f} after BatchNorm recalibration (50 batches)"
    )
    return teacher


def lightning_run(scheduler: RoundRobin, name: str, module, epochs: int, per_class: int | None) -> Callable[[], None]:
    datamodule = fashion_mnist(batch_size=BATCH, eval_batch_size=512, val_fraction=0.0, samples_per_class=per_class)[0]

    def run() -> None:
        fit = trainer(max_epochs=epochs, limit_val_batches=0, callbacks=[TurnCallback(scheduler.clock(name))])
        fit.fit(module, datamodule)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=None, help="training images per class (default: all)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per configuration (the first is warm-up)")
    parser.add_argument("--teacher-epochs", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps-per-turn", type=int, default=10, help="steps a configuration runs per turn")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-torchdistill", action="store_true", help="skip the peer even when installed")
    parser.add_argument("--layouts", action="store_true", help="also kd_lightning online with channels_last, compile")
    parser.add_argument("--only", nargs="*", default=None, help="run only these configurations (by name)")
    args = parser.parse_args()
    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch is warm-up")

    datamodule, source = fashion_mnist(val_fraction=0.0, samples_per_class=args.per_class)
    datamodule.setup("fit")
    datamodule.setup("test")
    train_u8, labels = datamodule.train_set.images, datamodule.train_set.labels
    images = to_float_images(train_u8)
    test = (to_float_images(datamodule.test_set.images), datamodule.test_set.labels)
    header(
        f"distillation speed: floor and peer, {source}, {len(labels)} training images, batch {BATCH}, "
        f"{args.epochs} epochs per configuration, T={args.temperature}, alpha={args.alpha}"
    )
    teacher = train_teacher(images, labels, test, args.teacher_epochs)
    workdir = Path(tempfile.mkdtemp(prefix="peer_speed_"))
    torch.save(teacher.state_dict(), workdir / "teacher.pt")
    teacher_spec = ModelSpec(TEACHER.name, kwargs=TEACHER.kwargs, weights_path=str(workdir / "teacher.pt"))
    optimizer = functools.partial(torch.optim.SGD, **SGD)

    def student() -> nn.Module:
        torch.manual_seed(args.seed)
        return STUDENT.build(10)

    def distiller(**options) -> DistillationModule:
        torch.manual_seed(args.seed)
        kd = {"temperature": args.temperature, "alpha": args.alpha, "optimizer": optimizer}
        return DistillationModule(STUDENT, teacher_spec, num_classes=10, **kd, **options)

    def frozen_teacher() -> nn.Module:
        copy = TEACHER.build(10)
        copy.load_state_dict(teacher.state_dict())
        return copy.eval()

    scheduler = RoundRobin(args.steps_per_turn)
    peer_loader_seconds: list[float] = []  # torchdistill's time waiting for its loader, per epoch
    networks: dict[str, nn.Module] = {}
    configs: dict[str, Callable[[], Callable[[], None]]] = {}

    def bare(name: str, with_teacher: bool) -> Callable[[], None]:
        networks[name] = net = student()
        epochs = bare_epochs(
            net, frozen_teacher() if with_teacher else None, images, labels, args.epochs, args.seed,
            args.temperature, args.alpha,
        )  # fmt: skip
        return lambda: scheduler.clock(name).timed(epochs)

    def lightning(name: str, module) -> Callable[[], None]:
        networks[name] = module.network
        return lightning_run(scheduler, name, module, args.epochs, args.per_class)

    configs[BARE_DISTILL] = lambda: bare(BARE_DISTILL, True)
    configs[ONLINE] = lambda: lightning(ONLINE, distiller())
    configs[CACHED] = lambda: lightning(CACHED, distiller(teacher_cache=TeacherCacheConfig()))
    configs[BARE_STUDENT] = lambda: bare(BARE_STUDENT, False)
    configs[KD_STUDENT] = lambda: lightning(
        KD_STUDENT, _seeded(args.seed, FrozenBackboneFinetuner, STUDENT, 10, strategy="full", optimizer=optimizer)
    )
    if args.layouts:
        for option in ("channels_last", "compile"):
            name = f"{ONLINE}, {option}"
            configs[name] = functools.partial(lambda n, o: lightning(n, distiller(**{o: True})), name, option)
    if args.no_torchdistill:
        print("torchdistill: skipped (--no-torchdistill)")
    elif not _torchdistill.available():
        print("torchdistill: not installed, skipped (pip install 'kd-lightning[bench]' to compare with the peer)")
    else:

        def peer() -> Callable[[], None]:
            networks[TORCHDISTILL] = net = student()
            config = _torchdistill.hinton_kd_config(
                args.epochs, BATCH, args.temperature, args.alpha, {"key": "SGD", "kwargs": SGD}
            )
            dataset = _torchdistill.PerSampleImages(train_u8, labels)
            return lambda: scheduler.clock(TORCHDISTILL).timed(
                _torchdistill.distill_epochs(frozen_teacher(), net, dataset, config, peer_loader_seconds)
            )

        configs[TORCHDISTILL] = peer
    if args.only:
        configs = {name: make for name, make in configs.items() if name in args.only}

    for name, make in configs.items():
        scheduler.add(name, make())
    scheduler.run()
    report(scheduler.epoch_times, {name: accuracy(net, *test) for name, net in networks.items() if name in configs})
    if peer_loader_seconds[1:]:
        loader = statistics.median(peer_loader_seconds[1:])
        print(
            f"torchdistill's input pipeline (per-sample PIL image, ToTensor, Normalize): {loader:.3f} s/epoch, "
            f"{loader / statistics.median(scheduler.epoch_times[TORCHDISTILL][1:]):.0%} of its epoch"
        )


def _seeded(seed: int, cls, *args, **kwargs):
    torch.manual_seed(seed)
    return cls(*args, **kwargs)


def report(times: dict[str, list[float]], accuracies: dict[str, float]) -> None:
    medians = median_epoch_times(times)
    print(f"\n{'configuration':<36} {'s/epoch':>8} {'test acc':>9}  epoch times (s)")
    for name, median in medians.items():
        epochs = " ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:<36} {median:8.3f} {accuracies[name]:9.4f}  {epochs}")
    print_ratios(
        medians,
        [
            (ONLINE, BARE_DISTILL, "(<= 1.05)"),
            (CACHED, BARE_STUDENT, "(<= 1.10)"),
            (KD_STUDENT, BARE_STUDENT),
            (ONLINE, TORCHDISTILL, "(<= 0.6)"),
            (CACHED, TORCHDISTILL, "(<= 0.4)"),
            (BARE_DISTILL, TORCHDISTILL),
            *((layout, ONLINE) for layout in (f"{ONLINE}, channels_last", f"{ONLINE}, compile")),
        ],
    )
    if ONLINE in accuracies and BARE_DISTILL in accuracies:
        gap = 100 * (accuracies[ONLINE] - accuracies[BARE_DISTILL])
        print(f"test accuracy, kd_lightning online - bare distill: {gap:+.2f} points (goal: within 0.5)")


if __name__ == "__main__":
    main()
