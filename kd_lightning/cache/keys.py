"""Content keys: a cache entry is valid exactly as long as everything that shaped it is unchanged.

Keys hash tensor *contents* (not object identities or file names), so new weights loaded into
the same module, a different split of the same data or another resize all yield another key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from kd_lightning.models.classifier import Classifier


def tensor_digest(*tensors: torch.Tensor) -> str:
    """BLAKE2b of the dtype, shape and bytes of each tensor, in order."""
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def module_digest(module: nn.Module) -> str:
    """Digest of a module's full state (parameters and buffers, persistent or not), by name.

    Non-persistent buffers are included because the input adapter keeps its mean/std there,
    and they change what the network computes as surely as the weights do.
    """
    h = hashlib.blake2b(digest_size=16)
    named = list(module.named_parameters()) + list(module.named_buffers())
    for name, tensor in sorted(named, key=lambda item: item[0]):
        h.update(name.encode())
        h.update(tensor_digest(tensor).encode())
    return h.hexdigest()


def backbone_digest(network: Classifier) -> str:
    """Digest of what decides a classifier's features: its input adapter and trunk, its input resize
    and its pooled feature layers (the last two are settings, not tensors, so a state digest misses them)."""
    return cache_key(
        state=module_digest(nn.ModuleList([network.input_adapter, network.backbone])),
        input_size=network.input_size,
        feature_layers=list(network.feature_layers),
    )


def cache_key(**parts: Any) -> str:
    """One hex key from named parts (digests, sizes, flags); the order of arguments is irrelevant."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
