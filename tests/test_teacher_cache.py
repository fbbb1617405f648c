"""Teacher-output cache: outputs equal a fresh teacher forward on the student's exact view."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from kd_lightning.cache.teacher import in_memory
from kd_lightning.cache.teacher.entry import TeacherCacheConfig, ViewTable, topk_compress, topk_expand
from kd_lightning.cli import lightning_main
from kd_lightning.data import DigitsDataModule
from kd_lightning.data.transforms import crop_at, flip_where, to_float_images
from kd_lightning.errors import ConfigError
from kd_lightning.losses import StepContext, kd_loss
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule
from tests._bad_input_helpers import user_error_line
from tests.conftest import count_calls, make_trainer

STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})


class ViewChecker(L.Callback):
    """Before every cached step: run the real teacher on the batch's (rendered) images."""

    def __init__(self) -> None:
        self.max_error = 0.0
        self.views: dict[int, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        assert batch.teacher is not None, "a cached batch carries the teacher's outputs"
        fresh = pl_module.teacher(batch.images).logits
        self.max_error = max(self.max_error, (fresh - batch.teacher.logits).abs().max().item())
        if batch_idx == 0:
            order = batch.indices.argsort()
            self.views[trainer.current_epoch] = (batch.images[order], batch.indices[order])


def test_cached_outputs_equal_a_fresh_teacher_forward_on_the_augmented_view(teacher_spec) -> None:
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, teacher_cache=TeacherCacheConfig(views=2))
    checker = ViewChecker()
    dm = DigitsDataModule(batch_size=64, crop_padding=1, hflip=True)
    make_trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=1, callbacks=[checker]).fit(module, dm)
    assert checker.max_error < 1e-5  # same function, batch composition may differ: float32 round-off only
    assert set(checker.views) == {0, 1}
    assert not torch.equal(checker.views[0][0], checker.views[1][0])  # epoch 1 trains on the second view
    assert next(iter(dm.train_dataloader())).teacher is None  # the DataModule serves plain images again


def test_rendered_view_is_the_random_augmentation_with_recorded_parameters() -> None:
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    views = ViewTable.sample(len(images), num_views=3, padding=2, hflip=True, seed=0)
    index = torch.tensor([4, 0, 5])
    out = views.render(images[index], index, view=2, image_size=None)
    expected = flip_where(
        crop_at(to_float_images(images[index]), 2, views.dy[2, index], views.dx[2, index]), views.flip[2, index]
    )
    assert torch.equal(out, expected)
    assert not torch.equal(views.render(images[index], index, 0, None), out)  # views differ


def test_student_trains_on_the_cached_views(teacher_spec) -> None:
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, teacher_cache=TeacherCacheConfig(views=2))
    seen: list[torch.Tensor] = []
    original = module.student_outputs

    def recording(x):
        seen.append(x.detach().clone())
        return original(x)

    module.student_outputs = recording
    checker = ViewChecker()
    dm = DigitsDataModule(batch_size=64, crop_padding=1, hflip=True)
    make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[checker]).fit(module, dm)
    x_checker, _ = checker.views[0]
    assert sorted(t.sum().item() for t in seen[0]) == pytest.approx(sorted(t.sum().item() for t in x_checker))


def test_changed_teacher_data_or_transforms_rebuild_the_cache(teacher_spec, tmp_path, monkeypatch) -> None:
    calls = count_calls(monkeypatch, in_memory, "build_teacher_cache")

    def fit(module, **dm_kwargs):
        trainer = make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0)
        trainer.fit(module, DigitsDataModule(batch_size=64, **dm_kwargs))

    make = lambda: DistillationModule(  # noqa: E731
        STUDENT, teacher_spec, num_classes=10, teacher_cache=TeacherCacheConfig("disk", directory=str(tmp_path))
    )
    fit(make())
    fit(make())
    assert len(calls) == 1  # a new module with the same teacher hits the disk entry
    module = make()
    with torch.no_grad():
        next(module.teacher.network.parameters()).add_(0.01)
    fit(module)
    assert len(calls) == 2
    fit(make(), image_size=10)
    assert len(calls) == 3
    fit(make(), seed=3)
    assert len(calls) == 4
    fit(make(), hflip=True)
    assert len(calls) == 5


def test_topk_keeps_the_top_logits_and_the_mass_of_the_rest() -> None:
    torch.manual_seed(0)
    logits = torch.randn(4, 20, dtype=torch.float64) * 3
    values, indices, fill = topk_compress(logits, 5)
    full = topk_expand(values, indices, fill, 20)
    assert torch.equal(full.gather(-1, indices), logits.gather(-1, indices))
    p, q = logits.softmax(-1), full.softmax(-1)
    torch.testing.assert_close(q.gather(-1, indices), p.gather(-1, indices))  # exact at T = 1
    with pytest.raises(ValueError, match="top-k"):
        topk_compress(logits, 20)


def test_topk_kd_error_shrinks_with_k_and_vanishes_at_c_minus_one() -> None:
    torch.manual_seed(0)
    teacher, student = torch.randn(64, 20) * 3, torch.randn(64, 20)
    exact = kd_loss(student, teacher)
    errors = [(kd_loss(student, topk_expand(*topk_compress(teacher, k), 20)) - exact).abs().item() for k in (2, 8, 19)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-5


def test_topk_cache_trains_and_its_kd_error_is_small(teacher_spec) -> None:
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, teacher_cache=TeacherCacheConfig(topk=5))
    errors: list[float] = []

    class Compare(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            student = pl_module.network(batch.images).detach()
            exact = kd_loss(student, pl_module.teacher(batch.images).logits)
            approx = kd_loss(student, batch.teacher.logits)
            errors.append(((approx - exact).abs() / exact).item())

    make_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, callbacks=[Compare()]).fit(
        module, DigitsDataModule(batch_size=64)
    )
    assert len(errors) == 3 and max(errors) < 0.25  # top-5 of 10 at T = 4: ~10% (measured in benchmarks)


