"""OFD against its formulas in float64 with gradcheck, its margins from a teacher's BatchNorm, and a distiller step."""

from __future__ import annotations

import math

import pytest
import torch

from kd_lightning.data.batch import Batch
from kd_lightning.losses import ModelOutputs, OFDLoss, StepContext, ofd_loss, ofd_margins
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule

GEN = torch.Generator().manual_seed(0)


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _hand_margin(gamma: float, beta: float) -> float:
    s = abs(gamma)
    if _phi(-beta / s) <= 1e-3:
        return -3 * s
    return beta - s * math.exp(-((beta / s) ** 2) / 2) / math.sqrt(2 * math.pi) / _phi(-beta / s)


def test_margins_are_the_mean_of_the_negative_part_of_the_bn_gaussian() -> None:
    gamma = torch.tensor([1.0, -2.0, 0.5, 0.1], dtype=torch.float64)
    beta = torch.tensor([0.0, 1.0, -0.3, 5.0], dtype=torch.float64)  # the last is almost never negative
    expected = [_hand_margin(g, b) for g, b in zip(gamma.tolist(), beta.tolist(), strict=True)]
    assert ofd_margins(gamma, beta).tolist() == pytest.approx(expected, rel=1e-12)
    assert expected[0] == pytest.approx(-math.sqrt(2 / math.pi)) and expected[3] == pytest.approx(-0.3)


def _hand_ofd(s: torch.Tensor, t: torch.Tensor, margins: list[float]) -> float:
    total = 0.0
    for b in range(s.shape[0]):
        for c in range(s.shape[1]):
            m = margins[c]
            for a, x in zip(s[b, c].flatten().tolist(), t[b, c].flatten().tolist(), strict=True):
                if a > m and x <= m:
                    total += (a - m) ** 2
                if a > x and m < x <= 0:
                    total += (a - x) ** 2
                if x > 0:
                    total += (a - x) ** 2
    return total / s.shape[0]


def test_ofd_is_the_partial_l2_distance_to_the_teacher_above_its_margin() -> None:
    s = torch.randn(3, 2, 2, 2, generator=GEN, dtype=torch.float64)
    t = torch.randn(3, 2, 4, 4, generator=GEN, dtype=torch.float64)
    margins = torch.tensor([-0.8, -0.2], dtype=torch.float64)
    pooled = t.reshape(3, 2, 2, 2, 2, 2).mean(dim=(3, 5))
    assert ofd_loss(s, t, margins).item() == pytest.approx(_hand_ofd(s, pooled, margins.tolist()), rel=1e-12)
    assert torch.autograd.gradcheck(lambda x: ofd_loss(x, t, margins), (s.clone().requires_grad_(),))


def test_deeper_layers_weigh_more_and_margins_come_from_the_named_batchnorm() -> None:
    teacher = torch.nn.Module()
    teacher.bn = torch.nn.BatchNorm2d(2)
    with torch.no_grad():
        teacher.bn.weight.copy_(torch.tensor([1.0, 2.0]))
        teacher.bn.bias.copy_(torch.tensor([0.5, -1.0]))
    loss = OFDLoss(["a", "b"], ["c", "d"], teacher_batchnorms=["bn", "bn"])
    with pytest.raises(RuntimeError, match="bind_teacher"):
        loss(ModelOutputs(torch.zeros(1)), ModelOutputs(torch.zeros(1)), StepContext(torch.zeros(1)))
    shape = torch.Size([3, 2, 2, 2])
    loss.build({"a": shape, "b": shape}, {"c": shape, "d": shape})
    loss.bind_teacher(teacher)
    margins = [_hand_margin(1.0, 0.5), _hand_margin(2.0, -1.0)]
    assert loss.margins[0].tolist() == pytest.approx(margins, rel=1e-6)
    s, t = torch.randn(2, 3, 2, 2, 2, generator=GEN), torch.randn(2, 3, 2, 2, 2, generator=GEN)
    value = loss(
        ModelOutputs(torch.zeros(3), {"a": s[0], "b": s[1]}),
        ModelOutputs(torch.zeros(3), {"c": t[0], "d": t[1]}),
        StepContext(torch.zeros(3)),
    )
    with torch.no_grad():
        connected = [loss.connectors[i](s[i]).double() for i in range(2)]
    expected = _hand_ofd(connected[0], t[0].double(), margins) / 2 + _hand_ofd(connected[1], t[1].double(), margins)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="not a BatchNorm2d"):
        OFDLoss(["a"], ["c"], teacher_batchnorms=["missing"]).bind_teacher(teacher)


def test_a_distillation_step_reads_margins_from_the_teacher(teacher_spec: ModelSpec) -> None:
    kwargs = {"student_layers": ["12@input"], "teacher_layers": ["12@input"], "teacher_batchnorms": ["11"]}
    terms = [{"name": "ce"}, {"name": "ofd", "weight": 0.001, "kwargs": kwargs}]
    student = ModelSpec("small_cnn", kwargs={"width": 4})
    module = DistillationModule(student, teacher_spec, num_classes=10, losses=terms, input_shape=(1, 8, 8))
    bn = module.teacher.network.backbone[11]
    torch.testing.assert_close(module.loss_terms["ofd"].margins[0], ofd_margins(bn.weight, bn.bias).float())
    module.train()
    module.log = lambda *args, **kw: None
    module.log_dict = lambda *args, **kw: None
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    loss = module.training_step(Batch(y, images=x), 0)
    with torch.no_grad():
        s = module.network.backbone[:12](module.network.input_adapter(x))
        t = module.teacher.network.backbone[:12](module.teacher.network.input_adapter(x))
        expected = ofd_loss(module.loss_terms["ofd"].connectors[0](s), t, module.loss_terms["ofd"].margins[0])
        ce = torch.nn.functional.cross_entropy(module.network(x), y)
    torch.testing.assert_close(loss, ce + 0.001 * expected)
    loss.backward()
    assert all(p.grad is not None for p in module.loss_terms["ofd"].parameters())
