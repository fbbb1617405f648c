"""The streaming DataModule behaves like the in-memory ones: split, few-shot, indices, transforms, resume, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from benchmarks.streaming_loader import make_jpeg_folder
from kd_lightning.cli import main as cli_main
from kd_lightning.data import DigitsDataModule, StreamingImageDataModule, streaming
from kd_lightning.data.batch import IGNORE_LABEL, Batch
from kd_lightning.data.decoding import ImageDecoder, inception_crop
from kd_lightning.data.prepare import METADATA_FILE, prepare_dataset
from kd_lightning.errors import ConfigError, DataError
from tests._resume_helpers import make_teacher
from tests._streaming_runs import run_helper, straight_and_resumed

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn digits prepared as LitData chunks (train in several chunks, and test)."""
    out = tmp_path_factory.mktemp("stream_digits")
    prepare_dataset("digits", str(out), chunk_bytes="64KB", num_workers=2, verbose=False)
    prepare_dataset("digits", str(out), split="test", verbose=False)
    return out


@pytest.fixture(scope="module")
def jpeg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("jpegs")
    make_jpeg_folder(root / "folder", 40, sizes=(20, 40))
    prepare_dataset(str(root / "folder"), str(root / "prepared"), verbose=False)
    return root


def _epoch(loader) -> list[Batch]:
    return list(loader)


def test_prepare_stores_labels_and_lossless_images(digits_dir):
    metadata = json.loads((digits_dir / "train" / METADATA_FILE).read_text())
    memory = DigitsDataModule().load_split("train")
    assert metadata["labels"] == memory.labels.tolist()
    assert metadata["class_names"] == DigitsDataModule.class_names and metadata["channels"] == 1
    data = StreamingImageDataModule(str(digits_dir), val_fraction=0.0, num_workers=0, return_indices=True)
    data.setup("fit")
    for batch in _epoch(data.train_dataloader()):
        assert torch.equal(batch.images, memory.images[batch.indices])
        assert torch.equal(batch.labels, memory.labels[batch.indices])


def test_split_and_validation_set_equal_the_in_memory_modules(digits_dir):
    memory = DigitsDataModule(seed=3)
    memory.setup("fit")
    data = StreamingImageDataModule(str(digits_dir), seed=3, num_workers=0, batch_size=50)
    data.setup("fit")
    assert len(data.train_set) == len(memory.train_set) and len(data.val_set) == len(memory.val_set)
    assert torch.equal(data.train_set.labels, memory.train_set.labels)
    val = _epoch(data.val_dataloader())  # not shuffled: the in-memory order
    assert torch.equal(torch.cat([batch.images for batch in val]), memory.val_set.images)
    assert torch.equal(torch.cat([batch.labels for batch in val]), memory.val_set.labels)


def test_each_epoch_sees_every_training_sample_once_with_its_index(digits_dir):
    memory = DigitsDataModule(samples_per_class=7)
    memory.setup("fit")
    data = StreamingImageDataModule(str(digits_dir), samples_per_class=7, num_workers=2, return_indices=True)
    data.setup("fit")
    loader = data.train_dataloader()
    orders = []
    for _ in range(2):
        batches = _epoch(loader)
        indices = torch.cat([b.indices for b in batches])
        assert sorted(indices.tolist()) == list(range(70))
        assert torch.equal(torch.cat([b.images for b in batches]), memory.train_set.images[indices])
        assert torch.equal(torch.cat([b.labels for b in batches]), memory.train_set.labels[indices])
        orders.append(indices)
    assert not torch.equal(orders[0], orders[1])  # reshuffled each epoch
    assert torch.bincount(data.train_set.labels).tolist() == [7] * 10


def test_unlabeled_transfer_set_matches_the_in_memory_module(digits_dir):
    memory = DigitsDataModule(samples_per_class=7, unlabeled="rest")
    memory.setup("fit")
    data = StreamingImageDataModule(
        str(digits_dir), samples_per_class=7, unlabeled="rest", num_workers=0, return_indices=True
    )
    data.setup("fit")
    assert torch.equal(data.train_set.labels, memory.train_set.labels)
    assert int((data.train_set.labels != IGNORE_LABEL).sum()) == 70 and len(data.train_set) == len(memory.train_set)
    batches = _epoch(data.train_dataloader())
    indices = torch.cat([b.indices for b in batches])
    assert torch.equal(torch.cat([b.labels for b in batches]), memory.train_set.labels[indices])
    assert int((torch.cat([b.labels for b in batches]) == IGNORE_LABEL).sum()) == len(memory.train_set) - 70


