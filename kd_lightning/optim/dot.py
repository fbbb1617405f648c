"""DOT, the Distillation-Oriented Trainer: SGD whose momentum trusts the distillation gradient more."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from kd_lightning.errors import ConfigError

TASK_MOMENTUM = "task_momentum"
DISTILLATION_MOMENTUM = "distillation_momentum"


class DOT(Optimizer):
    """SGD with one momentum buffer for the task gradient (momentum ``μ − Δ``) and one for the
    distillation gradient (``μ + Δ``), summed in the update.

    Zhao, Cui, Song, Liang, "DOT: A Distillation-Oriented Trainer", ICCV 2023; as the authors' code
    (mdistiller ``engine/dot.py``), whose CIFAR-100 recipes use ``μ = 0.9``, ``Δ = 0.075``. A larger
    momentum on the distillation gradient lets that loss, which the paper finds under-optimised next
    to the task loss, dominate the update. The task gradient is ``p.grad`` (what ``backward`` of the
    task loss leaves); the distillation gradient is accumulated beforehand by
    :meth:`add_distillation_loss` and consumed by :meth:`step`. Per parameter ``p`` with task
    gradient ``g_t`` and distillation gradient ``g_d`` (weight decay ``λ``, learning rate ``η``)::

        b_t ← (μ − Δ)·b_t + g_t + λ·p        b_d ← (μ + Δ)·b_d + g_d        p ← p − η·(b_t + b_d)

    A parameter that only one loss reaches keeps that loss's buffer at momentum ``μ``, with the
    weight decay in it: plain SGD with momentum. A buffer starts as its first gradient (as
    ``torch.optim.SGD``). As the reference and not the paper: a distillation-only parameter (a
    feature loss's adapter) gets no weight decay in its first step. With ``Δ = 0`` DOT is
    ``torch.optim.SGD(lr, momentum, weight_decay)`` on the summed loss; without distillation
    gradients it is that SGD on the task loss.

    Args:
        params: parameters or parameter groups.
        lr: learning rate ``η``.
        momentum: the base momentum ``μ``.
        delta: ``Δ``, added to the distillation momentum and taken from the task momentum.
        weight_decay: L2 penalty ``λ``, added to the task gradient (to the distillation one where there is none).
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.9,
        delta: float = 0.075,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0.0:
            raise ConfigError(f"DOT's lr must be >= 0, got {lr}")
        if weight_decay < 0.0:
            raise ConfigError(f"DOT's weight_decay must be >= 0, got {weight_decay}")
        if not 0.0 <= delta <= momentum or momentum + delta >= 1.0:
            raise ConfigError(
                f"DOT's momenta momentum - delta and momentum + delta must lie in [0, 1), got momentum {momentum} "
                f"and delta {delta}: the paper uses momentum 0.9, delta 0.075"
            )
        super().__init__(params, {"lr": lr, "momentum": momentum, "delta": delta, "weight_decay": weight_decay})
        # Transient like p.grad: not optimizer state, so never in a checkpoint.
        self._distillation_grads: dict[torch.Tensor, torch.Tensor] = {}

    def add_distillation_loss(self, loss: torch.Tensor) -> None:
        """Add the gradient of ``loss`` (the distillation part of the objective) to the distillation
        gradients the next :meth:`step` consumes; the graph is kept for the task loss's ``backward``.

        Accumulates over calls like ``p.grad`` over ``backward`` calls, so gradient accumulation works;
        ``zero_grad`` leaves it alone (Lightning zeroes after the training step, before ``backward``).
        """
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        for param, grad in zip(params, grads, strict=True):
            if grad is None:
                continue
            held = self._distillation_grads.get(param)
            self._distillation_grads[param] = grad if held is None else held + grad

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                _update(param, self._distillation_grads.get(param), self.state[param], group)
        self._distillation_grads.clear()
        return loss


def _update(param: torch.Tensor, distillation_grad: torch.Tensor | None, state: dict, group: dict) -> None:
    """One DOT update of ``param`` from its task gradient (``param.grad``) and distillation gradient."""
    task_grad = param.grad
    if task_grad is None and distillation_grad is None:
        return
    momentum, delta, decay, lr = group["momentum"], group["delta"], group["weight_decay"], group["lr"]
    both = task_grad is not None and distillation_grad is not None
    if task_grad is not None:
        grad = task_grad.add(param, alpha=decay) if decay else task_grad
        param.add_(_momentum(state, TASK_MOMENTUM, grad, momentum - delta if both else momentum), alpha=-lr)
    if distillation_grad is not None:
        # The weight decay only where the task gradient did not bring it, so param is not updated yet.
        first = DISTILLATION_MOMENTUM not in state
        grad = distillation_grad.add(param, alpha=decay) if decay and not both and not first else distillation_grad
        param.add_(_momentum(state, DISTILLATION_MOMENTUM, grad, momentum + delta if both else momentum), alpha=-lr)


def _momentum(state: dict, key: str, grad: torch.Tensor, momentum: float) -> torch.Tensor:
    """The buffer ``state[key]`` after ``grad``: the gradient itself the first time, then ``momentum·b + grad``."""
    buffer = state.get(key)
    if buffer is None:
        buffer = state[key] = grad.detach().clone()
    else:
        buffer.mul_(momentum).add_(grad)
    return buffer
