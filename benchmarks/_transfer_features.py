"""Frozen-backbone features of the whole training split, computed in resumable chunks.

A linear-probe teacher is ``head ∘ backbone`` with the ImageNet backbone frozen, so every label budget's
teacher shares the backbone's features of the unlabeled transfer set: one pass over the 58,800 training
images serves all of them. At 112 px that pass costs about 20 CPU-minutes, more than a shared 2-core
session gives one process in a sitting, so it runs in chunks that are kept on disk and picked up again
(several processes can share the work: ``--worker i --workers n``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from kd_lightning.cache.feature_cache import FEATURE_PIPELINE, compute_features
from kd_lightning.cache.keys import cache_key, module_digest, tensor_digest
from kd_lightning.models import Classifier

CHUNK = 2048


def features_key(network: Classifier, images: torch.Tensor, image_size: int) -> str:
    backbone = module_digest(torch.nn.ModuleList([network.input_adapter, network.backbone]))
    return cache_key(
        kind="transfer-features",
        backbone=backbone,
        data=tensor_digest(images),
        image_size=image_size,
        pipeline=FEATURE_PIPELINE,
    )


def chunk_paths(folder: Path, n: int) -> list[Path]:
    return [folder / f"chunk{start // CHUNK:04d}.pt" for start in range(0, n, CHUNK)]


def compute_chunks(
    network: Classifier, images: torch.Tensor, image_size: int, cache_dir: Path, worker: int = 0, workers: int = 1
) -> Path:
    """Compute this worker's missing chunks (``i % workers == worker``); returns the entry's folder."""
    folder = cache_dir / features_key(network, images, image_size)
    folder.mkdir(parents=True, exist_ok=True)
    network.eval()
    for i, path in enumerate(chunk_paths(folder, len(images))):
        if i % workers != worker or path.exists():
            continue
        chunk = images[i * CHUNK : (i + 1) * CHUNK]
        features = compute_features(network, chunk, image_size, 256, torch.device("cpu"))
        tmp = path.with_suffix(".tmp")
        torch.save(features, tmp)
        tmp.replace(path)  # a killed worker never leaves a truncated chunk
        print(f"transfer features: {path} ({len(chunk)} images)", flush=True)
    return folder


def load_features(network: Classifier, images: torch.Tensor, image_size: int, cache_dir: Path) -> torch.Tensor:
    """All features, in the order of ``images``; refuses an incomplete entry, naming the missing chunks."""
    folder = cache_dir / features_key(network, images, image_size)
    paths = chunk_paths(folder, len(images))
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} feature chunks missing under {folder} "
            "(run: python benchmarks/few_labels.py --transfer-features)"
        )
    return torch.cat([torch.load(p, weights_only=True) for p in paths])