def test_samples_per_class_beyond_a_class_is_refused(digits_dir):
    data = StreamingImageDataModule(str(digits_dir), samples_per_class=500, num_workers=0)
    with pytest.raises(ValueError, match="exceeds the images of classes"):
        data.setup("fit")


def test_batches_are_converted_and_augmented_on_the_device_hook(digits_dir):
    data = StreamingImageDataModule(str(digits_dir), image_size=12, num_workers=0, batch_size=8)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (8, 1, 12, 12)  # resized in the worker
    converted = data.on_after_batch_transfer(batch, 0)
    assert converted.images.dtype == torch.float32 and converted.images.shape == (8, 1, 12, 12)
    assert torch.equal(converted.images, batch.images.float() / 255) and torch.equal(converted.labels, batch.labels)


def test_jpeg_folder_streams_at_one_size_with_seeded_random_resized_crops(jpeg_dir):
    data = StreamingImageDataModule(str(jpeg_dir / "prepared"), image_size=16, random_resized_crop=True, num_workers=0)
    data.setup("fit")
    assert data.num_classes == 10 and len(data.train_set) == 36
    assert next(iter(data.train_dataloader())).images.shape[1:] == (3, 16, 16)
    assert next(iter(data.val_dataloader())).images.shape[1:] == (3, 16, 16)
    item = {"image": next((jpeg_dir / "folder").rglob("*.jpg")).read_bytes(), "label": 0, "index": 5}
    decoder = ImageDecoder(channels=3, image_size=16, random_resized_crop=True, seed=1)
    first = decoder(item, epoch=1)[0]
    assert torch.equal(first, decoder(item, epoch=1)[0])  # a crop depends on (seed, epoch, sample) only
    assert not torch.equal(first, decoder(item, epoch=2)[0])


def test_inception_crop_stays_inside_the_image():
    import random

    rng = random.Random(0)
    for _ in range(200):
        top, left, h, w = inception_crop(30, 50, rng)
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 50 and h > 0 and w > 0


def test_a_short_fit_runs_through_the_trainer(digits_dir):
    from kd_lightning.modules import FrozenBackboneFinetuner

    module = FrozenBackboneFinetuner({"name": "small_cnn", "kwargs": {"width": 4}}, 10, strategy="full")
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, StreamingImageDataModule(str(digits_dir), num_workers=0, batch_size=32))
    assert trainer.global_step == 3 and "val/acc" in trainer.callback_metrics


def test_missing_or_mismatched_data_is_refused_loudly(tmp_path, digits_dir):
    with pytest.raises(DataError, match="prepare the data set first"):
        StreamingImageDataModule(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="already exists"):
        prepare_dataset("digits", str(digits_dir), split="test", verbose=False)
    with pytest.raises(DataError, match="neither a folder nor one of"):
        prepare_dataset("imagenet", str(tmp_path / "out"), verbose=False)
    with pytest.raises(ConfigError, match="no validation split"):
        prepare_dataset("digits", str(tmp_path / "out"), split="val", verbose=False)


def test_prepare_command_line(tmp_path, capsys):
    cli_main(["prepare", "digits", str(tmp_path), "--split", "test", "--verbose", "false"])
    assert (tmp_path / "test" / METADATA_FILE).is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["prepare", "digits", str(tmp_path), "--split", "test", "--verbose", "false"])
    assert exit_info.value.code == 2 and "already exists" in capsys.readouterr().err


def test_the_feature_cache_refuses_a_streamed_set_in_one_line(digits_dir):
    # The teacher cache streams (tests/test_streaming_teacher_cache.py); the feature cache needs every image.
    from kd_lightning.modules import FrozenBackboneFinetuner

    backbone = {"name": "small_cnn", "kwargs": {"width": 4}}
    module = FrozenBackboneFinetuner(backbone, 10, strategy="linear_probe", feature_cache=True)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match="needs the whole data set in memory"):
        trainer.fit(module, StreamingImageDataModule(str(digits_dir), num_workers=0))


