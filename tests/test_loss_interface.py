"""One loss interface: every registered loss takes ``(student, teacher, context)``; one objective;
one declared logit temperature that the top-k teacher cache reads."""

from __future__ import annotations

import inspect
from collections.abc import Iterator

import pytest
import torch

from kd_lightning.cache.teacher import TeacherCacheConfig
from kd_lightning.errors import ConfigError
from kd_lightning.losses import DistillationLoss, LogitLoss, ModelOutputs, StepContext, create_loss, list_losses
from kd_lightning.losses._registry import _LOSSES, register_loss
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule
from kd_lightning.outputs import IGNORE_LABEL

STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})
AT = {"name": "at", "kwargs": {"student_layers": ["5"], "teacher_layers": ["5"]}}  # small_cnn's first stage
BATCH, CLASSES, TRAIN_SIZE = 6, 5, 20
# The fewest hyper-parameters that make each loss cheap on a toy batch (CRD's default 16384 negatives).
MINIMAL_KWARGS: dict[str, dict] = {
    "crd": {"num_negatives": 8},
    "ofd": {"teacher_batchnorms": ["bn"] * 3},
    "attention_mse": {"student_layers": ["block"], "teacher_layers": ["block"], "heads": 2},
}
# Losses that compare the two networks directly, so identical outputs give (about) zero; FitNets goes
# through a learned regressor and CRD contrasts with a memory, so neither is zero there.
ZERO_ON_IDENTICAL = {"kd", "dkd", "dist", "at", "sp", "rkd", "pkt", "attention_mse"}
PROJECTIONS = (".query", ".key")  # a transformer block's per-token projections


