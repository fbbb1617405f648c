"""Interleave whole training runs epoch by epoch, in one process, one epoch at a time.

A shared machine's load drifts over minutes, so runs measured one after the other compare
different machines. Here every configuration trains in its own thread, but a thread only runs
while it holds the turn: the scheduler hands the turn to each configuration in a fixed rotation,
one epoch each, so all of them see the same drift. Lightning's ``fit`` cannot be paused from the
outside; :class:`TurnCallback` makes it wait for its turn at each epoch start instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import lightning as L


class RoundRobin:
    """Hands one epoch at a time to each configuration in turn; collects their epoch times."""

    def __init__(self) -> None:
        self._go: dict[str, threading.Event] = {}
        self._done = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._errors: dict[str, BaseException] = {}
        self.epoch_times: dict[str, list[float]] = {}

    def add(self, name: str, run: Callable[[], None]) -> None:
        """Start ``run`` in a thread and let it set up alone, up to its first :meth:`wait_turn`."""
        self._go[name] = threading.Event()
        self.epoch_times[name] = []

        def target() -> None:
            try:
                run()
            except BaseException as err:  # reported by the scheduler, which would otherwise wait forever
                self._errors[name] = err
            finally:
                self._done.set()

        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads[name] = thread
        thread.start()
        self._await(name)

    def wait_turn(self, name: str) -> None:
        """Called by a configuration before each epoch: report the previous step done, wait to be called."""
        self._done.set()
        self._go[name].wait()
        self._go[name].clear()

    def run(self, epochs: int, order: Iterable[str] | None = None) -> None:
        names = list(order or self._go)
        for _ in range(epochs):
            for name in names:
                self._go[name].set()
                self._await(name)
        for name in names:
            self._go[name].set()  # let each finish after its last epoch, one at a time
            self._await(name)
            self._threads[name].join()

    def _await(self, name: str) -> None:
        self._done.wait()
        self._done.clear()
        if name in self._errors:
            raise RuntimeError(f"configuration {name!r} failed") from self._errors[name]

    def timed_epochs(self, name: str, epochs: Iterable[Callable[[], None]]) -> None:
        """Run plain-loop epochs one turn each, timing each."""
        for epoch in epochs:
            self.wait_turn(name)
            start = time.perf_counter()
            epoch()
            self.epoch_times[name].append(time.perf_counter() - start)
        self.wait_turn(name)  # hold the rest of the run (evaluation) until the scheduler's final round


class TurnCallback(L.Callback):
    """Makes a Lightning fit wait for its turn before each training epoch and times the epoch."""

    def __init__(self, scheduler: RoundRobin, name: str) -> None:
        self.scheduler = scheduler
        self.name = name

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.scheduler.wait_turn(self.name)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.scheduler.epoch_times[self.name].append(time.perf_counter() - self._start)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.scheduler.wait_turn(self.name)  # as after the last epoch of a plain loop
