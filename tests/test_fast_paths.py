"""Fast-path options: channels_last, torch.compile wiring, and no host syncs in training steps."""

import pytest
import torch

from kd_lightning.cache.teacher import TeacherCacheConfig
from kd_lightning.data import DigitsDataModule
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner
from tests.conftest import make_trainer

STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})


def _conv_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]


def test_channels_last_option_converts_conv_weights_and_trains(teacher_spec) -> None:
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, channels_last=True)
    make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1).fit(module, DigitsDataModule(batch_size=32))
    weights = _conv_weights(module)
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)


def test_compile_option_compiles_student_and_teacher_in_place(teacher_spec, monkeypatch) -> None:
    compiled: list[torch.nn.Module] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, compile=True)
    module.configure_model()
    assert compiled == [module.network, module.teacher.network]
    keys = set(module.state_dict())
    assert not any("_orig_mod" in k for k in keys)  # checkpoint keys unchanged


def _forbid_item_in_training_step(module, monkeypatch) -> list[int]:
    steps: list[int] = []
    original = module.training_step

    def guarded(batch, batch_idx):
        with monkeypatch.context() as m:
            m.setattr(torch.Tensor, "item", lambda self: pytest.fail("Tensor.item() in training_step"))
            m.setattr(torch.Tensor, "tolist", lambda self: pytest.fail("Tensor.tolist() in training_step"))
            m.setattr(torch.Tensor, "__bool__", lambda self: pytest.fail("bool(Tensor) in training_step"))
            out = original(batch, batch_idx)
        steps.append(batch_idx)
        return out

    module.training_step = guarded
    return steps


@pytest.mark.parametrize("cache", [None, TeacherCacheConfig(views=2)], ids=["uncached", "cached"])
def test_distillation_step_has_no_item_calls(teacher_spec, monkeypatch, cache) -> None:
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, teacher_cache=cache)
    steps = _forbid_item_in_training_step(module, monkeypatch)
    dm = DigitsDataModule(batch_size=64, crop_padding=1, hflip=True)
    make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0).fit(module, dm)
    assert steps == [0, 1]


def test_cached_linear_probe_step_has_no_item_calls(teacher_spec, monkeypatch) -> None:
    module = FrozenBackboneFinetuner(teacher_spec, num_classes=10, feature_cache=True)
    steps = _forbid_item_in_training_step(module, monkeypatch)
    make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0).fit(module, DigitsDataModule(batch_size=64))
    assert steps == [0, 1]
