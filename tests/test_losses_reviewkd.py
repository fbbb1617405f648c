"""ReviewKD: the hierarchical context loss by hand in float64 with gradcheck, the review's fusions, a distiller step."""

from __future__ import annotations

import pytest
import torch

from kd_lightning.data.batch import Batch
from kd_lightning.losses import ModelOutputs, ReviewKDLoss, StepContext, hcl_loss
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule

GEN = torch.Generator().manual_seed(0)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    values = [(x - y) ** 2 for x, y in zip(a.flatten().tolist(), b.flatten().tolist(), strict=True)]
    return sum(values) / len(values)


def _block_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, c, size, h // size, size, w // size).mean(dim=(3, 5))


def test_hcl_adds_the_pooled_pyramid_at_halving_weights() -> None:
    s8, t8 = (
        torch.randn(2, 3, 8, 8, generator=GEN, dtype=torch.float64),
        torch.randn(2, 3, 8, 8, generator=GEN, dtype=torch.float64),
    )
    s2, t2 = (
        torch.randn(2, 3, 2, 2, generator=GEN, dtype=torch.float64),
        torch.randn(2, 3, 2, 2, generator=GEN, dtype=torch.float64),
    )
    eight = (
        _mse(s8, t8)
        + _mse(_block_mean(s8, 4), _block_mean(t8, 4)) / 2
        + _mse(_block_mean(s8, 2), _block_mean(t8, 2)) / 4
        + _mse(_block_mean(s8, 1), _block_mean(t8, 1)) / 8
    ) / (1 + 1 / 2 + 1 / 4 + 1 / 8)
    two = (_mse(s2, t2) + _mse(_block_mean(s2, 1), _block_mean(t2, 1)) / 2) / 1.5  # only the 1×1 level is smaller
    assert hcl_loss([s8, s2], [t8, t2]).item() == pytest.approx(eight + two, rel=1e-12)
    assert torch.autograd.gradcheck(
        lambda a, b: hcl_loss([a, b], [t8, t2]), (s8.clone().requires_grad_(), s2.clone().requires_grad_())
    )


def test_the_review_fuses_deep_to_shallow_into_the_teacher_widths_and_warms_up() -> None:
    loss = ReviewKDLoss(["a", "b", "p"], ["c", "d", "q"], warmup_epochs=4)
    loss.build(
        {"a": torch.Size([2, 4, 8, 8]), "b": torch.Size([2, 6, 4, 4]), "p": torch.Size([2, 6])},
        {"c": torch.Size([2, 5, 8, 8]), "d": torch.Size([2, 7, 4, 4]), "q": torch.Size([2, 9])},
    )
    deepest, middle, shallow = loss.fusions
    assert deepest.attention is None and middle.attention is not None and shallow.attention is not None
    assert [f.conv1[0].in_channels for f in loss.fusions] == [6, 6, 4]  # deep to shallow
    assert [f.conv2[0].out_channels for f in loss.fusions] == [9, 7, 5] and loss.out_sizes == [1, 4, 8]
    assert all(f.conv1[0].out_channels == 6 for f in loss.fusions)  # min(512, deepest student width)
    student = ModelOutputs(
        torch.zeros(2), {"a": torch.randn(2, 4, 8, 8), "b": torch.randn(2, 6, 4, 4), "p": torch.randn(2, 6)}
    )
    teacher = ModelOutputs(
        torch.zeros(2), {"c": torch.randn(2, 5, 8, 8), "d": torch.randn(2, 7, 4, 4), "q": torch.randn(2, 9)}
    )
    full = loss(student, teacher, StepContext(torch.zeros(2), epoch=3))
    first = loss(student, teacher, StepContext(torch.zeros(2), epoch=0))
    torch.testing.assert_close(first, full / 4)
    # The review by hand: each level's output from its own map and the deeper levels' residual.
    out_p, res = (
        deepest.conv2(deepest.conv1(student.features["p"][:, :, None, None])),
        deepest.conv1(student.features["p"][:, :, None, None]),
    )
    x = middle.conv1(student.features["b"])
    r = res.expand(-1, -1, 4, 4)
    w = middle.attention(torch.cat([x, r], dim=1))
    fused_b = x * w[:, :1] + r * w[:, 1:]
    x = shallow.conv1(student.features["a"])
    r = fused_b.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    w = shallow.attention(torch.cat([x, r], dim=1))
    out_a = shallow.conv2(x * w[:, :1] + r * w[:, 1:])
    expected = hcl_loss(
        [out_a, middle.conv2(fused_b), out_p],
        [teacher.features["c"], teacher.features["d"], teacher.features["q"][:, :, None, None]],
    )
    torch.testing.assert_close(full, expected)


def test_a_distillation_step_trains_the_fusions(teacher_spec: ModelSpec) -> None:
    kwargs = {"student_layers": ["5", "12", "backbone"], "teacher_layers": ["5@input", "12@input", "backbone"]}
    terms = [{"name": "ce"}, {"name": "reviewkd", "weight": 5.0, "kwargs": kwargs}]
    module = DistillationModule(
        ModelSpec("small_cnn", kwargs={"width": 4}), teacher_spec, num_classes=10, losses=terms, input_shape=(1, 8, 8)
    )
    module.train()
    logged: dict[str, torch.Tensor] = {}
    module.log = lambda *args, **kw: None
    module.log_dict = lambda values, **kw: logged.update(values) if isinstance(values, dict) else None
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    total = module.training_step(Batch(y, images=x), 0)
    loss = module.loss_terms["reviewkd"]
    assert loss.warmup_factor(0) == pytest.approx(1 / 20)
    with torch.no_grad():
        body_s, body_t = module.network.input_adapter(x), module.teacher.network.input_adapter(x)
        s = {
            "5": module.network.backbone[:6](body_s),
            "12": module.network.backbone[:13](body_s),
            "backbone": module.network.backbone(body_s),
        }
        t_net = module.teacher.network.backbone
        t = {"5@input": t_net[:5](body_t), "12@input": t_net[:12](body_t), "backbone": t_net(body_t)}
        expected = loss(ModelOutputs(module.network(x), s), ModelOutputs(torch.zeros(8), t), StepContext(y))
        ce = torch.nn.functional.cross_entropy(module.network(x), y)
    torch.testing.assert_close(logged["train/reviewkd"], expected)
    torch.testing.assert_close(total, ce + 5.0 * expected)
    total.backward()
    assert all(p.grad is not None for p in loss.parameters())
