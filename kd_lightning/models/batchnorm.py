"""Recompute BatchNorm running statistics from training data ("precise BN").

During training a BatchNorm layer keeps an exponential moving average of its batch statistics
(``momentum`` 0.1 by default). The weights move at every step, so after a short or high-lr
schedule the average mixes statistics of many past networks and no longer describes the final
one; eval mode then normalises with the wrong numbers, which can cost a briefly trained teacher
tens of points of accuracy (benchmarks/RESULTS.md), and every soft label it gives a student is that wrong.

The fix (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021; fvcore/pycls ``PreciseBN``;
``torch.optim.swa_utils.update_bn``) is to forward a number of training batches through the
final network in train mode, without gradients, with ``momentum=None`` so that each layer keeps
the plain cumulative average of the batch statistics instead of a moving one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def trainable_batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers with running statistics that ``model.train()`` leaves in train mode.

    Calling ``train()`` on a kd_lightning module keeps what it froze in eval mode (a linear
    probe's backbone, the distiller's teacher), so those layers' statistics are left alone.
    """
    model.train()
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], num_batches: int | None = None) -> int:
    """Replace the running statistics of ``model``'s BatchNorm layers by their average over ``batches``.

    The layers of :func:`trainable_batchnorms` average with ``momentum=None`` (cumulative) over a
    train-mode forward of each batch, without gradients; momenta and train/eval modes are restored
    afterwards, and the old statistics too on an error. Each batch weighs the same, as in
    ``update_bn``, so use the training batch size: its statistics are the ones the network trained with.

    Args:
        model: the network (or a module whose ``forward`` runs it).
        batches: model-ready inputs (already converted and on the model's device).
        num_batches: stop after this many batches (``None``: all of ``batches``).

    Returns:
        The number of batches used.

    Raises:
        ValueError: ``batches`` was empty, so no statistics could be computed.
    """
    modes = {m: m.training for m in model.modules()}
    layers = trainable_batchnorms(model)
    if not layers:
        _restore_modes(modes)
        return 0
    saved = [(bn.momentum, {k: v.clone() for k, v in bn.state_dict().items()}) for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None
    used = 0
    try:
        for x in batches:
            if num_batches is not None and used >= num_batches:
                break
            model(x)
            used += 1
        if used == 0:
            raise ValueError("recalibrate_batchnorm got no batches: BatchNorm statistics need at least one")
    except BaseException:
        for bn, (_, state) in zip(layers, saved, strict=True):
            bn.load_state_dict(state)
        raise
    finally:
        for bn, (momentum, _) in zip(layers, saved, strict=True):
            bn.momentum = momentum
        _restore_modes(modes)
    return used


def _restore_modes(modes: dict[nn.Module, bool]) -> None:
    for module, training in modes.items():
        module.training = training


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Inside the block, every BatchNorm layer of ``model`` normalises with its batch's statistics.

    What a network would score with correct running statistics can be estimated this way without
    changing it: on exit each layer's running statistics and every module's mode are restored.
    Compare with eval mode to detect stale statistics.
    """
    modes = {m: m.training for m in model.modules()}
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in layers]
    model.eval()
    for bn in layers:
        bn.train()
    try:
        yield
    finally:
        with torch.no_grad():
            for bn, state in zip(layers, saved, strict=True):
                bn.load_state_dict(state)
        _restore_modes(modes)
