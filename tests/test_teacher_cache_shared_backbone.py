"""Teacher cache sharing one backbone pass between teachers that differ only in their head."""

import pytest
import torch

from kd_lightning.cache.teacher import in_memory
from kd_lightning.cache.teacher.entry import TeacherCacheConfig, teacher_digest
from kd_lightning.data import DigitsDataModule
from kd_lightning.errors import ConfigError
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule
from kd_lightning.modules.teacher import FrozenTeacher
from tests.conftest import count_calls, make_trainer
from tests.test_teacher_cache import STUDENT, ViewChecker


def _fit_checked(teacher: ModelSpec, cache_dir, **data) -> ViewChecker:
    module = DistillationModule(
        STUDENT,
        teacher,
        num_classes=10,
        teacher_cache=TeacherCacheConfig("disk", views=2, directory=str(cache_dir), share_backbone_features=True),
    )
    checker = ViewChecker()
    dm = DigitsDataModule(batch_size=64, crop_padding=1, hflip=True, **data)
    make_trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=0, callbacks=[checker]).fit(module, dm)
    return checker


def test_teachers_with_one_backbone_share_its_features_and_keep_their_own_logits(
    teacher_spec, tmp_path, monkeypatch
) -> None:
    passes = count_calls(monkeypatch, in_memory.TeacherPass, "over_views")
    first = _fit_checked(teacher_spec, tmp_path / "cache")
    assert first.max_error < 1e-5 and passes == [1]  # head(stored features) is the teacher's own output

    state = torch.load(teacher_spec.weights_path, weights_only=True)
    head = next(k for k in state if k.endswith("head.weight"))
    state[head] = torch.randn_like(state[head])  # same backbone, another head: another linear probe
    torch.save(state, tmp_path / "other_head.pt")
    other = ModelSpec(teacher_spec.name, weights_path=str(tmp_path / "other_head.pt"), kwargs=teacher_spec.kwargs)
    second = _fit_checked(other, tmp_path / "cache")
    assert second.max_error < 1e-5
    assert passes == [1]  # the second teacher's logits came from the stored features: no backbone pass
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 3  # one feature entry, two teacher entries

    fewer_labels = _fit_checked(other, tmp_path / "cache", samples_per_class=5, unlabeled="rest")
    assert fewer_labels.max_error < 1e-5
    assert passes == [1]  # the same images with another label budget: features depend on the images only


def test_a_teacher_with_tapped_layers_cannot_share_its_backbone(teacher_spec) -> None:
    with pytest.raises(ConfigError, match="tap the teacher's layers"):
        DistillationModule(
            STUDENT,
            teacher_spec,
            num_classes=10,
            losses=[{"name": "at", "kwargs": {"student_layers": ["stage:-1"], "teacher_layers": ["stage:-1"]}}],
            input_shape=(1, 8, 8),
            teacher_cache=TeacherCacheConfig(share_backbone_features=True),
        )


def test_the_teacher_key_sees_its_input_size_and_pooled_layers(teacher_spec) -> None:
    digests = {
        teacher_digest(FrozenTeacher(ModelSpec(teacher_spec.name, **options, kwargs=teacher_spec.kwargs), 10))
        for options in ({}, {"input_size": 16}, {"feature_layers": ["stage:0"]})
    }
    assert len(digests) == 3  # same weights, three different functions: three cache keys
