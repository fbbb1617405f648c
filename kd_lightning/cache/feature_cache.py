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

from kd_lightning.cache._shards import rank_shard
from kd_lightning.cache.keys import backbone_digest, cache_key, tensor_digest
from kd_lightning.cache.store import CacheStore
from kd_lightning.data.base import ImageClassificationDataModule, Split
from kd_lightning.data.sources import FeatureSource
from kd_lightning.data.tensor_dataset import TensorImageDataset
from kd_lightning.data.transforms import to_float_images
from kd_lightning.models.classifier import Classifier

log = logging.getLogger(__name__)

FEATURE_PIPELINE = "to_float_images/v1"  # bump when the image → tensor conversion changes


def why_not_cacheable(datamodule: Any) -> str | None:
    """The reason the features of ``datamodule``'s training images are not fixed, or ``None``."""
    if not isinstance(datamodule, ImageClassificationDataModule) or datamodule.train_set is None:
        return "it needs a kd_lightning ImageClassificationDataModule (in-memory train_set)"
    if datamodule.crop_padding > 0 or datamodule.hflip:
        return (
            f"random augmentation is on (crop_padding={datamodule.crop_padding}, hflip={datamodule.hflip}), "
            "so the backbone sees a different view of each image every epoch"
        )
    return None


def feature_key(
    network: Classifier, images: torch.Tensor, labels: torch.Tensor, image_size: int | None, precision: str
) -> str:
    """The key of ``network``'s features of ``images``: backbone, data content, resize, pipeline, precision."""
    return cache_key(
        kind="features",
        backbone=backbone_digest(network),
        data=tensor_digest(images, labels),
        image_size=image_size,
        pipeline=FEATURE_PIPELINE,
        precision=precision,
    )


@torch.no_grad()
def compute_features(
    network: Classifier,
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


class FeatureCache:
    """Serve a linear probe's train and val batches as cached backbone features (``fit`` only).

    :meth:`sources` looks up, or computes and stores, the features of this rank's shard of the
    train and val sets, keyed by the backbone's weights, the data's content (which includes the
    split), the image pipeline and the precision; the finetuner hands them to the DataModule
    (:meth:`~kd_lightning.data.base.ImageClassificationDataModule.use_source`) and trains its head on
    ``batch.features``. Test and predict keep images.

    Args:
        store: where the features live (memory, or memory-mapped files on disk).
    """

    def __init__(self, store: CacheStore) -> None:
        self.store = store

    def sources(self, trainer: L.Trainer, network: Classifier) -> dict[Split, FeatureSource]:
        """Feature sources by split; empty (with the reason logged) when the features are not fixed."""
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning at run time
        reason = why_not_cacheable(datamodule)
        if reason is not None:
            log.warning(f"feature cache not used: {reason}")
            return {}
        splits: dict[Split, TensorImageDataset | None] = {"train": datamodule.train_set, "val": datamodule.val_set}
        return {
            split: self._source(trainer, network, dataset, split)
            for split, dataset in splits.items()
            if dataset is not None and len(dataset) > 0
        }

    def _source(self, trainer: L.Trainer, network: Classifier, dataset, split: str) -> FeatureSource:
        datamodule = trainer.datamodule  # type: ignore[attr-defined]  # set by Lightning at run time
        shard = rank_shard(len(dataset), trainer.global_rank, trainer.world_size)
        images, labels = dataset.images[shard], dataset.labels[shard]
        key = feature_key(network, images, labels, datamodule.image_size, str(trainer.precision))
        entry = self.store.get(key, slot=split)
        if entry is None:
            log.info(f"feature cache: computing {split} features of {len(images)} images (key {key})")
            device = trainer.strategy.root_device
            was_training = network.training
            network.to(device).eval()
            features = compute_features(
                network,
                images,
                datamodule.image_size,
                datamodule.eval_batch_size,
                device,
                trainer.precision_plugin.forward_context,
            )
            network.train(was_training)
            entry = self.store.put(key, {"features": features, "labels": labels}, slot=split)
        else:
            log.info(f"feature cache: reusing {split} features (key {key})")
        return FeatureSource(entry["features"], entry["labels"])


__all__ = ["FeatureCache", "compute_features", "feature_key", "why_not_cacheable"]
