"""The teacher cache of an in-memory text training set: the teacher's outputs per text, keyed on its token ids.

Text is not augmented, so the entry holds one view (the :class:`ViewTable` of a sample that is
never cropped or flipped) and the student's batches are the texts themselves, padded per batch
as the DataModule pads them. The teacher's outputs per text do not depend on that padding (the
models mask it out), so outputs computed in any batching serve every epoch's batches.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import cast

import lightning as L
import torch

from kd_lightning.cache._shards import rank_shard
from kd_lightning.cache.keys import tensor_digest
from kd_lightning.cache.teacher.entry import (
    Teacher,
    TeacherCache,
    TeacherOutputCache,
    ViewTable,
    backbone_key,
    shared_backbone_network,
    view_key_parts,
)
from kd_lightning.cache.teacher.in_memory import TeacherPass, output_tensors, stored_outputs
from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.batch import Batch
from kd_lightning.data.sources import BatchSource
from kd_lightning.data.text_dataset import TokenizedTextDataset
from kd_lightning.errors import ConfigError

log = logging.getLogger(__name__)


class TokenCacheSource(BatchSource):
    """Training batches of this rank's shard of the texts, with the teacher's stored outputs attached."""

    rank_local = True

    def __init__(self, texts: TokenizedTextDataset, shard: torch.Tensor, cache: TeacherOutputCache) -> None:
        self.texts, self.cache = texts, cache
        self.shard = shard.to(cache.views.dy.device)  # global training-set index of each position

    def __len__(self) -> int:
        return len(self.texts)

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return Batch(self.texts.labels.index_select(0, idx), indices=idx, tokens=self.texts.pad(idx))

    def finish(self, batch: Batch, epoch: int) -> Batch:
        position = batch.indices
        if position is None:  # __getitems__ always sets them
            raise RuntimeError("a teacher-cache batch arrived without its sample indices")
        indices = self.shard.index_select(0, position)
        return Batch(
            batch.labels, indices=indices, tokens=batch.tokens, teacher=self.cache.teacher_outputs(position, 0)
        )


def token_source(
    cache: TeacherCache, trainer: L.Trainer, datamodule: ImageClassificationDataModule, teacher: Teacher
) -> TokenCacheSource:
    """Look up or compute the teacher's outputs on this rank's shard of the training texts."""
    if datamodule.train_set is None:
        raise RuntimeError("the teacher cache runs after the DataModule's setup")
    train_set = cast(TokenizedTextDataset, datamodule.train_set)  # a DataModule that reads tokens holds texts
    per_token = [name for name, shape in (teacher.taps.shapes if teacher.taps else {}).items() if len(shape) > 2]
    if per_token:
        raise ConfigError(
            f"teacher_cache keeps one row of outputs per text, but the losses tap the teacher's per-token layers "
            f"{per_token}, whose length follows each batch's padding: tap pooled layers (backbone) or drop "
            "teacher_cache"
        )
    shard = rank_shard(len(train_set), trainer.global_rank, trainer.world_size)
    texts = train_set.subset(shard)
    data = {"tokens": tensor_digest(texts.tokens), "offsets": tensor_digest(texts.offsets), "pad_id": texts.pad_id}
    views_key = view_key_parts(data, 1, 0, False, None, str(trainer.precision))
    key = cache.key(teacher, views_key, labels=tensor_digest(texts.labels))
    device = trainer.strategy.root_device
    entry = cache.store.get(key, slot="teacher")
    if entry is None:
        log.info(f"teacher cache: {len(texts)} texts (key {key})")
        views = ViewTable.sample(len(texts), 1, 0, False)
        teacher.network.to(device)
        run = TeacherPass(None, datamodule.eval_batch_size, device, trainer.precision_plugin.forward_context)
        batches = (texts.pad(index) for index in run.chunks(len(texts)))
        if cache.config.share_backbone_features:
            network = shared_backbone_network(teacher)
            features_key = backbone_key(network, views_key)
            stored = cache.store.get(features_key, slot="teacher-features")
            if stored is None:
                features = run.over_batches(lambda x: {"features": network.forward_features(x)}, batches)
                stored = cache.store.put(
                    features_key, {"features": features["features"][None]}, slot="teacher-features"
                )
            logits = run.head_over_features(network.head, stored["features"])
            outputs = TeacherOutputCache(views, None, cache.num_classes, cache.stored_logits(logits))
        else:
            per_text = run.over_batches(partial(output_tensors, teacher), batches)
            outputs = stored_outputs(cache, views, None, {name: t[None] for name, t in per_text.items()})
        entry = cache.store.put(key, outputs.to_entry(), slot="teacher")
    stored_entry = TeacherOutputCache.from_entry(entry, 0, False, None, cache.num_classes, device)
    return TokenCacheSource(texts, shard, stored_entry)
