"""Teacher cache on a streamed data set: outputs keyed by sample index, for the exact view the student sees."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from kd_lightning.cache.teacher.entry import TeacherCache, TeacherCacheConfig, ViewTable, topk_compress, topk_expand
from kd_lightning.cache.teacher.streamed import _CacheFiller, refuse_unsupported
from kd_lightning.data import StreamingImageDataModule
from kd_lightning.data._litdata import StreamingDataset
from kd_lightning.data.batch import IGNORE_LABEL
from kd_lightning.data.decoding import ImageDecoder
from kd_lightning.data.prepare import prepare_dataset
from kd_lightning.errors import ConfigError
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule
from tests._streaming_runs import run_helper, straight_and_resumed
from tests.conftest import count_calls, make_trainer

STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})
AUGMENTED = dict(image_size=8, random_resized_crop=True, crop_padding=1, hflip=True)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn digits prepared as LitData chunks (train in several chunks)."""
    out = tmp_path_factory.mktemp("stream_digits")
    prepare_dataset("digits", str(out), chunk_bytes="64KB", num_workers=2, verbose=False)
    return out


def streamed(digits_dir: Path, **kwargs) -> StreamingImageDataModule:
    options = dict(batch_size=32, num_workers=0, samples_per_class=10, **AUGMENTED) | kwargs
    return StreamingImageDataModule(str(digits_dir), **options)


class Recorder(L.Callback):
    """Every training batch as the student gets it, and the largest gap to a fresh teacher forward on it."""

    def __init__(self, topk: int | None = None, temperature: float = 4.0) -> None:
        self.topk, self.temperature = topk, temperature
        self.max_error = 0.0
        self.batches: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        assert batch.teacher is not None, "a cached batch carries the teacher's outputs"
        fresh = pl_module.teacher(batch.images)
        expected = fresh.logits
        if self.topk is not None:
            expected = topk_expand(*topk_compress(expected, self.topk, self.temperature), expected.shape[-1])
        errors = [(expected - batch.teacher.logits).abs().max().item()]
        errors += [(t - batch.teacher.features[name]).abs().max().item() for name, t in fresh.features.items()]
        self.max_error = max(self.max_error, *errors)
        self.batches.append((trainer.current_epoch, batch.indices.cpu(), batch.images.cpu(), batch.labels.cpu()))


def fit(module: DistillationModule, data: StreamingImageDataModule, epochs: int = 1, **trainer_options) -> None:
    make_trainer(max_epochs=epochs, limit_val_batches=0, **trainer_options).fit(module, data)


@pytest.mark.parametrize(
    ("teacher_size", "topk"), [(None, None), (16, None), (None, 3)], ids=["logits", "teacher_at_16px", "top3"]
)
def test_cached_outputs_are_the_teachers_on_the_exact_view_the_student_sees(
    digits_dir, teacher_spec, teacher_size, topk
):
    L.seed_everything(1)  # a run seed other than the cache's (0): the fixed views must not depend on it
    teacher = ModelSpec(
        teacher_spec.name, weights_path=teacher_spec.weights_path, kwargs=teacher_spec.kwargs, input_size=teacher_size
    )
    module = DistillationModule(STUDENT, teacher, 10, teacher_cache=TeacherCacheConfig(views=2, topk=topk))
    data = streamed(digits_dir)
    recorder = Recorder(topk)
    fit(module, data, epochs=3, callbacks=[recorder])
    # The same function on other batch compositions: float32 round-off only.
    assert recorder.max_error < 1e-5

    # What the student saw is view (epoch mod 2) of each sample, rebuilt here from its parts alone: the
    # decoder's crop seeded by (cache seed, view, position), then the seeded pad-crop offsets and flips.
    split = data.train_set
    raw = StreamingDataset(str(digits_dir / "train"))
    decoder = ImageDecoder(
        channels=1, image_size=8, random_resized_crop=True, seed=0, positions=split.positions.numpy()
    )
    table = ViewTable.sample(len(split), num_views=2, padding=1, hflip=True, seed=0)
    seen: dict[int, dict[int, torch.Tensor]] = {}
    for epoch, indices, images, labels in recorder.batches:
        assert torch.equal(labels, split.labels[indices])
        for i, image in zip(indices.tolist(), images, strict=True):
            seen.setdefault(epoch, {})[i] = image
    assert all(sorted(seen[epoch]) == list(range(len(split))) for epoch in (0, 1, 2))
    for i in range(0, len(split), 7):
        for epoch in (0, 1):
            decoded = decoder(raw[int(split.positions[i])], epoch)[0]
            expected = table.render(decoded[None], torch.tensor([i]), epoch, 8)[0]
            assert torch.equal(seen[epoch][i], expected), (epoch, i)
    assert all(torch.equal(seen[2][i], seen[0][i]) for i in seen[0])  # epoch 2 is view 0 again
    assert sum(not torch.equal(seen[1][i], seen[0][i]) for i in seen[0]) > len(split) // 2


