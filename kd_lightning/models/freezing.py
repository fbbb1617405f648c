"""Freezing helpers shared by the finetuner, its unfreeze callback and the distiller's teacher."""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def freeze(module: nn.Module) -> None:
    """Stop gradients through ``module`` and put it in eval mode."""
    for param in module.parameters():
        param.requires_grad_(False)
    module.eval()


def keep_frozen_batchnorm_in_eval(module: nn.Module) -> None:
    """Put every BatchNorm whose parameters are all frozen back into eval mode.

    ``Trainer`` calls ``.train()`` on the whole LightningModule; a frozen BatchNorm left in
    train mode would normalise with batch statistics and overwrite its pretrained running
    statistics, silently changing the "frozen" features.
    """
    for m in module.modules():
        params = list(m.parameters())
        if isinstance(m, _BatchNorm) and params and not any(p.requires_grad for p in params):
            m.eval()


def keep_frozen_in_eval(module: nn.Module) -> None:
    """Eval mode for ``module`` if nothing in it trains, else for its frozen BatchNorm layers.

    A fully frozen backbone also keeps dropout off, so a linear probe sees deterministic
    features (the same ones a feature cache would store).
    """
    if not any(p.requires_grad for p in module.parameters()):
        module.eval()
    else:
        keep_frozen_batchnorm_in_eval(module)
