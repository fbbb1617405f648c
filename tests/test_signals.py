"""SIGTERM and SIGINT end a fit as an outcome: a resumable ``last.ckpt``, the lock released, exit 128 + signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kd_lightning.cli import main
from kd_lightning.run_lock import lock_path

REPO = Path(__file__).resolve().parents[1]


def _config(root: Path, signal_at: dict | None = None, max_epochs: int = 2, save_last: bool = False) -> Path:
    # With save_last, every epoch end writes last.ckpt (a monitored one would skip epochs that do not improve).
    checkpoint = {"dirpath": str(root / "run"), "filename": "best", "enable_version_counter": False}
    checkpoint |= {"save_last": True} if save_last else {"monitor": "val/acc", "mode": "max"}
    callbacks: list[dict] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": checkpoint}]
    if signal_at is not None:
        callbacks.append({"class_path": "tests._signal_helpers.SignalAt", "init_args": signal_at})
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": max_epochs,
            "deterministic": True,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(root / "run"),
            "callbacks": callbacks,
        },
        "model": {
            "class_path": "kd_lightning.modules.FrozenBackboneFinetuner",
            "init_args": {"network": {"name": "small_cnn", "kwargs": {"width": 4}}, "strategy": "full"},
        },
        "data": {"class_path": "kd_lightning.data.DigitsDataModule", "init_args": {"batch_size": 64}},
    }
    path = root / f"config_{len(list(root.glob('config_*.yaml')))}.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "kd_lightning.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def _interrupted_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.mark.slow  # three fits in child processes
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_fit_exits_non_zero_and_resumes_exactly(tmp_path, signum):
    """Stopped mid-epoch 1 (step 30 of 2 × 23), then resumed with --ckpt_path last: the weights of an
    uninterrupted run, bit for bit."""
    straight = _cli("fit", "--config", str(_config(tmp_path / "straight", save_last=True)))
    assert straight.returncode == 0, straight.stderr[-3000:]

    root = tmp_path / "stopped"
    stopped = _cli("fit", "--config", str(_config(root, {"step": 30, "signum": int(signum)}, save_last=True)))
    assert stopped.returncode == 128 + signum, stopped.stderr[-3000:]
    line = _interrupted_line(stopped)
    assert f"by {signum.name}" in line and "--ckpt_path last" in line and str(root / "run" / "last.ckpt") in line
    assert torch.load(root / "run" / "last.ckpt", weights_only=True)["global_step"] == 31
    assert not lock_path(root / "run").exists()

    resumed = _cli("fit", "--config", str(_config(root, save_last=True)), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = torch.load(tmp_path / "straight" / "run" / "last.ckpt", weights_only=True)
    actual = torch.load(root / "run" / "last.ckpt", weights_only=True)
    assert actual["global_step"] == expected["global_step"] == 42
    expected, actual = expected["state_dict"], actual["state_dict"]
    assert expected.keys() == actual.keys()
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


def test_sigterm_without_save_last_still_leaves_last_ckpt(tmp_path, capsys):
    """In this process: a config that keeps only best.ckpt still gets a last.ckpt to resume from, the
    lock is released, and the resumed run's end replaces that last.ckpt."""
    config = str(_config(tmp_path, {"step": 3, "signum": int(signal.SIGTERM)}, max_epochs=1))
    with pytest.raises(SystemExit) as stopped:
        main(["fit", "--config", config, "--trainer.limit_train_batches", "5"])
    assert stopped.value.code == 143
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert line == (
        f"interrupted: fit interrupted by SIGTERM: {tmp_path / 'run' / 'last.ckpt'} was saved; "
        "resume with the same command and --ckpt_path last"
    )
    checkpoint = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 4 and checkpoint["epoch"] == 0
    assert not (tmp_path / "run" / "best.ckpt").exists()  # no validation ran: nothing else was written
    assert not lock_path(tmp_path / "run").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers put back

    main(["fit", "--config", config, "--trainer.limit_train_batches", "8", "--ckpt_path", "last"])
    # The finished run's state, not the interrupted one's, is what a later --ckpt_path last finds.
    assert torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)["global_step"] == 8


@pytest.mark.slow  # a fit in a child process
def test_a_second_ctrl_c_stops_at_once_with_status_130(tmp_path):
    config = _config(tmp_path, {"step": 2, "signum": int(signal.SIGINT), "times": 2}, max_epochs=1)
    result = _cli("fit", "--config", str(config), "--trainer.limit_train_batches", "5")
    assert result.returncode == 130, result.stderr[-3000:]
    assert "fit interrupted by SIGINT" in _interrupted_line(result)
    assert not (tmp_path / "run" / "last.ckpt").exists()  # stopped mid-step: no state to resume from
    assert not lock_path(tmp_path / "run").exists()
