"""Train a linear probe on pre-computed backbone features instead of images.

A frozen backbone in eval mode maps each image to the same features every epoch, so with a
deterministic input pipeline one pass over the data is all the backbone work a linear probe
needs; every later epoch costs head training only.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from kd_lightning.cache._loader import TensorTupleDataset, rank_shard, shard_loader
from kd_lightning.cache.keys import cache_key, module_digest, tensor_digest
from kd_lightning.cache.store import CacheStore
from kd_lightning.data.transforms import to_float_images

log = logging.getLogger(__name__)

FEATURE_PIPELINE = "to_float_images/v1"  # bump when the image → tensor conversion changes


def why_not_cacheable(datamodule: Any) -> str | None:
    """The reason the features of ``datamodule``'s training images are not fixed, or ``None``."""
    if datamodule is None or getattr(datamodule, "train_set", None) is None:
        return "it needs a kd_lightning ImageClassificationDataModule (in-memory train_set)"
    if getattr(datamodule, "crop_padding", 0) > 0 or getattr(datamodule, "hflip", False):
        return (
            f"random augmentation is on (crop_padding={datamodule.crop_padding}, hflip={datamodule.hflip}), "
            "so the backbone sees a different view of each image every epoch"
        )
    return None


@torch.no_grad()
def compute_features(
    network: torch.nn.Module,
    images: torch.Tensor,
    image_size: int | None,
    batch_size: int,
    device: torch.device,
    context: Any = None,
) -> torch.Tensor:
    """``network.forward_features`` of uint8 ``images`` in batches, on ``device``, returned on the CPU.

    Args:
        context: a context-manager factory for the forward (the trainer's precision context),
            so the cached features are the ones an uncached step under that precision computes.
    """
    chunks = []
    for start in range(0, len(images), batch_size):
        x = to_float_images(images[start : start + batch_size].to(device), image_size)
        with context() if context is not None else torch.autocast(device.type, enabled=False):
            chunks.append(network.forward_features(x).float().cpu())
    return torch.cat(chunks)


class FeatureCacheCallback(Callback):
    """Swap the train and val loaders for loaders of cached backbone features (``fit`` only).

    At ``on_fit_start`` (the model is on its device, DDP is set up) it looks up, or computes and
    stores, the features of this rank's shard of the train and val sets, keyed by the backbone's
    weights, the data's content (which includes the split) and the image pipeline. The module's
    forward then applies only the head to 2-D (feature) batches. Test and predict keep images.

    Args:
        store: where the features live (memory, or memory-mapped files on disk).
    """

    def __init__(self, store: CacheStore) -> None:
        self.store = store
        self.active = False
        self._original: dict[str, Any] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        reason = why_not_cacheable(datamodule)
        if reason is not None:
            log.warning(f"feature cache not used: {reason}")
            return
        loaders = {
            "train_dataloader": self._loader(trainer, pl_module, datamodule.train_set, "train", shuffle=True),
            "val_dataloader": self._loader(trainer, pl_module, datamodule.val_set, "val", shuffle=False),
        }
        for name, loader in loaders.items():
            if loader is not None:
                self._original[name] = datamodule.__dict__.get(name)
                setattr(datamodule, name, lambda loader=loader: loader)
        self.active = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        for name, previous in self._original.items():
            if previous is None:
                datamodule.__dict__.pop(name, None)
            else:
                setattr(datamodule, name, previous)
        self._original.clear()
        self.active = False

    def _loader(self, trainer: L.Trainer, pl_module: L.LightningModule, dataset, split: str, shuffle: bool):
        if dataset is None or len(dataset) == 0:
            return None
        datamodule = trainer.datamodule
        shard = rank_shard(len(dataset), trainer.global_rank, trainer.world_size)
        images, labels = dataset.images[shard], dataset.labels[shard]
        network = pl_module.network
        key = cache_key(
            kind="features",
            backbone=module_digest(torch.nn.ModuleList([network.input_adapter, network.backbone])),
            data=tensor_digest(images, labels),
            image_size=datamodule.image_size,
            pipeline=FEATURE_PIPELINE,
            precision=str(trainer.precision),
        )
        entry = self.store.get(key, slot=split)
        if entry is None:
            log.info(f"feature cache: computing {split} features of {len(images)} images (key {key})")
            network.eval()
            features = compute_features(
                network,
                images,
                datamodule.image_size,
                datamodule.eval_batch_size,
                pl_module.device,
                trainer.precision_plugin.forward_context,
            )
            entry = self.store.put(key, {"features": features, "labels": labels}, slot=split)
            pl_module.train()  # restores train mode of the head; the frozen backbone stays in eval
        else:
            log.info(f"feature cache: reusing {split} features (key {key})")
        batch_size = datamodule.batch_size if split == "train" else datamodule.eval_batch_size
        dataset = TensorTupleDataset(entry["features"], entry["labels"])
        return shard_loader(dataset, batch_size, shuffle=shuffle, seed=getattr(datamodule, "seed", 0))


def is_feature_batch(x: torch.Tensor) -> bool:
    """Features are ``[B, D]``; images are always ``[B, C, H, W]``."""
    return x.dim() == 2


__all__ = ["FeatureCacheCallback", "compute_features", "is_feature_batch", "why_not_cacheable"]
