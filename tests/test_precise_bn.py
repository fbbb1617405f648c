"""Precise BatchNorm: recomputed statistics close the eval/batch-statistics gap; the callbacks around it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from kd_lightning.callbacks.precise_bn import PreciseBatchNorm
from kd_lightning.callbacks.teacher_check import TeacherCheck, accuracy
from kd_lightning.data import DigitsDataModule
from kd_lightning.data.calibration import training_batches
from kd_lightning.errors import ConfigError
from kd_lightning.models import ModelSpec
from kd_lightning.models.batchnorm import batch_statistics, recalibrate_batchnorm
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner, TeacherOptions
from tests.conftest import TEACHER_SPEC, make_trainer


def _digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dm = DigitsDataModule(batch_size=64, val_fraction=0.0)
    dm.setup("fit")
    dm.setup("test")
    train = dm.train_set.images.float() / 255, dm.train_set.labels
    test = dm.test_set.images.float() / 255, dm.test_set.labels
    return *train, *test


def _stale_network() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A small CNN trained for 3 epochs whose BatchNorm running statistics never moved from their init."""
    x, y, x_test, y_test = _digits_tensors()
    network = TEACHER_SPEC.build(10)
    for m in network.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.0  # running statistics stay at mean 0, variance 1: stale from the first step
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    network.train()
    for _ in range(3):
        for idx in torch.randperm(len(y), generator=generator).split(64):
            optimizer.zero_grad()
            F.cross_entropy(network(x[idx]), y[idx]).backward()
            optimizer.step()
    for m in network.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return network, (x, y, x_test, y_test)


def _test_batches(x_test: torch.Tensor, y_test: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(x_test.split(120), y_test.split(120), strict=True))


def test_recalibration_closes_the_eval_gap_of_stale_statistics() -> None:
    network, (x, y, x_test, y_test) = _stale_network()
    test = _test_batches(x_test, y_test)
    network.eval()
    stale = accuracy(network, test)
    with batch_statistics(network):
        batch_stats = accuracy(network, test)
    assert batch_stats - stale > 0.2, (stale, batch_stats)  # the case is a real one: eval mode is far off

    used = recalibrate_batchnorm(network, (x[idx] for idx in torch.randperm(len(y)).split(64)), num_batches=20)

    assert used == 20
    assert not network.training
    assert abs(accuracy(network, test) - batch_stats) <= 0.01


def test_recalibration_is_the_average_of_batch_statistics() -> None:
    bn = nn.BatchNorm2d(3)
    batches = [torch.randn(16, 3, 4, 4) * (i + 1) + i for i in range(4)]
    recalibrate_batchnorm(bn, batches)
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)
    variances = torch.stack([b.transpose(0, 1).reshape(3, -1).var(dim=1) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, means)
    torch.testing.assert_close(bn.running_var, variances)
    assert bn.momentum == 0.1 and bn.training  # momentum and mode as before
    assert int(bn.num_batches_tracked) == 4


def test_recalibration_leaves_frozen_batchnorm_alone() -> None:
    probe = FrozenBackboneFinetuner(TEACHER_SPEC, num_classes=10, strategy="linear_probe")
    before = {k: v.clone() for k, v in probe.network.backbone.state_dict().items()}
    probe.eval()
    assert recalibrate_batchnorm(probe, [torch.rand(8, 1, 8, 8)]) == 0
    for key, value in probe.network.backbone.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert not probe.training


def test_no_batches_is_an_error_and_keeps_the_old_statistics() -> None:
    bn = nn.BatchNorm1d(2)
    bn.running_mean.fill_(3.0)
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_batchnorm(bn, [])
    assert bn.running_mean.tolist() == [3.0, 3.0] and bn.momentum == 0.1


def test_batch_statistics_restores_running_statistics_and_modes() -> None:
    network = TEACHER_SPEC.build(10).eval()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    with batch_statistics(network):
        network(torch.rand(16, 1, 8, 8))
    assert not any(m.training for m in network.modules())
    for key, value in network.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_training_batches_are_seeded_and_shaped_like_training() -> None:
    dm = DigitsDataModule(batch_size=64, hflip=True)
    dm.setup("fit")
    first = list(training_batches(dm, 3, seed=1, device=torch.device("cpu")))
    again = list(training_batches(dm, 3, seed=1, device=torch.device("cpu")))
    assert [tuple(b.shape) for b in first] == [(64, 1, 8, 8)] * 3
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    with pytest.raises(ConfigError, match="training images"):
        next(training_batches(object(), 3, 0, torch.device("cpu")))


def test_callback_recomputes_the_statistics_before_validation(digits: DigitsDataModule) -> None:
    module = FrozenBackboneFinetuner(TEACHER_SPEC, num_classes=10, strategy="full")
    make_trainer(max_epochs=1, callbacks=[PreciseBatchNorm(num_batches=5, seed=3)]).fit(module, digits)
    expected = FrozenBackboneFinetuner(TEACHER_SPEC, num_classes=10, strategy="full")
    expected.load_state_dict(module.state_dict())
    recalibrate_batchnorm(expected, training_batches(digits, 5, 3, torch.device("cpu")))
    for key, value in expected.network.state_dict().items():
        torch.testing.assert_close(module.network.state_dict()[key], value, msg=key)


def test_callback_without_validation_recalibrates_at_epoch_end(digits: DigitsDataModule) -> None:
    module = FrozenBackboneFinetuner(TEACHER_SPEC, num_classes=10, strategy="full")
    callback = PreciseBatchNorm(num_batches=2)
    make_trainer(max_epochs=1, limit_val_batches=0, callbacks=[callback]).fit(module, digits)
    assert callback._calibrated_at_step == module.trainer.global_step
    bn = next(m for m in module.network.modules() if isinstance(m, nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 2  # the cumulative average of 2 batches replaced the moving one


def test_callback_refuses_data_it_cannot_sample(digits: DigitsDataModule) -> None:
    with pytest.raises(ConfigError):
        PreciseBatchNorm(num_batches=0)
    module = FrozenBackboneFinetuner(TEACHER_SPEC, num_classes=10, strategy="full")
    loaders = {"train_dataloaders": digits_loader()}
    with pytest.raises(ConfigError, match="image DataModule"):
        make_trainer(max_epochs=1, callbacks=[PreciseBatchNorm()]).fit(module, **loaders)


def digits_loader() -> torch.utils.data.DataLoader:
    x, y, _, _ = _digits_tensors()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)


def test_teacher_check_warns_about_an_untrained_teacher(digits: DigitsDataModule) -> None:
    module = DistillationModule("small_cnn", TEACHER_SPEC, num_classes=10)
    check = TeacherCheck()
    with pytest.warns(UserWarning, match="TEACHER CHECK: .* of chance"):
        make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[check]).fit(module, digits)
    assert check.result["val_acc"] < 0.2


def test_teacher_check_names_stale_batchnorm(digits: DigitsDataModule, tmp_path) -> None:
    network, _ = _stale_network()
    torch.save(network.state_dict(), tmp_path / "stale.pt")
    spec = ModelSpec(TEACHER_SPEC.name, weights_path=str(tmp_path / "stale.pt"), kwargs=TEACHER_SPEC.kwargs)
    module = DistillationModule("small_cnn", spec, num_classes=10)
    check = TeacherCheck()
    with pytest.warns(UserWarning, match="BatchNorm running statistics are stale"):
        make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[check]).fit(module, digits)
    assert check.result["val_acc_batch_stats"] - check.result["val_acc"] > 0.05


