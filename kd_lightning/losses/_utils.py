"""Small helpers shared by the loss functions."""

from __future__ import annotations

import torch


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 stays float64), so losses are exact under autocast and in gradcheck."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
