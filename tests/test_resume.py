"""Exact resume: a fit SIGKILLed mid-epoch and resumed from ``last`` ends where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from kd_lightning.callbacks.resume import collect_rng_states, set_rng_states
from kd_lightning.data import DigitsDataModule
from kd_lightning.data.sampler import ResumableRandomSampler
from kd_lightning.errors import ConfigError
from kd_lightning.modules import FrozenBackboneFinetuner

DKD_WARMUP = {"name": "dkd", "kwargs": {"warmup_epochs": 3}}
REPO = Path(__file__).resolve().parents[1]
HELPER = REPO / "tests" / "_resume_helpers.py"


def test_sampler_order_depends_on_seed_and_epoch_only():
    sampler = ResumableRandomSampler(50, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(50))
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(ResumableRandomSampler(50, seed=4)) != first


def test_sampler_skips_consumed_samples_once():
    sampler = ResumableRandomSampler(50, seed=3)
    sampler.set_epoch(2)
    full = list(sampler)
    restored = ResumableRandomSampler(50, seed=999)
    restored.load_state_dict(sampler.state_dict(consumed=20))
    restored.set_epoch(2)  # Lightning sets the same epoch again on resume: the skip stays
    assert list(restored) == full[20:]
    assert list(restored) == full  # the next pass is a whole epoch again
    restored.load_state_dict(sampler.state_dict(consumed=20))
    restored.set_epoch(3)  # resumed at an epoch end: the new epoch starts from its first sample
    assert len(list(restored)) == 50


def test_sampler_refuses_another_data_set_size():
    with pytest.raises(ValueError, match="had 50 images"):
        ResumableRandomSampler(40, seed=0).load_state_dict(ResumableRandomSampler(50, seed=0).state_dict())


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    path = tmp_path / "rng.pt"
    torch.save(collect_rng_states(), path)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    set_rng_states(torch.load(path, weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def _fit(tmp_path: Path, ckpt_path: str | None = None, **module_kwargs) -> L.Trainer:
    L.seed_everything(0)
    module = FrozenBackboneFinetuner(
        {"name": "small_cnn", "kwargs": {"width": 4}}, 10, strategy="full", **module_kwargs
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DigitsDataModule(batch_size=32), ckpt_path=ckpt_path)
    return trainer


def test_resume_from_a_checkpoint_of_another_config_is_refused(tmp_path):
    trainer = _fit(tmp_path)
    ckpt = trainer.checkpoint_callback.best_model_path
    with pytest.raises(ConfigError, match=r"model.label_smoothing: checkpoint 0.0, config 0.1"):
        _fit(tmp_path / "again", ckpt_path=ckpt, label_smoothing=0.1)


def _run(root: Path, config: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cfg = json.dumps({"root": str(root), **config})
    return subprocess.run([sys.executable, str(HELPER), cfg], capture_output=True, text=True, env=env, cwd=REPO)


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [
        {"kind": "finetuner", "strategy": "full"},
        {"kind": "finetuner", "strategy": "linear_probe"},
        # Killed in epoch 1, after the backbone was unfrozen at its start.
        {"kind": "finetuner", "strategy": "freeze_then_unfreeze"},
        {"kind": "distiller", "strategy": None},
        # DKD's warm-up factor depends on the epoch, which a mid-epoch restart must still pass in.
        {"kind": "distiller", "strategy": "dkd_warmup", "module": {"losses": [{"name": "ce"}, DKD_WARMUP]}},
        # An unlabeled transfer set served through the teacher cache (two fixed views).
        {
            "kind": "distiller",
            "strategy": "unlabeled_cached",
            "module": {"teacher_cache": {"views": 2}},
            "data": {"samples_per_class": 5, "unlabeled": "rest"},
        },
    ],
    ids=lambda c: c["strategy"] or c["kind"],
)
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, config):
    from tests._resume_helpers import make_teacher

    make_teacher(tmp_path / "teacher.pt")
    # 21 batches per epoch: step 32 is mid-epoch 1; the last checkpoint is at step 30.
    config = {**config, "teacher_path": str(tmp_path / "teacher.pt"), "max_epochs": 2}
    straight = _run(tmp_path / "straight", config)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = _run(tmp_path / "killed", {**config, "kill_at": 32})
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = _run(tmp_path / "killed", {**config, "resume": True})
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected = torch.load(tmp_path / "straight" / "final.pt", weights_only=True)
    actual = torch.load(tmp_path / "killed" / "final.pt", weights_only=True)
    for key, tensor in expected["network"].items():
        assert torch.equal(actual["network"][key], tensor), key
    assert actual["metrics"] == expected["metrics"]
    for key in ("param_groups", "lrs", "backbone_trainable"):
        assert actual[key] == expected[key], key
