"""FrozenBackboneFinetuner: what is frozen stays bit-identical, what unfreezes trains."""

import pytest
import torch

from kd_lightning.callbacks import BackboneUnfreeze
from kd_lightning.modules import FrozenBackboneFinetuner
from tests.conftest import make_trainer


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> list[str]:
    return [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]


def test_linear_probe_keeps_backbone_and_batchnorm_statistics_unchanged(digits, teacher_spec) -> None:
    module = FrozenBackboneFinetuner(teacher_spec, num_classes=10, strategy="linear_probe")
    backbone_before, head_before = _snapshot(module.network.backbone), _snapshot(module.network.head)
    make_trainer(max_epochs=2, limit_val_batches=1).fit(module, digits)
    assert _changed(backbone_before, module.network.backbone) == []
    assert any("running_var" in k for k in backbone_before)
    assert _changed(head_before, module.network.head)


def test_linear_probe_backbone_stays_in_eval_mode_under_train(teacher_spec) -> None:
    module = FrozenBackboneFinetuner(teacher_spec, num_classes=10, strategy="linear_probe")
    module.train()
    assert not any(m.training for m in module.network.backbone.modules())
    assert module.network.head.training


def test_freeze_then_unfreeze_trains_backbone_only_after_the_unfreeze_epoch(digits, teacher_spec) -> None:
    module = FrozenBackboneFinetuner(
        teacher_spec, num_classes=10, strategy="freeze_then_unfreeze", unfreeze_at_epoch=1, backbone_lr_factor=0.1
    )
    before = _snapshot(module.network.backbone)
    trainer = make_trainer(max_epochs=1, limit_val_batches=1)
    trainer.fit(module, digits)
    assert _changed(before, module.network.backbone) == [], "backbone changed before the unfreeze epoch"

    trainer = make_trainer(max_epochs=2, limit_val_batches=1)
    module = FrozenBackboneFinetuner(
        teacher_spec, num_classes=10, strategy="freeze_then_unfreeze", unfreeze_at_epoch=1, backbone_lr_factor=0.1
    )
    trainer.fit(module, digits)
    changed = _changed(before, module.network.backbone)
    assert any(k.endswith("weight") for k in changed)
    assert any("running_mean" in k for k in changed), "BatchNorm statistics should update once unfrozen"
    groups = trainer.optimizers[0].param_groups
    assert len(groups) == 2
    assert groups[1]["lr"] == pytest.approx(groups[0]["lr"] * 0.1)


def test_freeze_then_unfreeze_uses_a_base_finetuning_callback(teacher_spec) -> None:
    module = FrozenBackboneFinetuner(teacher_spec, num_classes=10, strategy="freeze_then_unfreeze")
    callbacks = module.configure_callbacks()
    assert sum(isinstance(c, BackboneUnfreeze) for c in callbacks) == 1


def test_full_strategy_trains_everything(digits, teacher_spec) -> None:
    module = FrozenBackboneFinetuner(teacher_spec, num_classes=10, strategy="full")
    before = _snapshot(module.network.backbone)
    make_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=1).fit(module, digits)
    assert _changed(before, module.network.backbone)


def test_pretrained_head_with_another_class_count_is_replaced(teacher_spec) -> None:
    module = FrozenBackboneFinetuner(teacher_spec, num_classes=4)
    assert module.network.head.out_features == 4


def test_unknown_strategy_is_refused(teacher_spec) -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        FrozenBackboneFinetuner(teacher_spec, num_classes=10, strategy="partial")
