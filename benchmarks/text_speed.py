"""Text distillation speed against its floor (a bare PyTorch loop) and its peer (TextBrewer), one process.

    python -m benchmarks.text_speed --threads 2                  # 512 TREC-6 questions, 3 epochs each (recorded)
    python -m benchmarks.text_speed --texts 4305 --epochs 4      # the whole training file (about an hour here)

Needs the prepared text data (``python -m kd_lightning.data.text_prepare``, see the README). Teacher:
all-MiniLM-L6-v2 (``data/all-MiniLM-L6-v2``: its pretrained encoder under a seeded random 6-class head;
what a forward costs does not depend on the head). Student: the BiLSTM of ``configs/trec/distill.yaml``
(embedding 24, hidden 64) with dropout 0, so that every loop computes the same numbers. Data: the first
``--texts`` questions of ``data/trec6/train.tsv``, at most 64 tokens, batch 32, padded per batch. Adam
(lr 3e-3), Hinton KD T=4 α=0.9, every student from the same seed.

Configurations, each in its own thread, taking turns ``--steps-per-turn`` steps at a time
(``benchmarks/_turns.py``), so the load drift of a shared machine hits all alike:

  * ``bare distill``: a hand-written loop, teacher forward under ``no_grad`` and student step, over
    kd_lightning's batches (its sampler's order, its dataset's padding): the floor.
  * ``kd_lightning online``: :class:`~kd_lightning.modules.DistillationModule` in a Lightning fit.
  * ``kd_lightning cached``: the same with ``teacher_cache=TeacherCacheConfig()`` (built at fit start).
  * ``bare student``: the hand-written loop on labels alone, what a cached epoch cannot go below.
  * ``kd_lightning student``: the student alone in a Lightning fit (``FrozenBackboneFinetuner``, ``full``):
    what Lightning's loop adds to a step, with no teacher and no cache.
  * ``textbrewer online`` / ``textbrewer cached``: TextBrewer's ``BasicDistiller`` over the same batches
    (``is_caching_logits`` for the cached one), when it imports (``benchmarks/_textbrewer.py``).

Reported: the median epoch time after the first (warm-up) epoch, the ratios, each configuration's
first-step loss and how far each distilled student's final weights are from the bare loop's (relative L2).
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import logging as transformers_logging

from benchmarks import _textbrewer
from benchmarks._common import header, median_epoch_times, print_ratios, quiet, trainer
from benchmarks._turns import Clock, RoundRobin, TurnCallback
from kd_lightning.cache.teacher import TeacherCacheConfig
from kd_lightning.data import TextClassificationDataModule
from kd_lightning.data.text_dataset import TokenizedTextDataset
from kd_lightning.losses.kd import kd_loss
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner

TEACHER_FOLDER = Path("data/all-MiniLM-L6-v2")
TREC = Path("data/trec6")
LABELS = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
BATCH, MAX_LENGTH, LR = 32, 64, 3e-3
BARE_DISTILL, ONLINE, CACHED = "bare distill", "kd_lightning online", "kd_lightning cached"
BARE_STUDENT, KD_STUDENT = "bare student", "kd_lightning student"
TB_ONLINE, TB_CACHED = "textbrewer online", "textbrewer cached"
ALL = (BARE_DISTILL, ONLINE, CACHED, BARE_STUDENT, KD_STUDENT, TB_ONLINE, TB_CACHED)


@dataclass
class Setup:
    """What every configuration shares: the teacher folder, a folder with ``train.tsv``, the schedule."""

    teacher_folder: Path
    data_dir: Path
    epochs: int = 3
    seed: int = 0
    temperature: float = 4.0
    alpha: float = 0.9
    steps_per_turn: int = 4

    def datamodule(self) -> TextClassificationDataModule:
        return TextClassificationDataModule(
            str(self.teacher_folder),
            data_dir=str(self.data_dir),
            labels=LABELS,
            max_length=MAX_LENGTH,
            batch_size=BATCH,
            val_fraction=0.0,
        )

    def student_spec(self) -> ModelSpec:
        kwargs = {"tokenizer": str(self.teacher_folder), "embed_dim": 24, "hidden": 64, "max_length": MAX_LENGTH}
        return ModelSpec("bilstm", kwargs={**kwargs, "dropout": 0.0})


@dataclass
class Results:
    epoch_times: dict[str, list[float]]
    first_losses: dict[str, float]
    weight_gaps: dict[str, float]  # ‖w − w_bare‖ / ‖w_bare‖ over the student's weights, per distilled configuration
    entropy_offset: float  # α·T²·H(p_T) on the first batch: TextBrewer's soft CE minus kd_lightning's KL
    skipped: dict[str, str] = field(default_factory=dict)


def first_texts(source: Path, texts: int) -> Path:
    """A folder holding the header and first ``texts`` rows of ``source/train.tsv``."""
    folder = Path(tempfile.mkdtemp(prefix="text_speed_"))
    lines = (source / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "train.tsv").write_text("".join(lines[: texts + 1]), encoding="utf-8")
    return folder


class EpochBatches:
    """kd_lightning's training batches outside Lightning: each iteration is the next epoch, its order the
    sampler's (a permutation drawn from ``seed + epoch``), each batch padded as the dataset pads it."""

    def __init__(self, dataset: TokenizedTextDataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / BATCH)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        self.epoch += 1
        for idx in order.split(BATCH):
            yield self.dataset.pad(idx), self.dataset.labels.index_select(0, idx)


