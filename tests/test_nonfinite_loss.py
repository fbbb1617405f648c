"""A NaN loss stops the run with the step and the loss term at fault."""

from __future__ import annotations

import lightning as L
import pytest

from kd_lightning.callbacks import NonFiniteLossGuard
from kd_lightning.data import DigitsDataModule
from kd_lightning.errors import NonFiniteLossError
from kd_lightning.losses import ModelOutputs
from kd_lightning.modules import DistillationModule


class PoisonedTeacher(DistillationModule):
    """The teacher's logits become NaN from training step 3 on, so only the KD term breaks."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.teacher.register_forward_hook(self._poison)

    def _poison(self, teacher, args, outputs: ModelOutputs) -> ModelOutputs:
        if self.training and self.trainer.fit_loop.total_batch_idx >= 3:
            return ModelOutputs(outputs.logits * float("nan"))
        return outputs


def _fit(guard: NonFiniteLossGuard | None = None) -> None:
    L.seed_everything(0)
    teacher = {"name": "small_cnn", "kwargs": {"width": 8}}
    module = PoisonedTeacher({"name": "small_cnn", "kwargs": {"width": 4}}, teacher, num_classes=10)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=8,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[guard] if guard else None,
    )
    trainer.fit(module, DigitsDataModule(batch_size=16))


@pytest.mark.filterwarnings("ignore:teacher")
def test_nan_kd_term_stops_the_run_naming_step_and_term():
    with pytest.raises(NonFiniteLossError, match=r"training step 3 .*non-finite terms: kd=nan, loss=nan") as info:
        _fit()
    assert "ce=" not in str(info.value)  # the CE term stayed finite


@pytest.mark.filterwarnings("ignore:teacher")
def test_checking_every_n_steps_still_reports_the_first_bad_step():
    with pytest.raises(NonFiniteLossError, match=r"training step 3 \(epoch 0, batch 4\)"):
        _fit(NonFiniteLossGuard(check_every_n_steps=5))
