"""Content hashes of networks, so a checkpoint can tell whether it meets the same teacher again."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from kd_lightning.errors import CheckpointError


def state_dict_sha256(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer: names, dtypes, shapes and bytes, in key order.

    Independent of the file the weights came from (a Lightning checkpoint and a plain state
    dict of one network hash alike) and of the device they sit on.
    """
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_fingerprint(expected: dict[str, Any], module: nn.Module, what: str = "teacher") -> None:
    """Refuse ``module`` when its hash differs from ``expected = {"sha256": ..., "spec": ...}``."""
    actual = state_dict_sha256(module)
    if actual != expected["sha256"]:
        raise CheckpointError(
            f"the {what} differs from the one this checkpoint was trained with: checkpoint {what} "
            f"{expected.get('spec')} has sha256 {expected['sha256'][:12]}…, the {what} built from the "
            f"current config has {actual[:12]}…. Point the config's {what} at the original weights file."
        )