def bare_epochs(
    student: nn.Module, teacher: nn.Module | None, batches: EpochBatches, setup: Setup, losses: list[torch.Tensor]
) -> Iterator[Callable[[Clock], None]]:
    """Epochs of the hand-written loop: no framework, no metrics, no logging; the floor."""
    optimizer = torch.optim.Adam(student.parameters(), lr=LR)
    alpha, temperature = setup.alpha, setup.temperature

    def epoch(clock: Clock) -> None:
        student.train()
        for ids, labels in batches:
            clock.step()
            logits = student(ids)
            loss = F.cross_entropy(logits, labels)
            if teacher is not None:
                with torch.no_grad():
                    teacher_logits = teacher(ids)
                loss = (1.0 - alpha) * loss + alpha * kd_loss(logits, teacher_logits, temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())

    for _ in range(setup.epochs):
        yield epoch


class StepLosses(L.Callback):
    """Each training step's loss, detached, as the module returned it."""

    def __init__(self, losses: list[torch.Tensor]) -> None:
        self.losses = losses

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach())


def run(setup: Setup, only: tuple[str, ...] = ALL) -> Results:
    """Train every configuration in ``only`` side by side; the first epoch of each is warm-up."""
    data = setup.datamodule()
    data.setup("fit")
    train_set = data.train_set
    assert isinstance(train_set, TokenizedTextDataset)
    torch.manual_seed(setup.seed)
    teacher_spec = ModelSpec(f"hf/{setup.teacher_folder}", pretrained=True, kwargs={"max_length": MAX_LENGTH})
    teacher = teacher_spec.build(len(LABELS))
    weights = Path(tempfile.mkdtemp(prefix="text_speed_teacher_")) / "teacher.pt"
    torch.save(teacher.state_dict(), weights)
    stored_teacher = ModelSpec(teacher_spec.name, kwargs=teacher_spec.kwargs, weights_path=str(weights))

    def frozen_teacher() -> nn.Module:
        return copy.deepcopy(teacher).eval().requires_grad_(False)

    def student() -> nn.Module:
        torch.manual_seed(setup.seed)
        return setup.student_spec().build(len(LABELS))

    def distiller(**options) -> DistillationModule:
        torch.manual_seed(setup.seed)
        optimizer = functools.partial(torch.optim.Adam, lr=LR)
        kd = {"temperature": setup.temperature, "alpha": setup.alpha, "optimizer": optimizer}
        return DistillationModule(setup.student_spec(), stored_teacher, num_classes=len(LABELS), **kd, **options)

    scheduler = RoundRobin(setup.steps_per_turn)
    networks: dict[str, nn.Module] = {}
    losses: dict[str, list[torch.Tensor]] = {name: [] for name in only}

    def bare(name: str, with_teacher: bool) -> Callable[[], None]:
        networks[name] = net = student()
        batches = EpochBatches(train_set, setup.seed)
        epochs = bare_epochs(net, frozen_teacher() if with_teacher else None, batches, setup, losses[name])
        return lambda: scheduler.clock(name).timed(epochs)

    def finetuner() -> FrozenBackboneFinetuner:
        torch.manual_seed(setup.seed)
        optimizer = functools.partial(torch.optim.Adam, lr=LR)
        return FrozenBackboneFinetuner(setup.student_spec(), len(LABELS), strategy="full", optimizer=optimizer)

    def lightning(name: str, module: DistillationModule | FrozenBackboneFinetuner) -> Callable[[], None]:
        networks[name] = module.network
        callbacks = [TurnCallback(scheduler.clock(name)), StepLosses(losses[name])]
        fit = trainer(max_epochs=setup.epochs, limit_val_batches=0, callbacks=callbacks)
        return lambda: fit.fit(module, setup.datamodule())

    def peer(name: str, cached: bool) -> Callable[[], None]:
        networks[name] = net = student()
        box, wrapped_teacher, wrapped_student = _textbrewer.distiller(
            frozen_teacher(), net, setup.temperature, setup.alpha, cached
        )
        _textbrewer.record_losses(box, losses[name])
        optimizer = torch.optim.Adam(net.parameters(), lr=LR)
        batches = EpochBatches(train_set, setup.seed)
        # The step starts with the model TextBrewer calls first: the teacher, or with the cache the student.
        first = wrapped_student if cached else wrapped_teacher
        return _textbrewer.train(box, optimizer, batches, setup.epochs, first, scheduler.clock(name), len(batches))

    makers: dict[str, Callable[[], Callable[[], None]]] = {
        BARE_DISTILL: lambda: bare(BARE_DISTILL, True),
        ONLINE: lambda: lightning(ONLINE, distiller()),
        CACHED: lambda: lightning(CACHED, distiller(teacher_cache=TeacherCacheConfig())),
        BARE_STUDENT: lambda: bare(BARE_STUDENT, False),
        KD_STUDENT: lambda: lightning(KD_STUDENT, finetuner()),
        TB_ONLINE: lambda: peer(TB_ONLINE, cached=False),
        TB_CACHED: lambda: peer(TB_CACHED, cached=True),
    }
    skipped = {}
    reason = _textbrewer.unavailable_reason()
    for name in only:
        if name in (TB_ONLINE, TB_CACHED) and reason is not None:
            skipped[name] = reason
            continue
        scheduler.add(name, makers[name]())
    scheduler.run()

    first_ids, _ = next(iter(EpochBatches(train_set, setup.seed)))
    with torch.no_grad():
        soft = (frozen_teacher()(first_ids) / setup.temperature).softmax(-1)
    entropy = -(soft * soft.log()).sum(-1).mean().item()
    reference = networks.get(BARE_DISTILL)
    gaps = {}
    if reference is not None:
        for name in (ONLINE, CACHED, TB_ONLINE):  # the cached peer reshuffles its batches: other arithmetic
            if name in networks and name not in skipped:
                weights = torch.cat([p.detach().flatten() for p in networks[name].parameters()])
                bare_weights = torch.cat([p.detach().flatten() for p in reference.parameters()])
                gaps[name] = ((weights - bare_weights).norm() / bare_weights.norm()).item()
    return Results(
        epoch_times={name: times for name, times in scheduler.epoch_times.items() if times},
        first_losses={name: values[0].item() for name, values in losses.items() if values},
        weight_gaps=gaps,
        entropy_offset=setup.alpha * setup.temperature**2 * entropy,
        skipped=skipped,
    )


