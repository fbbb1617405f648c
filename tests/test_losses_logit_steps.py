"""A distillation step with each newer logit method: the distiller's total is the weighted sum of the
pure functions on the same outputs, and an optimizer step lowers it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kd_lightning.data.batch import Batch
from kd_lightning.losses import dist_loss, dkd_loss, kd_loss, mlkd_loss, nkd_loss
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule

STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})
# (term, the loss recomputed from student logits s, teacher logits t and labels y)
METHODS = {
    "kd_ls": ({"name": "kd", "weight": 0.9, "kwargs": {"temperature": 2.0, "standardize": True}},
              lambda s, t, y: kd_loss(s, t, 2.0, standardize=True)),
    "dkd_ls": ({"name": "dkd", "kwargs": {"beta": 8.0, "temperature": 2.0, "standardize": True}},
               lambda s, t, y: dkd_loss(s, t, y, 1.0, 8.0, 2.0, standardize=True)),
    "dist_ls": ({"name": "dist", "kwargs": {"beta": 2.0, "gamma": 2.0, "temperature": 4.0, "standardize": True}},
                lambda s, t, y: dist_loss(s, t, 2.0, 2.0, 4.0, standardize=True)),
    "nkd": ({"name": "nkd", "kwargs": {"temperature": 3.0, "gamma": 3.5}}, lambda s, t, y: nkd_loss(s, t, y, 3.0, 3.5)),
    "mlkd_ls": ({"name": "mlkd", "kwargs": {"standardize": True}},
                lambda s, t, y: mlkd_loss(s, t, s, t, standardize=True)),
}  # fmt: skip


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_distillation_step_with_each_logit_method(method: str, teacher_spec) -> None:
    term, recompute = METHODS[method]
    torch.manual_seed(0)
    module = DistillationModule(STUDENT, teacher_spec, 10, losses=[{"name": "ce", "weight": 0.1}, term])
    module.log = module.log_dict = lambda *a, **k: None
    optimizer = torch.optim.SGD(module.trainable_parameters(), lr=0.05)
    module.train()
    x, y = torch.rand(32, 1, 8, 8), torch.arange(32) % 10
    loss = module.training_step(Batch(y, images=x), 0)
    with torch.no_grad():
        s, t = module.network(x), module.teacher(x).logits
    torch.testing.assert_close(loss, 0.1 * F.cross_entropy(s, y) + term.get("weight", 1.0) * recompute(s, t, y))
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = module.training_step(Batch(y, images=x), 0)
    assert after.item() < loss.item()