def test_a_ddp_world_that_would_drop_samples_is_refused_unless_accepted(digits_dir, monkeypatch):
    monkeypatch.setattr(streaming, "world_size", lambda: 2)
    data = StreamingImageDataModule(str(digits_dir), batch_size=32, num_workers=0, samples_per_class=65)
    data.setup("fit")
    with pytest.raises(ConfigError, match=r"10 of the 650 training samples .* set drop_remainder: true"):
        data.train_dataloader()
    data.drop_remainder = True
    assert data.train_dataloader() is data.train_loader
    whole = StreamingImageDataModule(str(digits_dir), batch_size=32, num_workers=0, samples_per_class=64)
    whole.setup("fit")
    assert whole.train_dataloader() is whole.train_loader  # 640 = 10 global batches of 2 x 32


@pytest.mark.slow
def test_benchmark_smoke_mode_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "benchmarks.streaming_loader", "--smoke", "--work_dir", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "streaming_split / folder_tvio" in done.stdout and "10x/1x pss" in done.stdout


@pytest.mark.slow
def test_ddp_refuses_a_training_set_that_leaves_a_partial_global_batch(tmp_path, digits_dir, teacher_path):
    # 650 training images over 2 ranks x batch 32: LitData would leave 10 out of every epoch.
    config = {"root": str(tmp_path), "data_dir": str(digits_dir), "teacher_path": teacher_path, "devices": 2}
    refused = run_helper({**config, "batch_size": 32, "samples_per_class": 65, "max_epochs": 1})
    assert refused.returncode != 0
    assert "10 of the 650 training samples would be left out of every epoch" in refused.stderr
    assert not (tmp_path / "rank0.pt").exists()

    accepted = run_helper({**config, "batch_size": 32, "samples_per_class": 65, "drop_remainder": True})
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    left_out = []
    for epoch in (0, 1):
        first, second = ranks[0]["seen"][epoch], ranks[1]["seen"][epoch]
        assert len(first) == len(second) == 320
        assert len(set(first + second)) == 640 and set(first + second) <= set(range(650))
        left_out.append(set(range(650)) - set(first + second))
    assert left_out[0] != left_out[1]  # the order is reshuffled, so another 10 are left out each epoch


@pytest.fixture(scope="module")
def ddp_resume_runs(tmp_path_factory: pytest.TempPathFactory, digits_dir) -> tuple[list[dict], list[dict]]:
    """Two-process DDP fits, straight and SIGKILLed mid-epoch then resumed: each rank's results, per run."""
    # 640 training images over 2 ranks x batch 32: 10 steps per epoch; step 17 is mid-epoch 1, last checkpoint at 15.
    root = tmp_path_factory.mktemp("ddp_resume")
    make_teacher(root / "teacher.pt")
    config = {"data_dir": str(digits_dir), "teacher_path": str(root / "teacher.pt"), "devices": 2, "batch_size": 32}
    config["samples_per_class"] = 64
    return straight_and_resumed(config, root, kill_at=17, ranks=2)


@pytest.mark.slow
def test_two_ddp_processes_see_every_sample_exactly_once_per_epoch(ddp_resume_runs):
    # The straight run: 640 training images over 2 ranks x 2 workers x batch 32, no partial global batch.
    first, second = ddp_resume_runs[0]
    assert first["seen"].keys() == {0, 1}
    for epoch in (0, 1):
        assert len(first["seen"][epoch]) == len(second["seen"][epoch]) == 320
        assert sorted(first["seen"][epoch] + second["seen"][epoch]) == list(range(640))
    assert first["seen"][0] != first["seen"][1]


@pytest.mark.slow
def test_two_ddp_processes_resume_mid_epoch_on_the_same_batches_bit_identical(ddp_resume_runs):
    for expected, actual in zip(*ddp_resume_runs, strict=True):
        # Each rank trained on exactly the rest of its share of epoch 1, in the same order.
        assert len(actual["seen"][1]) == 5 * 32
        assert actual["seen"][1] == expected["seen"][1][-len(actual["seen"][1]) :]
        for key, tensor in expected["network"].items():
            assert torch.equal(actual["network"][key], tensor), key
        # The epoch's training accuracy is the next test's; everything else logged is identical.
        training_accuracy = {key for key in expected["metrics"] if key.startswith("train/acc")}
        assert training_accuracy
        for key, value in expected["metrics"].items():
            if key not in training_accuracy:
                assert actual["metrics"][key] == value, key


@pytest.mark.slow
def test_two_ddp_processes_resume_mid_epoch_with_the_same_epoch_training_accuracy(ddp_resume_runs):
    for expected, actual in zip(*ddp_resume_runs, strict=True):
        assert {k: v for k, v in actual["metrics"].items() if k.startswith("train/acc")} == {
            k: v for k, v in expected["metrics"].items() if k.startswith("train/acc")
        }