def _features(names: tuple[str, ...], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Plausible tapped shapes: the pooled ``backbone`` vector, ``[B, L, D]`` attention projections, a feature
    map for any stage."""
    shapes = {
        name: (8,) if name == "backbone" else (5, 8) if name.endswith(PROJECTIONS) else (4, 4, 4) for name in names
    }
    return {name: torch.randn(BATCH, *shape, generator=gen) for name, shape in shapes.items()}


def _outputs(loss: DistillationLoss, seed: int) -> tuple[ModelOutputs, ModelOutputs]:
    gen = torch.Generator().manual_seed(seed)
    student = ModelOutputs(torch.randn(BATCH, CLASSES, generator=gen), _features(loss.student_layers, gen))
    teacher = ModelOutputs(torch.randn(BATCH, CLASSES, generator=gen), _features(loss.teacher_layers, gen))
    return student, teacher


def _built(name: str) -> DistillationLoss:
    torch.manual_seed(0)
    loss = create_loss(name, **MINIMAL_KWARGS.get(name, {}))
    student, teacher = _outputs(loss, 0)
    loss.build({k: v.shape for k, v in student.features.items()}, {k: v.shape for k, v in teacher.features.items()})
    loss.bind_training_labels(torch.arange(TRAIN_SIZE) % CLASSES)
    loss.bind_teacher(_teacher_with_batchnorm())
    return loss


def _teacher_with_batchnorm() -> torch.nn.Module:
    """A stand-in teacher whose one BatchNorm (``bn``, as wide as the toy maps) gives OFD its margins and whose
    linear ``head`` gives WKD-L its class costs."""
    teacher = torch.nn.Module()
    teacher.bn = torch.nn.BatchNorm2d(4)
    teacher.head = torch.nn.Linear(8, CLASSES)
    torch.nn.init.normal_(teacher.bn.bias)
    return teacher


def _context() -> StepContext:
    return StepContext(torch.arange(BATCH) % CLASSES, indices=torch.arange(BATCH) * 3, epoch=2)


# Losses over several teachers' outputs at once; their call shape is checked in their own tests.
SEVERAL_TEACHERS = {"camkd_feature"}


@pytest.mark.parametrize("name", [name for name in list_losses() if name not in SEVERAL_TEACHERS])
def test_every_registered_loss_takes_the_one_call_shape(name: str) -> None:
    loss = _built(name)
    assert list(inspect.signature(type(loss).forward).parameters) == ["self", "student", "teacher", "context"]
    student, teacher = _outputs(loss, 1)
    inputs = [student.logits, *student.features.values()]
    for t in inputs:
        t.requires_grad_()
    value = loss(student, teacher, context=_context())
    assert value.shape == () and value.dtype == torch.float32 and value.item() > 0
    value.backward()
    assert any(t.grad is not None and t.grad.abs().sum() > 0 for t in inputs)  # the student is what it trains
    if name in ZERO_ON_IDENTICAL:
        assert loss(student, student, _context()).item() == pytest.approx(0.0, abs=1e-5)


def test_a_loss_that_needs_indices_says_how_to_get_them() -> None:
    loss = _built("crd")
    student, teacher = _outputs(loss, 1)
    with pytest.raises(ValueError, match="CRD needs the dataset index of each training sample: set `return_indices"):
        loss(student, teacher, StepContext(torch.zeros(BATCH, dtype=torch.long)))


def test_context_marks_the_unlabeled_samples() -> None:
    context = StepContext(torch.tensor([3, IGNORE_LABEL, 0, IGNORE_LABEL]))
    assert context.labeled.tolist() == [True, False, True, False]
    assert context.indices is None and context.epoch == 0


def test_distiller_hands_every_term_the_same_context(teacher_spec) -> None:
    terms = [{"name": "ce"}, {"name": "kd"}, {"name": "dkd", "kwargs": {"warmup_epochs": 4}}]
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, losses=terms)
    seen: list[tuple[object, dict]] = []
    for loss in module.loss_terms.values():
        loss.register_forward_pre_hook(lambda _, args, kwargs: seen.append((args[2], kwargs)), with_kwargs=True)
    x, context = torch.rand(4, 1, 8, 8), StepContext(torch.arange(4), epoch=1)
    student = module.student_outputs(x)
    components = module.loss_components(student, module.teacher(x), context)
    assert [(c is context, kw) for c, kw in seen] == [(True, {}), (True, {})]
    dkd = create_loss("dkd", warmup_epochs=4)(student, module.teacher(x), StepContext(torch.arange(4)))
    torch.testing.assert_close(components["dkd"], dkd * 2)  # epoch 1 of 4: factor 0.5, against epoch 0's 0.25


@pytest.mark.parametrize(
    "given", [{"alpha": 0.5}, {"temperature": 2.0}, {"alpha": 0.9, "temperature": 4.0}], ids=["alpha", "T", "both"]
)
def test_alpha_or_temperature_next_to_losses_is_refused(teacher_spec, given: dict) -> None:
    named = " and ".join(f"{k}: {v}" for k, v in given.items())
    with pytest.raises(ConfigError, match=f"^{named} would be ignored next to losses.*drop them"):
        DistillationModule(STUDENT, teacher_spec, num_classes=10, losses=[{"name": "kd"}], **given)


def test_without_losses_the_objective_is_hintons_and_says_so(teacher_spec) -> None:
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10)
    assert module.loss_weights == pytest.approx({"ce": 0.1, "kd": 0.9})
    assert module.loss_terms["kd"].temperature == 4.0 and module.logit_temperature() == 4.0
    assert (module.hparams["alpha"], module.hparams["temperature"], module.hparams["losses"]) == (0.9, 4.0, None)
    written = DistillationModule(STUDENT, teacher_spec, num_classes=10, losses=[AT], input_shape=(1, 8, 8))
    assert (written.hparams["alpha"], written.hparams["temperature"]) == (None, None)


@pytest.fixture
def scaled_kd() -> Iterator[type[LogitLoss]]:
    """A user's logit loss, registered for one test only."""

    @register_loss("test_scaled_kd")
    class ScaledKD(LogitLoss):
        def __init__(self, scale: float = 1.0, temperature: float = 2.5) -> None:
            super().__init__(temperature)
            self.scale = scale

        def forward(self, student, teacher, context):
            return self.scale * (student.logits / self.temperature - teacher.logits / self.temperature).pow(2).mean()

    yield ScaledKD
    del _LOSSES["test_scaled_kd"]


def test_a_new_logit_loss_declares_the_temperature_the_topk_cache_reads(teacher_spec, scaled_kd) -> None:
    losses = [{"name": "ce"}, {"name": "test_scaled_kd", "kwargs": {"scale": 3.0}}, AT]
    module = DistillationModule(
        STUDENT, teacher_spec, 10, losses=losses, input_shape=(1, 8, 8), teacher_cache=TeacherCacheConfig(topk=2)
    )
    assert module.logit_temperature() == 2.5 and module.teacher_cache.temperature == 2.5
    two = [{"name": "test_scaled_kd"}, {"name": "kd"}]
    with pytest.raises(ConfigError, match=r"at \[2.5, 4.0\]"):
        DistillationModule(STUDENT, teacher_spec, 10, losses=two, teacher_cache=TeacherCacheConfig(topk=2))
