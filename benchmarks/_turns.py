"""Interleave whole training runs a few steps at a time, in one process, one configuration at a time.

A shared machine's load drifts within seconds, so runs measured one after the other compare
different machines. Here every configuration trains in its own thread, but a thread only runs
while it holds the turn: the scheduler hands the turn to each configuration in a fixed rotation,
``steps_per_turn`` training steps each, so all of them see the same drift. A configuration's
epoch time is the sum of its turns' times in that epoch (waiting for the turn is not counted).

Plain loops call their :class:`Clock` at epoch start, before every step and at epoch end.
Lightning's ``fit`` cannot be paused from the outside; :class:`TurnCallback` calls the clock from
the epoch and batch hooks instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import lightning as L


class RoundRobin:
    """Hands the turn to each configuration in a fixed rotation until all have finished."""

    def __init__(self, steps_per_turn: int = 10) -> None:
        self.steps_per_turn = steps_per_turn
        self._go: dict[str, threading.Event] = {}
        self._done = threading.Event()
        self._finished: set[str] = set()
        self._threads: dict[str, threading.Thread] = {}
        self._errors: dict[str, BaseException] = {}
        self.clocks: dict[str, Clock] = {}

    def clock(self, name: str) -> Clock:
        if name not in self.clocks:
            self.clocks[name] = Clock(self, name)
            self._go[name] = threading.Event()
        return self.clocks[name]

    def add(self, name: str, run: Callable[[], None]) -> None:
        """Start ``run`` in a thread and let it set up alone, up to its first turn."""
        self.clock(name)

        def target() -> None:
            try:
                run()
            except BaseException as err:  # re-raised by the scheduler, which would otherwise wait forever
                self._errors[name] = err
            finally:
                self._finished.add(name)
                self._done.set()

        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads[name] = thread
        thread.start()
        self._await(name)

    def wait_turn(self, name: str) -> None:
        """Give the turn back to the scheduler and wait until it comes round again."""
        self._done.set()
        self._go[name].wait()
        self._go[name].clear()

    def run(self, order: Iterable[str] | None = None) -> None:
        """Rotate the turn until every configuration's thread has returned."""
        names = list(order or self._threads)
        while any(name not in self._finished for name in names):
            for name in names:
                if name not in self._finished:
                    self._go[name].set()
                    self._await(name)
        for thread in self._threads.values():
            thread.join()

    @property
    def epoch_times(self) -> dict[str, list[float]]:
        return {name: clock.epoch_times for name, clock in self.clocks.items()}

    def _await(self, name: str) -> None:
        self._done.wait()
        self._done.clear()
        if name in self._errors:
            raise RuntimeError(f"configuration {name!r} failed") from self._errors[name]


class Clock:
    """One configuration's turns and epoch times."""

    def __init__(self, scheduler: RoundRobin, name: str) -> None:
        self.scheduler = scheduler
        self.name = name
        self.epoch_times: list[float] = []
        self._steps = 0
        self._elapsed = 0.0
        self._start = 0.0

    def epoch_start(self) -> None:
        self.scheduler.wait_turn(self.name)
        self._steps, self._elapsed, self._start = 0, 0.0, time.perf_counter()

    def step(self) -> None:
        """Before each training step: hand the turn on every ``steps_per_turn`` steps."""
        if self._steps and self._steps % self.scheduler.steps_per_turn == 0:
            self._elapsed += time.perf_counter() - self._start
            self.scheduler.wait_turn(self.name)
            self._start = time.perf_counter()
        self._steps += 1

    def epoch_end(self) -> None:
        self.epoch_times.append(self._elapsed + time.perf_counter() - self._start)

    def timed(self, epochs: Iterable[Callable[[Clock], None]]) -> None:
        """Run plain-loop epochs (each takes this clock and calls :meth:`step` per step)."""
        for epoch in epochs:
            self.epoch_start()
            epoch(self)
            self.epoch_end()
        self.scheduler.wait_turn(self.name)  # what follows (evaluation) waits for a turn too


class TurnCallback(L.Callback):
    """Drives a :class:`Clock` from a Lightning fit's epoch and batch hooks."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock.epoch_start()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.clock.step()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock.epoch_end()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock.scheduler.wait_turn(self.clock.name)