@pytest.mark.parametrize("checkpoint", ["epoch_end", "step_on_the_last_batch"])
def test_resuming_at_an_epoch_boundary_attaches_the_outputs_of_the_view_streamed(
    digits_dir, teacher_spec, tmp_path, checkpoint
):
    # Lightning builds the resumed loader and fetches its first batch before its epoch counter
    # advances; the view must still be that of the new epoch, in the images and in the outputs.
    # 100 training samples, batch 32: 4 batches an epoch, so a checkpoint every 4 steps is on its last batch.
    saving = dict(save_last=True)
    if checkpoint == "step_on_the_last_batch":
        saving |= dict(every_n_train_steps=4, save_on_train_epoch_end=False)
    cache = dict(teacher_cache=TeacherCacheConfig("disk", views=2, directory=str(tmp_path / "cache")))

    def run(epochs: int, checkpoints: bool = False, resume: bool = False) -> tuple[DistillationModule, Recorder]:
        L.seed_everything(0)
        module, recorder = DistillationModule(STUDENT, teacher_spec, 10, **cache), Recorder()
        callbacks: list[L.Callback] = [recorder]
        if checkpoints:
            callbacks.append(ModelCheckpoint(dirpath=tmp_path / "ckpt", **saving))
        trainer = make_trainer(
            max_epochs=epochs, limit_val_batches=0, callbacks=callbacks, enable_checkpointing=checkpoints
        )
        trainer.fit(module, streamed(digits_dir), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt") if resume else None)
        return module, recorder

    straight, straight_batches = run(2)
    run(1, checkpoints=True)
    resumed, resumed_batches = run(2, checkpoints=True, resume=True)
    assert straight_batches.max_error < 1e-5 and resumed_batches.max_error < 1e-5
    second_epoch = [batch for batch in straight_batches.batches if batch[0] == 1]
    assert len(resumed_batches.batches) == len(second_epoch) == 4
    for (epoch, indices, images, _), (_, expected_indices, expected_images, _) in zip(
        resumed_batches.batches, second_epoch, strict=True
    ):
        assert epoch == 1 and torch.equal(indices, expected_indices) and torch.equal(images, expected_images)
    for name, tensor in straight.network.state_dict().items():
        assert torch.equal(resumed.network.state_dict()[name], tensor), name


def test_a_second_fit_reads_the_disk_cache_without_running_the_teacher(digits_dir, teacher_spec, tmp_path, monkeypatch):
    computed = count_calls(monkeypatch, _CacheFiller, "fill")
    crd = {"name": "crd", "weight": 0.8, "kwargs": {"feat_dim": 16, "num_negatives": 32}}
    options = dict(teacher_cache=TeacherCacheConfig("disk", views=2, topk=4, directory=str(tmp_path)))
    make = lambda: DistillationModule(  # noqa: E731
        STUDENT, teacher_spec, 10, losses=[{"name": "kd", "weight": 0.9}, crd], input_shape=(1, 8, 8), **options
    )
    fit(make(), streamed(digits_dir), epochs=2)
    assert len(computed) == 1
    module = make()
    forwards = count_calls(monkeypatch, module.teacher, "forward")
    recorder = Recorder(topk=4)
    fit(module, streamed(digits_dir), epochs=2, callbacks=[recorder])
    assert len(computed) == 1 and len(forwards) == len(recorder.batches)  # only the Recorder's own forwards
    assert recorder.max_error < 1e-5
    entries = sorted(p.name for p in tmp_path.iterdir())
    assert len(entries) == 1 and entries[0].endswith(".streamed")  # published, no partial entry left behind
    layout = json.loads((tmp_path / entries[0] / "entry.json").read_text())
    assert layout["topk_values"]["shape"] == [2, 100, 4] and layout["topk_indices"]["dtype"] == "int16"
    assert layout["feature.backbone"]["shape"][:2] == [2, 100]  # CRD's tapped teacher embedding


def test_a_changed_teacher_data_or_view_setting_computes_a_new_entry(digits_dir, teacher_spec, tmp_path, monkeypatch):
    computed = count_calls(monkeypatch, _CacheFiller, "fill")

    def run(cache_options: dict | None = None, teacher=teacher_spec, nudge: bool = False, **data_options) -> None:
        cache = TeacherCacheConfig(
            **{"storage": "disk", "views": 2, "directory": str(tmp_path)} | (cache_options or {})
        )
        module = DistillationModule(STUDENT, teacher, 10, teacher_cache=cache)
        if nudge:
            with torch.no_grad():
                next(module.teacher.network.parameters()).add_(0.01)
        fit(module, streamed(digits_dir, **data_options), limit_train_batches=1)

    run()
    run()
    assert len(computed) == 1
    changes = [
        dict(nudge=True),  # teacher weights
        dict(
            teacher=ModelSpec(
                teacher_spec.name, weights_path=teacher_spec.weights_path, kwargs=teacher_spec.kwargs, input_size=16
            )
        ),  # fmt: skip
        dict(samples_per_class=11),  # other samples
        dict(seed=3),  # another seeded split
        dict(image_size=10),
        dict(crop_padding=2),
        dict(random_resized_crop=False),
        dict(cache_options=dict(views=3)),
        dict(cache_options=dict(topk=3)),
    ]
    for count, change in enumerate(changes, start=2):
        run(**change)
        assert len(computed) == count, change


def test_unlabeled_transfer_set_and_crd_indices_work_with_the_cache(digits_dir, teacher_spec):
    losses = [
        {"name": "kd", "weight": 0.9},
        {"name": "crd", "weight": 0.8, "kwargs": {"feat_dim": 16, "num_negatives": 32}},
    ]
    module = DistillationModule(
        STUDENT, teacher_spec, 10, losses=losses, input_shape=(1, 8, 8), teacher_cache=TeacherCacheConfig(views=2)
    )
    data = streamed(digits_dir, samples_per_class=3, unlabeled="rest", return_indices=True, batch_size=256)
    recorder = Recorder()
    fit(module, data, callbacks=[recorder])
    assert recorder.max_error < 1e-5  # the logits and CRD's tapped teacher embedding
    indices = torch.cat([indices for _, indices, _, _ in recorder.batches])
    labels = torch.cat([labels for _, _, _, labels in recorder.batches])
    assert sorted(indices.tolist()) == list(range(len(data.train_set)))
    assert int((labels != IGNORE_LABEL).sum()) == 30 and int((labels == IGNORE_LABEL).sum()) == len(labels) - 30


def test_unsupported_combinations_are_refused_in_one_line(digits_dir, teacher_spec):
    shared = TeacherCacheConfig(share_backbone_features=True)
    module = DistillationModule(STUDENT, teacher_spec, 10, teacher_cache=shared)
    with pytest.raises(ConfigError, match="teacher_cache.share_backbone_features is for in-memory data sets"):
        fit(module, streamed(digits_dir))
    cache = TeacherCache(TeacherCacheConfig(), 10, 4.0, module.teacher)
    with pytest.raises(ConfigError, match="under DDP the teacher cache of a streamed data set needs .*storage: disk"):
        refuse_unsupported(cache, SimpleNamespace(world_size=2))
    # The streamed cache stores one teacher's outputs: several teachers weighted per sample must be refused.
    teachers, options = [teacher_spec, teacher_spec], {"ensemble": "ebkd"}
    per_teacher = DistillationModule(STUDENT, teachers, 10, teacher_cache=TeacherCacheConfig(), teacher_options=options)
    with pytest.raises(ConfigError, match="teacher cache of a streamed data set stores one teacher's outputs"):
        fit(per_teacher, streamed(digits_dir))


def test_a_streamed_distillation_with_a_logger_starts_and_logs_both_sets_of_hyper_parameters(
    digits_dir, teacher_spec, tmp_path
):
    # The distiller's and the DataModule's hyper-parameters are merged for the logger: no name may be in both.
    cache = TeacherCacheConfig("disk", views=2, directory=str(tmp_path / "teacher_cache"))
    module = DistillationModule(STUDENT, teacher_spec, 10, teacher_cache=cache)
    data = streamed(digits_dir, cache_dir=str(tmp_path / "chunks"))
    logger = CSVLogger(tmp_path / "logs", name="run", version=0)
    make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=logger).fit(module, data)
    logged = yaml.safe_load((tmp_path / "logs" / "run" / "version_0" / "hparams.yaml").read_text())
    assert logged["cache_dir"] == str(tmp_path / "chunks")
    assert logged["teacher_cache"]["directory"] == str(tmp_path / "teacher_cache")
    assert [p.suffix for p in (tmp_path / "teacher_cache").iterdir()] == [".streamed"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_with_the_cache_is_bit_identical(tmp_path, digits_dir, teacher_path):
    # 1,294 training images, batch 64: 21 batches per epoch; step 32 is mid-epoch 1, last checkpoint at 30.
    cache = {"teacher_cache": {"storage": "disk", "directory": str(tmp_path / "cache"), "views": 2}}
    config = {"data_dir": str(digits_dir), "teacher_path": teacher_path, "num_workers": 2, "module": cache}
    (expected,), (actual,) = straight_and_resumed(config, tmp_path, kill_at=32)
    assert expected["teacher_error"] < 1e-5 and actual["teacher_error"] < 1e-5
    # The resumed run trained on exactly the rest of epoch 1, in the same order (the uncached streaming path
    # is SIGKILLed and resumed under DDP in test_streaming.py).
    assert len(actual["seen"][1]) == 1294 - 9 * 64
    assert actual["seen"][1] == expected["seen"][1][-len(actual["seen"][1]) :]
    for key, tensor in expected["network"].items():
        assert torch.equal(actual["network"][key], tensor), key
    assert actual["metrics"] == expected["metrics"]


@pytest.mark.slow
def test_two_ddp_processes_fill_one_shared_cache_read_every_sample_and_resume_bit_identical(
    tmp_path, digits_dir, teacher_path
):
    # 640 training images over 2 ranks x batch 32: 10 steps per epoch; step 17 is mid-epoch 1, last checkpoint at
    # 15. The straight run computes the cache (each rank the samples LitData streams to it); the others read it.
    cache = {"teacher_cache": {"storage": "disk", "directory": str(tmp_path / "cache"), "views": 2}}
    config = {"data_dir": str(digits_dir), "teacher_path": teacher_path, "devices": 2, "batch_size": 32}
    config |= {"samples_per_class": 64, "module": cache}
    expected, actual = straight_and_resumed(config, tmp_path, kill_at=17, ranks=2)
    # One published entry: the killed and resumed runs read the straight run's cache, computing nothing.
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".streamed"]
    for epoch in (0, 1):
        assert sorted(expected[0]["seen"][epoch] + expected[1]["seen"][epoch]) == list(range(640))
    assert set(expected[0]["seen"][0]) != set(expected[0]["seen"][1])  # rank 0 got other samples in epoch 1
    for before, after in zip(expected, actual, strict=True):
        assert before["teacher_error"] < 1e-5 and after["teacher_error"] < 1e-5
        assert len(after["seen"][1]) == 5 * 32 and after["seen"][1] == before["seen"][1][-5 * 32 :]
        for key, tensor in before["network"].items():
            assert torch.equal(after["network"][key], tensor), key


