"""Registry of distillation losses, so configs and code name them the same way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from kd_lightning.errors import check_keyword_arguments, unknown_name_error
from kd_lightning.losses.base import DistillationLoss

_LOSSES: dict[str, type[DistillationLoss]] = {}
L = TypeVar("L", bound=type[DistillationLoss])


def register_loss(name: str) -> Callable[[L], L]:
    """Register a :class:`DistillationLoss` subclass under ``name``."""

    def decorator(cls: L) -> L:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        _LOSSES[name] = cls
        return cls

    return decorator


def list_losses() -> list[str]:
    return sorted(_LOSSES)


def create_loss(name: str, **kwargs: Any) -> DistillationLoss:
    """Instantiate a registered loss by name with its hyper-parameters."""
    if name not in _LOSSES:
        raise unknown_name_error("distillation loss", name, list_losses())
    check_keyword_arguments(_LOSSES[name], kwargs, f"distillation loss {name!r}")
    return _LOSSES[name](**kwargs)
