"""DistillationModule: frozen teacher, α mixing, logging and checkpoints without the teacher."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kd_lightning.data.batch import Batch
from kd_lightning.losses import kd_loss
from kd_lightning.models import CheckpointError, ModelSpec
from kd_lightning.modules import DistillationModule, TeacherOptions
from tests.conftest import make_trainer

STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})


def _teacher_state(module: DistillationModule) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.teacher.state_dict().items()}


def test_teacher_weights_and_batchnorm_buffers_are_bit_identical_after_an_epoch(digits, teacher_spec) -> None:
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10)
    before = _teacher_state(module)
    student_before = {k: v.clone() for k, v in module.network.state_dict().items()}
    modes: list[bool] = []
    original_step = module.training_step

    def recording_step(batch, batch_idx):
        modes.append(module.teacher.training or any(m.training for m in module.teacher.modules()))
        return original_step(batch, batch_idx)

    module.training_step = recording_step
    make_trainer(max_epochs=1, limit_val_batches=2).fit(module, digits)

    after = module.teacher.state_dict()
    assert any("running_mean" in k for k in before)
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert modes and not any(modes), "teacher left eval mode during training"
    assert any(not torch.equal(v, module.network.state_dict()[k]) for k, v in student_before.items())


def test_teacher_is_out_of_the_optimizer_and_has_no_grad(teacher_spec) -> None:
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10)
    optimizer = module.configure_optimizers()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in in_optimizer for p in module.teacher.parameters())
    assert {id(p) for p in module.network.parameters()} <= in_optimizer
    assert not any(p.requires_grad for p in module.teacher.parameters())


def test_loss_is_alpha_mix_of_ce_and_kd(teacher_spec) -> None:
    alpha, temperature = 0.7, 3.0
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, alpha=alpha, temperature=temperature)
    module.train()
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 10
    logged: dict[str, torch.Tensor] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)
    module.log_dict = lambda values, **kw: logged.update(values) if isinstance(values, dict) else None
    torch.manual_seed(0)
    loss = module.training_step(Batch(y, images=x), 0)
    with torch.no_grad():
        student, teacher = module.network(x), module.teacher(x).logits
    expected = (1 - alpha) * F.cross_entropy(student, y) + alpha * kd_loss(student, teacher, temperature)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logged["train/ce"], F.cross_entropy(student, y))
    torch.testing.assert_close(logged["train/kd"], kd_loss(student, teacher, temperature))


def test_validation_logs_student_teacher_and_agreement(digits, teacher_spec) -> None:
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10)
    trainer = make_trainer(max_epochs=1)
    trainer.fit(module, digits)
    for key in ("val/acc", "val/teacher_acc", "val/agreement", "train/ce", "train/kd", "train/loss"):
        assert key in trainer.callback_metrics, key
    assert trainer.callback_metrics["val/teacher_acc"] > 0.5


def test_checkpoint_leaves_teacher_out_and_reloads(digits, teacher_spec, tmp_path: Path) -> None:
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10)
    trainer = make_trainer(max_epochs=1, limit_val_batches=1)
    trainer.fit(module, digits)
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert not any(k.startswith("teacher.") for k in checkpoint["state_dict"])
    assert checkpoint["hyper_parameters"]["teacher"]["weights_path"] == teacher_spec.weights_path

    restored = DistillationModule.load_from_checkpoint(path, weights_only=True)
    for key, value in module.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key


def test_save_teacher_keeps_it_in_the_checkpoint(digits, teacher_spec, tmp_path: Path) -> None:
    module = DistillationModule(
        STUDENT, teacher_spec, num_classes=10, teacher_options=TeacherOptions(save_in_checkpoint=True)
    )
    trainer = make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(module, digits)
    trainer.save_checkpoint(tmp_path / "full.ckpt")
    state = torch.load(tmp_path / "full.ckpt", weights_only=True)["state_dict"]
    assert any(k.startswith("teacher.") for k in state)


def test_teacher_with_another_class_count_is_refused(teacher_spec) -> None:
    with pytest.raises(CheckpointError, match="trained for 10 classes but this model has 5"):
        DistillationModule(STUDENT, teacher_spec, num_classes=5)


def test_teacher_of_another_architecture_is_refused(digits_teacher_weights) -> None:
    with pytest.raises(CheckpointError, match="another architecture"):
        DistillationModule(STUDENT, ModelSpec("resnet8", weights_path=str(digits_teacher_weights)), num_classes=10)


@pytest.mark.parametrize(("kwargs", "message"), [({"alpha": 1.5}, "alpha must be in"), ({"temperature": 0}, "> 0")])
def test_bad_hyper_parameters_are_refused(teacher_spec, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        DistillationModule(STUDENT, teacher_spec, num_classes=10, **kwargs)