def report(results: Results) -> None:
    medians = median_epoch_times(results.epoch_times)
    print(f"\n{'configuration':<22} {'s/epoch':>8} {'step-1 loss':>12}  epoch times (s)")
    for name, median in medians.items():
        epochs = " ".join(f"{t:.2f}" for t in results.epoch_times[name])
        print(f"{name:<22} {median:8.3f} {results.first_losses[name]:12.6f}  {epochs}")
    for name, reason in results.skipped.items():
        print(f"{name:<22} not run: TextBrewer does not import here ({reason})")
    print_ratios(
        medians,
        [
            (ONLINE, BARE_DISTILL, "(<= 1.05)"),
            (CACHED, BARE_STUDENT, "(<= 1.10)"),
            (KD_STUDENT, BARE_STUDENT),
            (CACHED, KD_STUDENT),
            (CACHED, ONLINE),
            (BARE_STUDENT, BARE_DISTILL),
            (ONLINE, TB_ONLINE),
            (CACHED, TB_CACHED),
            (TB_ONLINE, BARE_DISTILL),
            (TB_CACHED, TB_ONLINE),
        ],
    )
    print("\nsame arithmetic:")
    if TB_ONLINE in results.first_losses and BARE_DISTILL in results.first_losses:
        offset = results.first_losses[TB_ONLINE] - results.first_losses[BARE_DISTILL]
        print(
            f"  textbrewer online - bare distill, step-1 loss: {offset:.6f} "
            f"(alpha*T^2*H(p_T) of the first batch: {results.entropy_offset:.6f}; same gradient)"
        )
    for name, gap in results.weight_gaps.items():
        print(f"  the {name} student's weights after training, ||w - w_bare|| / ||w_bare||: {gap:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=512, help="training questions (the first of train.tsv)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per configuration (the first is warm-up)")
    parser.add_argument("--steps-per-turn", type=int, default=4, help="steps a configuration runs per turn")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--only", nargs="*", default=list(ALL), help="run only these configurations (by name)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2: the first epoch is warm-up")
    if not (TEACHER_FOLDER / "config.json").is_file() or not (TREC / "train.tsv").is_file():
        parser.error(f"{TEACHER_FOLDER} and {TREC} are missing: run kd_lightning.data.text_prepare (see the README)")
    quiet()
    transformers_logging.set_verbosity_error()  # no weight-loading report per teacher copy
    transformers_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    setup = Setup(TEACHER_FOLDER, first_texts(TREC, args.texts), args.epochs, steps_per_turn=args.steps_per_turn)
    peer = _textbrewer.unavailable_reason()
    header(
        f"text distillation speed: floor and peer, the first {args.texts} TREC-6 questions, batch {BATCH}, "
        f"MiniLM teacher, BiLSTM student, {args.epochs} epochs per configuration, "
        f"TextBrewer {_textbrewer.version() if peer is None else 'unavailable: ' + peer}"
    )
    report(run(setup, tuple(args.only)))


if __name__ == "__main__":
    main()
