"""Feature cache of the linear probe: exact features, content keys, rebuilds, augmentation guard."""

import logging

import pytest
import torch

from kd_lightning.cache import CacheStore, cache_key, module_digest, tensor_digest
from kd_lightning.cache import feature_cache as feature_cache_module
from kd_lightning.cache._shards import rank_shard
from kd_lightning.data import DigitsDataModule
from kd_lightning.data.batch import Batch
from kd_lightning.data.transforms import to_float_images
from kd_lightning.modules import FrozenBackboneFinetuner
from tests.conftest import count_calls, make_trainer


def _fresh_features(module: FrozenBackboneFinetuner, dm: DigitsDataModule) -> torch.Tensor:
    module.network.eval()
    with torch.no_grad():
        return module.network.forward_features(to_float_images(dm.train_set.images, dm.image_size))


def _train_entry(module: FrozenBackboneFinetuner) -> dict[str, torch.Tensor]:
    store = module.feature_cache.store
    return next(entry for slot, (_, entry) in store._slots.items() if slot == "train")


def test_cached_features_equal_a_fresh_backbone_forward(teacher_spec) -> None:
    dm = DigitsDataModule(batch_size=64)
    module = FrozenBackboneFinetuner(teacher_spec, num_classes=10, feature_cache=True)
    make_trainer(max_epochs=2).fit(module, dm)
    entry = _train_entry(module)
    torch.testing.assert_close(entry["features"], _fresh_features(module, dm), rtol=1e-5, atol=1e-6)
    assert torch.equal(entry["labels"], dm.train_set.labels)


def test_head_on_features_equals_the_full_network_on_images(teacher_spec) -> None:
    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")
    module = FrozenBackboneFinetuner(teacher_spec, num_classes=10, feature_cache=True).eval()
    images, labels = to_float_images(dm.train_set.images[:16]), dm.train_set.labels[:16]
    with torch.no_grad():
        features = module.network.forward_features(images)
        on_features = module.logits(Batch(labels, features=features))
        torch.testing.assert_close(on_features, module.logits(Batch(labels, images=images)))


def test_a_feature_batch_is_never_mistaken_for_images(teacher_spec) -> None:
    module = FrozenBackboneFinetuner(teacher_spec, num_classes=10).eval()
    with pytest.raises(ValueError, match="expected images"):
        module(torch.rand(4, module.network.feature_dim))


def test_epochs_after_the_first_reuse_the_cache_and_the_backbone_never_runs(teacher_spec, monkeypatch) -> None:
    calls = count_calls(monkeypatch, feature_cache_module, "compute_features")
    module = FrozenBackboneFinetuner(teacher_spec, num_classes=10, feature_cache=True)
    backbone_calls: list[int] = []
    module.network.backbone.register_forward_hook(lambda *_: backbone_calls.append(1))
    dm = DigitsDataModule(batch_size=64)
    make_trainer(max_epochs=3, num_sanity_val_steps=0).fit(module, dm)
    assert len(calls) == 2  # train and val features, once each
    cache_batches = -(-len(dm.train_set) // 64) + -(-len(dm.val_set) // 64)
    assert len(backbone_calls) == cache_batches  # the backbone ran only to build the cache


def test_changed_weights_transforms_or_data_rebuild_the_cache(teacher_spec, monkeypatch) -> None:
    calls = count_calls(monkeypatch, feature_cache_module, "compute_features")
    module = FrozenBackboneFinetuner(teacher_spec, num_classes=10, feature_cache=True)
    fit = lambda dm: make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1).fit(module, dm)  # noqa: E731
    fit(DigitsDataModule(batch_size=64))
    fit(DigitsDataModule(batch_size=64))
    assert len(calls) == 2  # second fit: all hits
    with torch.no_grad():
        next(module.network.backbone.parameters()).add_(0.01)
    dm = DigitsDataModule(batch_size=64)
    fit(dm)
    assert len(calls) == 4  # new weights: rebuilt ...
    torch.testing.assert_close(_train_entry(module)["features"], _fresh_features(module, dm), rtol=1e-5, atol=1e-6)
    fit(DigitsDataModule(batch_size=64, image_size=12))
    assert len(calls) == 6  # ... new resize ...
    fit(DigitsDataModule(batch_size=64, seed=1))
    assert len(calls) == 8  # ... new split


def test_key_parts_change_the_key(teacher_spec) -> None:
    module = FrozenBackboneFinetuner(teacher_spec, num_classes=10)
    digest = module_digest(module.network.backbone)
    with torch.no_grad():
        module.network.backbone.fc.weight.mul_(2) if hasattr(module.network.backbone, "fc") else next(
            module.network.backbone.parameters()
        ).mul_(2)
    assert module_digest(module.network.backbone) != digest
    data = torch.arange(12, dtype=torch.uint8).view(3, 1, 2, 2)
    assert tensor_digest(data) != tensor_digest(data.flip(0))
    assert cache_key(a=1, b=None) == cache_key(b=None, a=1) != cache_key(a=1, b=8)


def test_disk_cache_is_reused_across_modules(teacher_spec, tmp_path, monkeypatch) -> None:
    calls = count_calls(monkeypatch, feature_cache_module, "compute_features")
    for _ in range(2):
        module = FrozenBackboneFinetuner(
            teacher_spec, num_classes=10, feature_cache="disk", feature_cache_dir=str(tmp_path)
        )
        make_trainer(max_epochs=1, num_sanity_val_steps=0).fit(module, DigitsDataModule(batch_size=64))
    assert len(calls) == 2
    files = sorted(tmp_path.glob("*.pt"))
    assert len(files) == 2
    store = CacheStore("disk", tmp_path)
    entry = store.get(files[0].stem)
    assert entry["features"].dim() == 2 and len(entry["features"]) == len(entry["labels"])


def test_random_augmentation_disables_the_cache_and_says_why(teacher_spec, caplog, monkeypatch) -> None:
    calls = count_calls(monkeypatch, feature_cache_module, "compute_features")
    module = FrozenBackboneFinetuner(teacher_spec, num_classes=10, feature_cache=True)
    with caplog.at_level(logging.WARNING, logger="kd_lightning.cache.feature_cache"):
        make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1).fit(
            module, DigitsDataModule(batch_size=64, hflip=True)
        )
    assert calls == []
    assert "random augmentation is on" in caplog.text


def test_feature_cache_requires_a_linear_probe(teacher_spec) -> None:
    with pytest.raises(ValueError, match="linear_probe"):
        FrozenBackboneFinetuner(teacher_spec, num_classes=10, strategy="full", feature_cache=True)


def test_the_datamodule_serves_images_again_after_a_cached_fit(teacher_spec) -> None:
    module = FrozenBackboneFinetuner(teacher_spec, num_classes=10, feature_cache=True)
    dm = DigitsDataModule(batch_size=64)
    make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1).fit(module, dm)
    batch = next(iter(dm.train_dataloader()))
    assert batch.images is not None and batch.features is None


def test_rank_shards_cover_the_data_and_have_equal_sizes() -> None:
    shards = [rank_shard(10, rank, 4) for rank in range(4)]
    assert {len(s) for s in shards} == {3}
    assert set(torch.cat(shards).tolist()) == set(range(10))
