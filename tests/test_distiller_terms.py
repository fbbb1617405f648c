"""DistillationModule with a list of weighted loss terms: sums, logs, adapters, taps, CRD indices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kd_lightning.data import DigitsDataModule
from kd_lightning.data.batch import Batch
from kd_lightning.losses import LossTerm, at_loss, kd_loss
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule
from tests.conftest import make_trainer

STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})
DIGITS_SHAPE = (1, 8, 8)
AT_LAYERS = {"student_layers": ["5"], "teacher_layers": ["5"]}  # end of the first stage of small_cnn


def _record_logs(module: DistillationModule) -> dict[str, torch.Tensor]:
    logged: dict[str, torch.Tensor] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)
    module.log_dict = lambda values, **kw: logged.update(values) if isinstance(values, dict) else None
    return logged


def test_total_is_the_weighted_sum_and_each_term_is_logged(teacher_spec) -> None:
    terms = [
        LossTerm("ce", 1.0),
        LossTerm("kd", 0.9, {"temperature": 2.0}),
        {"name": "at", "weight": 1000, "kwargs": AT_LAYERS},
    ]
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, losses=terms, input_shape=DIGITS_SHAPE)
    module.train()
    logged = _record_logs(module)
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    loss = module.training_step(Batch(y, images=x), 0)
    with torch.no_grad():
        student, teacher = module.network(x), module.teacher(x).logits
        s_map = module.network.backbone[:6](module.network.input_adapter(x))
        t_map = module.teacher.network.backbone[:6](module.teacher.network.input_adapter(x))
    ce, kd, at = F.cross_entropy(student, y), kd_loss(student, teacher, 2.0), at_loss(s_map, t_map)
    torch.testing.assert_close(loss, ce + 0.9 * kd + 1000 * at)
    for name, value in (("ce", ce), ("kd", kd), ("at", at)):
        torch.testing.assert_close(logged[f"train/{name}"], value)


def test_teacher_features_carry_no_graph(teacher_spec) -> None:
    module = DistillationModule(
        STUDENT, teacher_spec, num_classes=10, losses=[{"name": "at", "kwargs": AT_LAYERS}], input_shape=DIGITS_SHAPE
    )
    outputs = module.teacher(torch.rand(4, 1, 8, 8))
    assert not outputs.features["5"].requires_grad and not outputs.logits.requires_grad
    assert module.student_outputs(torch.rand(4, 1, 8, 8)).features["5"].requires_grad


def _fitnet_module(teacher_spec: ModelSpec) -> DistillationModule:
    hint = {"student_layers": ["12"], "teacher_layers": ["12"]}  # last conv stage: 8 vs 16 channels
    terms = [{"name": "ce"}, {"name": "fitnet", "weight": 100.0, "kwargs": hint}]
    return DistillationModule(STUDENT, teacher_spec, num_classes=10, losses=terms, input_shape=DIGITS_SHAPE)


def test_adapters_are_optimised_and_survive_checkpoints(digits, teacher_spec, tmp_path: Path) -> None:
    module = _fitnet_module(teacher_spec)
    regressor = module.loss_terms["fitnet"].regressors[0]
    optimizer = module.configure_optimizers()
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in regressor.parameters()} <= in_optimizer
    trainer = make_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(module, digits)
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["state_dict"]
    assert any(k.startswith("loss_terms.fitnet.regressors") for k in state)
    assert not any(k.startswith("teacher.") for k in state)
    restored = DistillationModule.load_from_checkpoint(path, weights_only=True)
    for key, value in module.loss_terms.state_dict().items():
        torch.testing.assert_close(restored.loss_terms.state_dict()[key], value)


def test_dkd_warmup_is_given_the_trainer_epoch(digits, teacher_spec) -> None:
    terms = [{"name": "ce"}, {"name": "dkd", "kwargs": {"warmup_epochs": 5}}]
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, losses=terms)
    epochs: list[int] = []
    module.loss_terms["dkd"].register_forward_pre_hook(
        lambda loss, args: epochs.append(args[2].epoch)  # (student, teacher, context)
    )
    make_trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1).fit(module, digits)
    assert epochs == [0, 0, 1, 1]


def test_crd_trains_with_sample_indices_from_the_data(teacher_spec) -> None:
    data = DigitsDataModule(batch_size=32, return_indices=True)
    data.setup("fit")
    assert data.train_set.__getitems__([3, 7]).indices.tolist() == [3, 7]
    terms = [
        {"name": "ce"},
        {"name": "crd", "weight": 0.8, "kwargs": {"num_samples": len(data.train_set), "num_negatives": 64}},
    ]
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, losses=terms, input_shape=DIGITS_SHAPE)
    memory = module.loss_terms["crd"].student_memory.clone()
    trainer = make_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(module, data)
    assert torch.isfinite(trainer.callback_metrics["train/crd"])
    assert (module.loss_terms["crd"].student_memory != memory).any(dim=1).sum() == 3 * 32


def test_crd_without_indices_says_how_to_get_them(digits, teacher_spec) -> None:
    terms = [{"name": "crd", "kwargs": {"num_negatives": 8}}]
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, losses=terms, input_shape=DIGITS_SHAPE)
    with pytest.raises(ValueError, match="return_indices: true"):
        make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(module, digits)


def test_bad_term_lists_are_refused(teacher_spec) -> None:
    with pytest.raises(ValueError, match="distinct `label`"):
        DistillationModule(STUDENT, teacher_spec, num_classes=10, losses=[{"name": "kd"}, {"name": "kd"}])
    with pytest.raises(ValueError, match="input_shape"):
        DistillationModule(STUDENT, teacher_spec, num_classes=10, losses=[{"name": "at", "kwargs": AT_LAYERS}])
    with pytest.raises(ValueError, match="unknown distillation loss"):
        DistillationModule(STUDENT, teacher_spec, num_classes=10, losses=[{"name": "kdd"}])
