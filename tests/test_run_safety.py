"""Resumes that are the run asked for, one live run per folder, no litter from killed saves, no nan results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kd_lightning.cache.store import CacheStore
from kd_lightning.checkpointing import atomic_torch_save, check_finite_metrics, remove_temp_files
from kd_lightning.cli import lightning_main, main
from kd_lightning.errors import InvalidDataError, NonFiniteError, RunFolderBusyError
from kd_lightning.run_lock import RunFolderLock, lock_path, read_owner
from tests._bad_input_helpers import malicious_torch_file, snapshot, user_error_line

SCRATCH = {
    "class_path": "kd_lightning.modules.FrozenBackboneFinetuner",
    "init_args": {"network": {"name": "small_cnn", "kwargs": {"width": 4}}, "strategy": "full"},
}


def _config(root: Path, save_last: bool = True) -> Path:
    checkpoint = {"dirpath": str(root / "run"), "filename": "best", "monitor": "val/acc", "mode": "max"}
    checkpoint |= {"enable_version_counter": False, "save_last": save_last}
    config = {
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "limit_test_batches": 1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root / "run"),
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": checkpoint}],
        },
        "model": SCRATCH,
        "data": {"class_path": "kd_lightning.data.DigitsDataModule"},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trained")
    main(["fit", "--config", str(_config(root))])
    return root


def test_ckpt_path_last_resumes_the_last_checkpoint(trained, tmp_path):
    root = tmp_path / "copy"
    root.mkdir()
    (root / "run").mkdir()
    for name in ("last.ckpt", "best.ckpt"):
        (root / "run" / name).write_bytes((trained / "run" / name).read_bytes())
    config = _config(root)
    main(["fit", "--config", str(config), "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert torch.load(root / "run" / "last.ckpt", weights_only=True)["epoch"] == 1  # the second epoch ran


def test_use_checkpoint_config_takes_the_checkpoints_model_settings(trained):
    config = str(trained / "config.yaml")
    args = ["test", "--config", config, "--model.init_args.label_smoothing", "0.3", "--ckpt_path"]
    args += [str(trained / "run" / "best.ckpt"), "--use_checkpoint_config", "true"]
    cli = lightning_main(args)
    assert cli.model.label_smoothing == 0.0  # the checkpoint's, not the override


def test_a_live_run_keeps_its_folder(trained, capsys):
    """A second run into a folder a live process holds is refused; nothing of the first is touched."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = lock_path(trained / "run")
        lock.write_text(f"{sleeper.pid} {os.uname().nodename}\n")
        before = snapshot(trained / "run")
        line = user_error_line(capsys, ["fit", "--config", str(trained / "config.yaml")])
        assert f"is being written by another run (pid {sleeper.pid}" in line
        assert snapshot(trained / "run") == before and lock.read_text().startswith(str(sleeper.pid))
    finally:
        sleeper.kill()
        sleeper.wait()
        lock_path(trained / "run").unlink(missing_ok=True)


