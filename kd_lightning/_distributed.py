"""The process group as code outside Lightning's hooks sees it (a data set's setup, a loss's buffers)."""

from __future__ import annotations

import torch.distributed as dist


def world_size() -> int:
    """Processes in the default group; 1 when no group is initialised (or torch lacks distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
