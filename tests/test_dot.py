"""DOT: two momentum buffers by hand, SGD when Δ = 0, and the distiller feeding it ce and the other terms."""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins import MixedPrecision
from torch import nn
from torch.func import functional_call

from kd_lightning.errors import ConfigError
from kd_lightning.losses import kd_loss
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule
from kd_lightning.optim import DOT
from tests.conftest import make_trainer

STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})
LR, MU, DELTA, DECAY = 0.1, 0.9, 0.075, 0.01
# fp16 loss scaling as on a GPU; refused before any step runs, so the CPU never computes in fp16.
FP16_LOSS_SCALING = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
HINT_LAYERS = {"student_layers": ["backbone.5"], "teacher_layers": ["backbone.5"]}


def _dot_step(optimizer: DOT, params: list[torch.Tensor], task: list, distillation: list) -> None:
    """One step with the given task gradients (``None``: no task gradient) and distillation gradients,
    the latter through a linear loss whose gradient they are."""
    optimizer.zero_grad()
    optimizer.add_distillation_loss(
        sum((g * p).sum() for p, g in zip(params, distillation, strict=True) if g is not None)
    )
    for param, grad in zip(params, task, strict=True):
        param.grad = grad


def test_two_steps_follow_the_two_buffer_rule_by_hand() -> None:
    a0, b0 = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    c0 = torch.tensor([3.0, 0.25], dtype=torch.float64)
    params = [nn.Parameter(t.clone()) for t in (a0, b0, c0)]  # a: both losses, b: task only, c: distillation only
    optimizer = DOT(params, lr=LR, momentum=MU, delta=DELTA, weight_decay=DECAY)
    t1, t2 = torch.tensor([0.3, -0.1], dtype=torch.float64), torch.tensor([-0.2, 0.4], dtype=torch.float64)
    d1, d2 = torch.tensor([1.0, 0.5], dtype=torch.float64), torch.tensor([-0.7, 0.2], dtype=torch.float64)
    u1, u2 = torch.tensor([0.6], dtype=torch.float64), torch.tensor([-0.3], dtype=torch.float64)
    e1, e2 = torch.tensor([0.8, -0.4], dtype=torch.float64), torch.tensor([0.1, 0.9], dtype=torch.float64)

    _dot_step(optimizer, params, [t1, u1, None], [d1, None, e1])
    optimizer.step()
    _dot_step(optimizer, params, [t2, u2, None], [d2, None, e2])
    optimizer.step()

    # a: task buffer at μ − Δ with the weight decay, distillation buffer at μ + Δ without it.
    task, dist = t1 + DECAY * a0, d1
    a1 = a0 - LR * (task + dist)
    task, dist = (MU - DELTA) * task + t2 + DECAY * a1, (MU + DELTA) * dist + d2
    a2 = a1 - LR * (task + dist)
    # b: plain SGD with momentum μ.
    task = u1 + DECAY * b0
    b1 = b0 - LR * task
    b2 = b1 - LR * (MU * task + u2 + DECAY * b1)
    # c: momentum μ, weight decay from its second step on (the reference's first step has none).
    c1 = c0 - LR * e1
    c2 = c1 - LR * (MU * e1 + e2 + DECAY * c1)
    for param, expected in zip(params, (a2, b2, c2), strict=True):
        torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-12)


