"""Optimizers that know a distillation objective has two parts."""

from kd_lightning.optim.dot import DOT

__all__ = ["DOT"]
