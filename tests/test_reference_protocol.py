"""The pieces the CIFAR-100 recipes need to follow RepDistiller/mdistiller: test-split validation,
FitNets' ReLU regressor and hint stage, CRD's data-sized memory and class-excluding negatives,
and the last/best report."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kd_lightning.callbacks import LastAndBestAccuracy
from kd_lightning.data import DigitsDataModule
from kd_lightning.errors import ConfigError
from kd_lightning.losses import CRDLoss, FitNetLoss, ModelOutputs, StepContext
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule
from tests.conftest import make_trainer

STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})
DIGITS_SHAPE = (1, 8, 8)


def test_validate_on_test_trains_on_the_whole_training_split_and_validates_on_test() -> None:
    held_out = DigitsDataModule(val_fraction=0.2)
    held_out.setup()
    dm = DigitsDataModule(val_fraction=0.2, validate_on_test=True)
    dm.setup()
    assert len(dm.train_set) == len(held_out.train_set) + len(held_out.val_set)
    assert torch.equal(dm.val_set.images, dm.test_set.images) and torch.equal(dm.val_set.labels, dm.test_set.labels)
    assert len(dm.train_set) + len(dm.test_set) == 1797


def test_fitnet_regressor_can_end_in_a_relu_like_repdistillers_convreg() -> None:
    shapes = ({"s": torch.Size([2, 3, 4, 4])}, {"t": torch.Size([2, 5, 4, 4])})
    plain, relu = FitNetLoss(["s"], ["t"]), FitNetLoss(["s"], ["t"], final_relu=True)
    plain.build(*shapes)
    relu.build(*shapes)
    assert [type(m) for m in relu.regressors[0]] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert [type(m) for m in plain.regressors[0]] == [nn.Conv2d, nn.BatchNorm2d]
    relu.regressors[0].load_state_dict(plain.regressors[0].state_dict())
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(relu.regressors[0](x), plain.regressors[0](x).clamp(min=0))


def _hint_module(teacher_spec, hint_epochs: int) -> DistillationModule:
    terms = [
        {"name": "ce", "weight": 0.1},
        {"name": "kd", "weight": 0.9},
        # Layer "2" of small_cnn is the first conv + BN + ReLU: the guided layer.
        {"name": "fitnet", "kwargs": {"student_layers": ["2"], "teacher_layers": ["2"], "hint_epochs": hint_epochs}},
    ]
    optimizer = lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)  # noqa: E731
    return DistillationModule(STUDENT, teacher_spec, 10, losses=terms, input_shape=DIGITS_SHAPE, optimizer=optimizer)


def _changed(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if name in before and not torch.equal(before[name], p)}


def test_hint_stage_trains_only_up_to_the_guided_layer_then_drops_the_hint(digits, teacher_spec) -> None:
    module = _hint_module(teacher_spec, hint_epochs=1)
    before = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}
    make_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0).fit(module, digits)
    changed = _changed(before, module)
    # Stage 1: the hint alone moves the first conv (the guided layer) and the regressor; nothing
    # above it gets a gradient, so even weight decay leaves it alone.
    guided = {n for n in before if n.startswith(("network.backbone.0.", "network.backbone.1."))}
    assert guided and {n for n in changed if n.startswith("network.")} == guided
    assert any(n.startswith("loss_terms.fitnet.regressors") for n in changed)
    assert module.objective_weights(0) == {"fitnet": 1.0}
    assert module.objective_weights(1) == {"ce": 0.1, "kd": 0.9, "fitnet": 1.0}
    # Stage 2: the hint term is zero and CE + KD train the whole student.
    loss = module.loss_terms["fitnet"]
    student = ModelOutputs(torch.zeros(2, 10), {"2": torch.ones(2, 4, 8, 8)})
    teacher = ModelOutputs(torch.zeros(2, 10), {"2": torch.ones(2, 8, 8, 8)})
    assert loss(student, teacher, StepContext(torch.zeros(2), epoch=0)) > 0
    assert loss(student, teacher, StepContext(torch.zeros(2), epoch=1)) == 0


def test_single_stage_fitnet_trains_the_whole_student(digits, teacher_spec) -> None:
    module = _hint_module(teacher_spec, hint_epochs=0)
    before = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}
    make_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0).fit(module, digits)
    assert {n for n in before if n.startswith("network.")} <= _changed(before, module)


def _crd(**kwargs) -> CRDLoss:
    loss = CRDLoss(student_layers=["s"], teacher_layers=["t"], feat_dim=8, **kwargs)
    loss.build({"s": torch.Size([2, 6])}, {"t": torch.Size([2, 6])})
    return loss


def test_crd_other_classes_draws_distinct_negatives_of_other_classes_only() -> None:
    labels = torch.arange(60) % 3  # 20 per class: 40 candidates per sample
    loss = _crd(num_negatives=40, negative_sampling="other_classes")
    loss.bind_training_labels(labels)
    assert loss.num_samples == 60 and not loss.negatives_with_replacement
    indices = torch.tensor([0, 1, 2, 59])
    contrast = loss.contrast_indices(indices)
    assert torch.equal(contrast[:, 0], indices)  # the sample itself is the positive ('exact')
    negatives = contrast[:, 1:]
    assert (labels[negatives] != labels[indices][:, None]).all()
    assert all(len(set(row.tolist())) == 40 for row in negatives)  # all 40 candidates, each once
    # More negatives than candidates: drawn with replacement, still from other classes only.
    loss = _crd(num_negatives=100, negative_sampling="other_classes")
    loss.bind_training_labels(labels)
    assert loss.negatives_with_replacement
    assert (labels[loss.contrast_indices(indices)[:, 1:]] != labels[indices][:, None]).all()


def test_crd_uniform_draws_from_every_row() -> None:
    loss = _crd(num_negatives=2000)
    loss.bind_training_labels(torch.arange(10) % 2)
    negatives = loss.contrast_indices(torch.tensor([0]))[:, 1:]
    assert set(negatives.flatten().tolist()) == set(range(10))


def test_crd_memory_takes_the_training_set_size_and_refuses_another(digits, teacher_spec) -> None:
    terms = [{"name": "ce"}, {"name": "crd", "kwargs": {"num_negatives": 16, "negative_sampling": "other_classes"}}]
    module = DistillationModule(STUDENT, teacher_spec, 10, losses=terms, input_shape=DIGITS_SHAPE)
    assert module.loss_terms["crd"].num_samples == 0
    data = DigitsDataModule(batch_size=32, return_indices=True, validate_on_test=True)
    make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0).fit(module, data)
    assert module.loss_terms["crd"].num_samples == len(data.train_set)
    # A checkpoint restores into an unsized memory (load_from_checkpoint builds it from hyper-parameters).
    again = DistillationModule(STUDENT, teacher_spec, 10, losses=terms, input_shape=DIGITS_SHAPE)
    again.load_state_dict(module.state_dict())
    torch.testing.assert_close(again.loss_terms["crd"].student_memory, module.loss_terms["crd"].student_memory)
    typed = [{"name": "crd", "kwargs": {"num_samples": 45_000, "num_negatives": 16}}]
    module = DistillationModule(STUDENT, teacher_spec, 10, losses=typed, input_shape=DIGITS_SHAPE)
    with pytest.raises(ConfigError, match="num_samples=45000 but the training set has"):
        make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(module, data)


def test_crd_without_a_size_says_how_to_get_one() -> None:
    loss = _crd()
    features = ModelOutputs(torch.zeros(2, 3), {"s": torch.randn(2, 6), "t": torch.randn(2, 6)})
    with pytest.raises(ValueError, match="memory has no size"):
        loss(features, features, StepContext(torch.zeros(2), torch.tensor([0, 1])))


def test_last_and_best_reports_both_and_survives_a_checkpoint(digits, teacher_spec) -> None:
    report = LastAndBestAccuracy()
    module = DistillationModule(STUDENT, teacher_spec, 10)
    make_trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=2, callbacks=[report]).fit(module, digits)
    assert sorted(report.history) == [0, 1, 2]
    best_epoch = max(report.history, key=report.history.get)
    assert report.summary == {
        "val/acc_last": report.history[2],
        "val/acc_best": report.history[best_epoch],
        "val/acc_best_epoch": float(best_epoch),
    }
    restored = LastAndBestAccuracy()
    restored.load_state_dict(report.state_dict())
    assert restored.history == report.history
