"""Weight initialisation shared by the CIFAR networks of the distillation literature."""

from __future__ import annotations

from torch import nn


def kaiming_init_convs(module: nn.Module) -> None:
    """He (fan-out, ReLU) initialisation of every convolution, biases zeroed, as in RepDistiller."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