@pytest.mark.slow
def test_a_rank_failing_to_fill_the_cache_stops_every_rank_with_its_error(tmp_path, digits_dir, teacher_path):
    # Rank 1 fails before writing a row; rank 0 fills its share and would wait for rank 1 at the next
    # synchronisation forever: it must raise rank 1's error instead (a hang fails on the timeout).
    cache = {"teacher_cache": {"storage": "disk", "directory": str(tmp_path / "cache"), "views": 2}}
    config = {"data_dir": str(digits_dir), "teacher_path": teacher_path, "devices": 2, "batch_size": 10}
    config |= {"samples_per_class": 10, "module": cache, "root": str(tmp_path / "run"), "fail_fill_on_rank": 1}
    failed = run_helper(config, timeout=240)
    assert failed.returncode != 0
    expected = "InvalidDataError: cannot decode a stored image (injected on rank 1)"
    assert (tmp_path / "run" / "error0.txt").read_text() == expected  # rank 0 only knows it from rank 1
    if (tmp_path / "run" / "error1.txt").exists():  # unless Lightning stopped rank 1 first, on rank 0's error
        assert (tmp_path / "run" / "error1.txt").read_text() == expected
    assert not any(p.suffix == ".streamed" for p in (tmp_path / "cache").iterdir())  # nothing published