def test_topk_cache_keeps_the_dropped_mass_at_the_kd_terms_temperature(teacher_spec) -> None:
    """With ``losses`` given, the top-k fill follows the KD term's T (here 1), not the α/T default's 4."""
    losses = [{"name": "ce", "weight": 0.5}, {"name": "kd", "weight": 0.5, "kwargs": {"temperature": 1.0}}]
    module = DistillationModule(STUDENT, teacher_spec, 10, losses=losses, teacher_cache=TeacherCacheConfig(topk=2))
    logits = [4.0, 3.0, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0]
    values, indices, fill = topk_compress(torch.tensor([logits]), 2, module.teacher_cache.temperature)
    cached = topk_expand(values, indices, fill, 10)[0].tolist()
    # Softmax at T = 1 by hand: the eight dropped classes' total probability.
    dropped_mass = sum(math.exp(z) for z in logits[2:]) / sum(math.exp(z) for z in logits)
    cached_mass = sum(math.exp(z) for z in cached[2:]) / sum(math.exp(z) for z in cached)
    assert cached_mass == pytest.approx(dropped_mass, rel=1e-6)


def test_topk_cache_refuses_logit_terms_at_two_temperatures(teacher_spec) -> None:
    losses = [{"name": "kd", "kwargs": {"temperature": 4.0}}, {"name": "dist", "kwargs": {"temperature": 1.0}}]
    with pytest.raises(ConfigError, match=r"at \[1.0, 4.0\]"):
        DistillationModule(STUDENT, teacher_spec, 10, losses=losses, teacher_cache=TeacherCacheConfig(topk=2))
    DistillationModule(
        STUDENT, teacher_spec, 10, losses=losses, teacher_cache=TeacherCacheConfig()
    )  # all logits stored: no fill


def test_cache_matches_the_uncached_loss_without_augmentation(teacher_spec) -> None:
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, teacher_cache=TeacherCacheConfig())
    losses: list[tuple[float, float]] = []

    class Compare(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            x, y = batch.images, batch.labels
            assert torch.equal(x, to_float_images(trainer.datamodule.train_set.images[batch.indices]))
            student = pl_module.student_outputs(x)
            cached = pl_module.loss_components(student, batch.teacher, StepContext(y))
            fresh = pl_module.loss_components(student, pl_module.teacher(x), StepContext(y))
            losses.append((cached["kd"].item(), fresh["kd"].item()))

    make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, callbacks=[Compare()]).fit(
        module, DigitsDataModule(batch_size=64)
    )
    for cached, fresh in losses:
        assert cached == pytest.approx(fresh, rel=1e-5)


def _distill_config(tmp_path: Path, cache: object, teacher: ModelSpec = STUDENT) -> Path:
    init_args = {"student": {"name": "small_cnn", "kwargs": {"width": 2}}, "teacher": teacher.to_dict()}
    config = {
        "trainer": {"max_epochs": 1, "logger": False, "enable_checkpointing": False, "limit_train_batches": 1},
        "model": {"class_path": "kd_lightning.modules.DistillationModule", "init_args": init_args | cache},
        "data": {"class_path": "kd_lightning.data.DigitsDataModule"},
    }
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("old", "named"),
    [
        ({"cache_views": 2}, "Option 'cache_views' is not accepted"),
        ({"teacher_cache": True}, 'Parser key "teacher_cache"'),
        ({"cache_dir": ".kd_cache/teacher"}, "Option 'cache_dir' is not accepted"),
        ({"teacher_cache": "disk"}, 'Parser key "teacher_cache"'),
    ],
    ids=["cache_views", "cache_dir", "true", "storage_as_the_value"],
)
def test_old_style_cache_settings_are_refused_in_one_line(tmp_path, capsys, old, named) -> None:
    line = user_error_line(capsys, ["fit", "--config", str(_distill_config(tmp_path, old))])
    assert named in line


def test_the_cache_config_is_one_nested_mapping_in_yaml_and_plain_in_checkpoints(tmp_path, teacher_spec) -> None:
    cache = {"teacher_cache": {"storage": "disk", "views": 2, "topk": 3, "directory": str(tmp_path / "c")}}
    parsed = lightning_main(["--config", str(_distill_config(tmp_path, cache, teacher_spec))], run=False)
    module = parsed.model
    assert module.teacher_cache.config == TeacherCacheConfig("disk", views=2, topk=3, directory=str(tmp_path / "c"))
    assert module.hparams["teacher_cache"] == cache["teacher_cache"] | {"share_backbone_features": False}
    trainer = make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, DigitsDataModule(batch_size=64))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = DistillationModule.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    assert loaded.teacher_cache is not None and loaded.teacher_cache.config == module.teacher_cache.config


def test_cache_settings_out_of_range_are_refused_in_one_line(teacher_spec) -> None:
    with pytest.raises(ConfigError, match="teacher_cache.topk must be below the 10 classes"):
        DistillationModule(STUDENT, teacher_spec, 10, teacher_cache=TeacherCacheConfig(topk=10))
    with pytest.raises(ConfigError, match="teacher_cache.views must be >= 1, got 0"):
        TeacherCacheConfig(views=0)
    with pytest.raises(ConfigError, match="teacher_cache.storage must be 'memory' or 'disk', got 'tape'"):
        TeacherCacheConfig.of({"storage": "tape"})