def _two_losses(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(x)
    return out.square().mean(), (out - 1.0).abs().mean() + out.sin().sum()


def test_delta_zero_is_sgd_on_the_summed_loss_with_accumulation() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    reference = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    reference.load_state_dict(model.state_dict())
    dot = DOT(model.parameters(), lr=0.05, momentum=0.9, delta=0.0, weight_decay=5e-4)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    for _ in range(4):
        micro_batches = [torch.randn(6, 5) for _ in range(2)]  # two accumulated backward passes per step
        dot.zero_grad()
        sgd.zero_grad()
        for x in micro_batches:
            task, distillation = _two_losses(model, x)
            dot.add_distillation_loss(distillation)
            task.backward()
            sum(_two_losses(reference, x)).backward()
        dot.step()
        sgd.step()
    torch.testing.assert_close(list(model.parameters()), list(reference.parameters()))


def test_distiller_hands_ce_and_kd_to_their_buffers(digits, teacher_spec) -> None:
    """Two steps on digits equal a replay of the rule with ``0.1·CE`` as task and ``0.9·KD`` as distillation."""
    optimizer = lambda params: DOT(params, lr=0.2, momentum=0.9, delta=0.075, weight_decay=5e-4)  # noqa: E731
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, optimizer=optimizer)
    start = {name: p.detach().clone() for name, p in module.network.named_parameters()}
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    original_step = module.training_step

    def recording_step(batch, batch_idx):
        batches.append((batch.inputs.clone(), batch.labels.clone()))
        return original_step(batch, batch_idx)

    module.training_step = recording_step  # type: ignore[method-assign]
    make_trainer(max_steps=2, limit_val_batches=0).fit(module, digits)

    assert len(batches) == 2
    params, task_buffers, dist_buffers = dict(start), {}, {}
    network = module.network.train()
    for step, (x, y) in enumerate(batches):
        weights = {name: p.clone().requires_grad_() for name, p in params.items()}
        logits = functional_call(network, weights, (x,))
        teacher_logits = module.teacher(x).logits
        task_grads = torch.autograd.grad(0.1 * F.cross_entropy(logits, y), list(weights.values()), retain_graph=True)
        dist_grads = torch.autograd.grad(0.9 * kd_loss(logits, teacher_logits, 4.0), list(weights.values()))
        for (name, p), g_task, g_dist in zip(params.items(), task_grads, dist_grads, strict=True):
            g_task = g_task + 5e-4 * p
            task_buffers[name] = g_task if step == 0 else (0.9 - 0.075) * task_buffers[name] + g_task
            dist_buffers[name] = g_dist if step == 0 else (0.9 + 0.075) * dist_buffers[name] + g_dist
            params[name] = p - 0.2 * (task_buffers[name] + dist_buffers[name])
    trained = dict(module.network.named_parameters())
    for name, expected in params.items():
        assert not torch.equal(expected, start[name]), name
        torch.testing.assert_close(trained[name].detach(), expected, rtol=1e-4, atol=1e-6, msg=name)


def test_distiller_accumulates_both_gradients_like_sgd_when_delta_is_zero(digits, teacher_spec) -> None:
    """Lightning zeroes ``p.grad`` between the training step and ``backward``: the distillation gradient
    handed over in the step must survive it and add up over the accumulated batches."""

    def fit(optimizer) -> dict[str, torch.Tensor]:
        L.seed_everything(0, verbose=False)
        module = DistillationModule(STUDENT, teacher_spec, num_classes=10, optimizer=optimizer)
        start = {name: p.detach().clone() for name, p in module.network.named_parameters()}
        make_trainer(max_steps=2, accumulate_grad_batches=2, limit_val_batches=0).fit(module, digits)
        trained = {name: p.detach() for name, p in module.network.named_parameters()}
        assert all(not torch.equal(start[name], p) for name, p in trained.items())
        return trained

    dot = fit(lambda params: DOT(params, lr=0.2, momentum=0.9, delta=0.0, weight_decay=5e-4))
    sgd = fit(lambda params: torch.optim.SGD(params, lr=0.2, momentum=0.9, weight_decay=5e-4))
    torch.testing.assert_close(dot, sgd, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delta": 0.2}, "momentum - delta and momentum + delta must lie in [0, 1)"),
        ({"delta": -0.1}, "momentum - delta and momentum + delta must lie in [0, 1)"),
        ({"lr": -1.0}, "lr must be >= 0"),
        ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
    ],
)
def test_bad_hyper_parameters_are_one_line(kwargs, message) -> None:
    options = {"lr": 0.05, "momentum": 0.9, "delta": 0.075} | kwargs
    with pytest.raises(ConfigError, match=re.escape(message)) as raised:
        DOT([nn.Parameter(torch.zeros(2))], **options)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("module_kwargs", "trainer_kwargs", "message"),
    [
        ({"losses": [{"name": "kd", "weight": 1.0}]}, {}, "balances the ce term against distillation terms"),
        ({"losses": [{"name": "ce", "weight": 1.0}]}, {}, "balances the ce term against distillation terms"),
        (
            {
                "losses": [
                    {"name": "ce", "weight": 1.0},
                    {"name": "fitnet", "weight": 1.0, "kwargs": {**HINT_LAYERS, "hint_epochs": 1}},
                ],
                "input_shape": (1, 8, 8),
            },
            {},
            r"terms \['fitnet'\] train alone in a first stage",
        ),
        ({}, {"gradient_clip_val": 1.0}, "gradient_clip_val would clip only the task part"),
        ({}, {"plugins": [FP16_LOSS_SCALING]}, "precision 16-mixed scales only the task part"),
    ],
)
def test_what_dot_cannot_split_is_refused_in_one_line(
    digits, teacher_spec, module_kwargs, trainer_kwargs, message
) -> None:
    optimizer = lambda params: DOT(params, lr=0.05)  # noqa: E731
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, optimizer=optimizer, **module_kwargs)
    with pytest.raises(ConfigError, match=message) as raised:
        make_trainer(max_steps=1, limit_val_batches=0, **trainer_kwargs).fit(module, digits)
    assert "\n" not in str(raised.value)
