"""The process group as code outside Lightning's hooks sees it (a data set's setup, a loss's buffers, a cache fill)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    import lightning as L

T = TypeVar("T")


def world_size() -> int:
    """Processes in the default group; 1 when no group is initialised (or torch lacks distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def on_every_rank(trainer: L.Trainer, step: Callable[[], T]) -> T:
    """Run ``step`` on this rank, then agree across ranks: if any rank failed, every rank raises its error.

    A rank that failed alone would otherwise leave the others waiting at their next collective. The
    agreement is a ``min`` reduction (of the first failing rank, if any), so it synchronises the
    ranks as a barrier would; that rank's exception is then broadcast to the others.
    """
    strategy = trainer.strategy
    if trainer.world_size == 1:
        return step()
    error: Exception | None = None
    try:
        result = step()
    except Exception as err:  # agreed on below, then raised on every rank
        error = err
    mine = trainer.global_rank if error is not None else trainer.world_size
    first = int(strategy.reduce(torch.tensor(mine, device=strategy.root_device), reduce_op="min").item())
    if first == trainer.world_size:
        return result
    if error is not None and first == trainer.global_rank:
        strategy.broadcast(_portable(error), src=first)
        raise error
    raise strategy.broadcast(RuntimeError("replaced by the failing rank's error"), src=first)


def _portable(error: Exception) -> Exception:
    """``error``, or a ``RuntimeError`` with its message when it cannot be sent to the other ranks (pickled)."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # any failure to round-trip: send the message alone
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error
