"""Checkpoints are data: pickled code is refused unrun, and a failed write never clobbers a checkpoint."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import lightning as L
import pytest
import torch

from kd_lightning.checkpointing import SafeCheckpointIO, atomic_torch_save
from kd_lightning.cli import use_safe_checkpoint_io
from kd_lightning.errors import InvalidDataError
from kd_lightning.models import create_model
from kd_lightning.models.weights import CheckpointError, load_weights, read_state_dict
from kd_lightning.safe_load import safe_torch_load

PACKAGE = Path(__file__).resolve().parents[1] / "kd_lightning"


class _Payload:
    """Unpickling this calls ``os.mkdir(marker)``: a stand-in for any code an attacker wants run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.fixture
def malicious_checkpoint(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.ckpt"
    state = create_model("small_cnn", 10, width=4).state_dict()
    torch.save({"state_dict": state, "hyper_parameters": {"x": _Payload(marker)}}, path)
    # The file is really malicious: an unsafe load runs the payload.
    torch.load(path, weights_only=False)
    assert marker.is_dir()
    marker.rmdir()
    return path, marker


def test_load_weights_refuses_a_pickled_payload_without_running_it(malicious_checkpoint):
    path, marker = malicious_checkpoint
    with pytest.raises(CheckpointError, match="cannot read"):
        load_weights(create_model("small_cnn", 10, width=4), path)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["env", "argument"])
def test_resume_refuses_a_pickled_payload_without_running_it(malicious_checkpoint, tmp_path, monkeypatch, how):
    """Plain Lightning would run the payload in both cases: torch's default is overridable."""
    from kd_lightning.data import DigitsDataModule
    from kd_lightning.modules import FrozenBackboneFinetuner

    path, marker = malicious_checkpoint
    kwargs = {"weights_only": False} if how == "argument" else {}
    if how == "env":
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    use_safe_checkpoint_io(trainer)
    module = FrozenBackboneFinetuner({"name": "small_cnn", "kwargs": {"width": 4}}, 10, strategy="full")
    with pytest.raises(CheckpointError, match="holds a pickled posix.mkdir, refused unread|weights_only=True only"):
        trainer.fit(module, DigitsDataModule(), ckpt_path=path, **kwargs)
    assert not marker.exists()


def test_safe_checkpoint_io_refuses_weights_only_false(malicious_checkpoint):
    path, marker = malicious_checkpoint
    with pytest.raises(CheckpointError, match="weights_only=True only"):
        SafeCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()


def test_every_torch_load_in_the_package_is_weights_only():
    calls = []
    for file in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "load"):
                calls.append((file.name, {k.arg: ast.unparse(k.value) for k in node.keywords}))
    assert calls, "no torch.load found: the check would be vacuous"
    assert all(kw.get("weights_only") == "True" for _, kw in calls), calls


def test_the_package_calls_torch_load_in_one_place():
    """One wrapper (``safe_torch_load``) owns the safe load and its one-line error."""
    callers = {
        file.relative_to(PACKAGE).as_posix()
        for file in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(file.read_text()))
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load"
    }
    assert callers == {"safe_load.py"}


def test_safe_torch_load_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "entry.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(InvalidDataError, match=r"^cannot read cache file .*entry\.pt: .*; delete it$"):
        safe_torch_load(path, "cache file", "delete it", error=InvalidDataError)


def test_atomic_save_leaves_the_old_checkpoint_when_a_write_fails(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": torch.tensor(1)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")  # fails after part of the file was written

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_torch_save({"big": torch.zeros(100_000), "bad": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["step"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left behind
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_safe_checkpoint_io_round_trip_and_truncated_file(tmp_path):
    io = SafeCheckpointIO()
    path = tmp_path / "sub" / "a.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 2}, path)
    assert io.load_checkpoint(path)["epoch"] == 2
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        io.load_checkpoint(path)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        io.load_checkpoint(tmp_path / "missing.ckpt")


def test_read_state_dict_reports_truncated_and_corrupt_files(tmp_path):
    good = tmp_path / "w.pt"
    torch.save(create_model("small_cnn", 10, width=4).state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:-200])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    for path in (truncated, corrupt):
        with pytest.raises(CheckpointError, match="truncated, corrupt"):
            read_state_dict(path)
    with pytest.raises(CheckpointError, match="weights file not found"):
        read_state_dict(tmp_path / "nope.pt")


def test_checkpoint_hyperparameters_are_plain_types(tmp_path):
    """What the modules store loads under weights_only=True (no dataclasses, no callables)."""
    from kd_lightning.modules import DistillationModule

    module = DistillationModule({"name": "small_cnn", "kwargs": {"width": 4}}, "small_cnn", num_classes=10)
    path = tmp_path / "hp.pt"
    torch.save(dict(module.hparams), path)
    assert torch.load(path, weights_only=True)["teacher"]["name"] == "small_cnn"
