"""SIGTERM and SIGINT as outcomes: the run stops after the current batch with a resumable ``last.ckpt``.

Lightning already stops at a safe point on SIGTERM (the end of the current batch) but then
ends the process with exit status 0, so a scheduler takes a preempted run for a finished one;
and Ctrl+C (SIGINT) raises ``KeyboardInterrupt`` wherever the process happens to be, mid-step
included. :class:`GracefulInterrupt` routes SIGINT through Lightning's SIGTERM path, records
which signal arrived, writes ``last.ckpt`` when the fit stops, and lets the CLI end with
``128 + signal`` (143, 130), the status a shell gives a process killed by that signal. A second
Ctrl+C interrupts at once, as users expect of a stuck process.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

HANDLED = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(Exception):
    """A run stopped by a signal; the CLI prints :attr:`message` and exits with :attr:`exit_status`."""

    def __init__(self, signum: int, stage: str, last_checkpoint: Path | None) -> None:
        self.signum = signum
        self.exit_status = 128 + signum
        name = signal.Signals(signum).name
        if stage != "fit":
            resume = f"run {stage} again"
        elif last_checkpoint is not None:
            resume = f"{last_checkpoint} was saved; resume with the same command and --ckpt_path last"
        else:
            resume = (
                "no last.ckpt was written (stopped mid-step by a second Ctrl+C, or no ModelCheckpoint): "
                "resume from an earlier checkpoint with --ckpt_path, or start again"
            )
        self.message = f"{stage} interrupted by {name}: {resume}"
        super().__init__(self.message)


class GracefulInterrupt(Callback):
    """Stop on SIGTERM or SIGINT after the current batch, saving ``last.ckpt`` when fitting.

    The handlers are installed once Lightning has installed its own SIGTERM handler (which
    they call, so DDP ranks stop together) and are put back by Lightning's teardown.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.last_checkpoint: Path | None = None
        self._forward: Any = None

    def _install(self) -> None:
        if self._forward is not None or threading.current_thread() is not threading.main_thread():
            return
        self._forward = signal.getsignal(signal.SIGTERM)
        for signum in HANDLED:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt  # a second Ctrl+C: stop now
        self.signum = signum
        rank_zero_info(f"\n{signal.Signals(signum).name} received: stopping after the current batch")
        if callable(self._forward):
            self._forward(signal.SIGTERM, frame)  # Lightning's: sets trainer.received_sigterm

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._forward = None  # Lightning's teardown has restored the handlers found before the run

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Where Lightning's own mid-epoch checkpoints are saved, and so the state its resume
        # logic expects; Lightning raises SIGTERMException right after this batch.
        if self.signum is not None and self.last_checkpoint is None:
            self.last_checkpoint = save_last_checkpoint(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A last.ckpt written by an earlier interruption, in a folder whose ModelCheckpoint does not
        # keep one itself, would otherwise stay behind as the "last" state of a finished run.
        stale = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and not cb.save_last]
        if any(cb.dirpath is not None and last_checkpoint_path(cb).is_file() for cb in stale):
            save_last_checkpoint(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Only at Lightning's safe points (SIGTERMException: a batch, a validation or an epoch
        # finished); a second Ctrl+C lands mid-step, where no resume could continue from.
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        if self.signum is None:
            self.signum = signal.SIGTERM  # arrived while only Lightning's handler was installed
        if self.last_checkpoint is None:
            self.last_checkpoint = save_last_checkpoint(trainer)


def save_last_checkpoint(trainer: L.Trainer) -> Path | None:
    """Write ``last.ckpt`` where ``--ckpt_path last`` looks for it: each ``ModelCheckpoint``'s folder.

    Returns:
        The path written (the first one), or ``None`` when the trainer has no ``ModelCheckpoint``.
    """
    written: Path | None = None
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or callback.dirpath is None:
            continue
        path = last_checkpoint_path(callback)
        trainer.save_checkpoint(path)
        callback.last_model_path = str(path)
        written = written or path
    return written


def last_checkpoint_path(callback: ModelCheckpoint) -> Path:
    return Path(str(callback.dirpath)) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