def test_teacher_check_is_quiet_for_a_good_teacher(digits: DigitsDataModule, teacher_spec: ModelSpec, recwarn) -> None:
    module = DistillationModule("small_cnn", teacher_spec, num_classes=10)
    check = TeacherCheck()
    make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[check]).fit(module, digits)
    assert not [w for w in recwarn if "TEACHER CHECK" in str(w.message)]
    assert check.result["val_acc"] > 0.5


def test_distiller_recalibrates_a_stale_teacher_on_request_and_keeps_it(digits, tmp_path) -> None:
    network, _ = _stale_network()
    torch.save(network.state_dict(), tmp_path / "stale.pt")
    spec = ModelSpec(TEACHER_SPEC.name, weights_path=str(tmp_path / "stale.pt"), kwargs=TEACHER_SPEC.kwargs)
    module = DistillationModule("small_cnn", spec, num_classes=10, teacher_options=TeacherOptions(recalibrate_bn=10))
    check = TeacherCheck()
    trainer = make_trainer(
        max_epochs=1, limit_train_batches=2, callbacks=[check], enable_checkpointing=True, default_root_dir=tmp_path
    )
    trainer.fit(module, digits)

    assert abs(check.result["val_acc"] - check.result["val_acc_batch_stats"]) <= 0.05
    assert check.result["val_acc"] > 0.8
    expected = TEACHER_SPEC.build(10)
    expected.load_state_dict(network.state_dict())
    recalibrate_batchnorm(expected, training_batches(digits, 10, 0, torch.device("cpu")))
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(module.teacher.network.state_dict()[key], value, msg=key)
    # The checkpoint carries the recalibrated teacher: a stale rebuild from the spec is not what taught.
    reloaded = DistillationModule.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    for key, value in expected.state_dict().items():
        torch.testing.assert_close(reloaded.teacher.network.state_dict()[key], value, msg=key)
    with pytest.raises(ConfigError, match="recalibrate_bn"):
        DistillationModule("small_cnn", spec, num_classes=10, teacher_options={"recalibrate_bn": -1})


def test_distiller_checks_its_teacher_by_default(digits: DigitsDataModule) -> None:
    module = DistillationModule("small_cnn", TEACHER_SPEC, num_classes=10)
    trainer = make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    with pytest.warns(UserWarning, match="TEACHER CHECK"):
        trainer.fit(module, digits)
    assert sum(isinstance(cb, TeacherCheck) for cb in trainer.callbacks) == 1


def test_teacher_check_reads_the_recorded_accuracy_from_the_one_read_of_the_teacher_file(
    digits: DigitsDataModule, tmp_path, monkeypatch
) -> None:
    teacher = FrozenBackboneFinetuner(TEACHER_SPEC, num_classes=10, strategy="full")
    saver = ModelCheckpoint(dirpath=tmp_path, filename="teacher", monitor="val/acc", mode="max")
    make_trainer(max_epochs=1, callbacks=[saver], enable_checkpointing=True).fit(teacher, digits)
    path = tmp_path / "teacher.ckpt"
    reads: list[str] = []
    load = torch.load

    def counting_load(f, *args, **kwargs):
        reads.append(str(f))
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    spec = ModelSpec(TEACHER_SPEC.name, weights_path=str(path), kwargs=TEACHER_SPEC.kwargs)
    module = DistillationModule("small_cnn", spec, num_classes=10)
    check = TeacherCheck()
    make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[check]).fit(module, digits)
    assert reads.count(str(path)) == 1
    assert check.result["recorded_val_acc"] == pytest.approx(float(saver.best_model_score))
    assert check.result["val_acc"] == pytest.approx(check.result["recorded_val_acc"], abs=1e-6)