def test_a_stale_lock_is_taken_over_and_released(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = tmp_path / "run"
    folder.mkdir()
    lock_path(folder).write_text(f"{finished.stdout.strip()} {os.uname().nodename}\n")
    with RunFolderLock([folder]):
        assert read_owner(lock_path(folder)) == (os.getpid(), os.uname().nodename)
        with pytest.raises(RunFolderBusyError, match="being written by another run"), RunFolderLock([folder]):
            pass  # this process is alive: its own lock is not stale either
    assert not lock_path(folder).exists()


def test_a_lock_from_another_host_is_never_taken(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    lock_path(folder).write_text("1 some-other-machine\n")
    with pytest.raises(RunFolderBusyError, match="pid 1 on some-other-machine"), RunFolderLock([folder]):
        pass
    assert lock_path(folder).exists()


def test_temp_files_of_a_killed_save_are_removed(tmp_path):
    leftovers = [tmp_path / ".last.ckpt.k1ll3d.tmp", tmp_path / ".best.ckpt.zz9.tmp"]
    for path in leftovers:
        path.write_bytes(b"\0" * 1000)
    keep = tmp_path / "notes.tmp"
    keep.write_text("not ours")
    atomic_torch_save({"x": torch.ones(1)}, tmp_path / "last.ckpt")
    assert not leftovers[0].exists() and leftovers[1].exists()  # a save removes its own file's leftovers
    with RunFolderLock([tmp_path]):
        pass
    assert not leftovers[1].exists() and keep.exists()  # taking the folder removes every leftover
    assert remove_temp_files(tmp_path / "missing") == []


@pytest.mark.slow  # starts a Python that imports torch and Lightning
def test_a_killed_save_leaves_no_litter_after_the_next_start(tmp_path):
    """SIGKILL a process in the middle of atomic_torch_save; the next run's start cleans up."""
    script = (
        "import os, signal, torch\n"
        "from kd_lightning import checkpointing\n"
        "def die(*a, **k): os.kill(os.getpid(), signal.SIGKILL)\n"
        "checkpointing.os.replace = die\n"
        f"checkpointing.atomic_torch_save({{'w': torch.zeros(1000)}}, {str(tmp_path / 'last.ckpt')!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    assert subprocess.run([sys.executable, "-c", script], env=env).returncode == -9
    assert len(list(tmp_path.glob(".last.ckpt.*.tmp"))) == 1
    with RunFolderLock([tmp_path]):
        pass
    assert list(tmp_path.iterdir()) == []


def test_non_finite_metrics_are_an_error():
    check_finite_metrics({"test/acc": torch.tensor(0.5), "test/loss": 1.0}, "test")
    with pytest.raises(NonFiniteError, match=r"test produced non-finite metrics \(test/loss=nan\)"):
        check_finite_metrics({"test/acc": torch.tensor(0.5), "test/loss": torch.tensor(float("nan"))}, "test")


def test_a_malicious_teacher_cache_file_is_refused_unrun(tmp_path):
    store = CacheStore("disk", tmp_path / "cache")
    store.put("teacher-abc", {"logits": torch.zeros(4, 10)})
    assert store.get("teacher-abc")["logits"].shape == (4, 10)
    marker = tmp_path / "payload_ran"
    malicious_torch_file(store.path("teacher-abc"), marker, {"logits": torch.zeros(4, 10)})
    with pytest.raises(InvalidDataError, match=r"cannot read cache file .*teacher-abc\.pt.*refused unread"):
        store.get("teacher-abc")
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"garbage"])
def test_an_empty_or_foreign_cache_file_is_refused(tmp_path, content):
    store = CacheStore("disk", tmp_path)
    store.path("k").write_bytes(content)
    with pytest.raises(InvalidDataError, match="delete it to rebuild"):
        store.get("k")


def test_a_malicious_teacher_cache_file_ends_the_run_unrun(trained, tmp_path, capsys):
    """Through the CLI: a cached teacher entry replaced by a crafted file stops the next run, running nothing."""
    teacher = {"name": "small_cnn", "kwargs": {"width": 4}, "weights_path": str(trained / "run" / "best.ckpt")}
    init_args = {"student": {"name": "small_cnn", "kwargs": {"width": 2}}, "teacher": teacher}
    init_args |= {"teacher_cache": {"storage": "disk", "directory": str(tmp_path / "cache")}}
    model = {"class_path": "kd_lightning.modules.DistillationModule", "init_args": init_args}
    config = yaml.safe_load(_config(tmp_path).read_text()) | {"model": model}
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    (entry,) = (tmp_path / "cache").glob("*.pt")
    marker = tmp_path / "payload_ran"
    malicious_torch_file(entry, marker, torch.load(entry, weights_only=True))
    line = user_error_line(capsys, ["fit", "--config", str(path)])
    assert f"cannot read cache file {entry}" in line and "refused unread" in line
    assert not marker.exists()
