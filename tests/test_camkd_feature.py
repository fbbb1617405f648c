"""CA-MKD's feature term: by hand, by gradcheck, against the reference's CalWeight + CAMKD arithmetic
rewritten here, and its refusals in the distiller."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kd_lightning.errors import ConfigError
from kd_lightning.losses import CAMKDFeatureLoss, StepContext, camkd_feature_loss
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule
from kd_lightning.outputs import ModelOutputs, member_name

STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})
TEACHERS = [ModelSpec("small_cnn", kwargs={"width": w}) for w in (4, 6, 8)]


def test_two_teachers_by_hand() -> None:
    # Classifier logits on the embedded student: uniform (CE ln 2) and 3:1 for the label (CE ln 4/3); softmax over
    # the CEs is 0.6 and 0.4, so the weights are 0.4 and 0.6. Squared gaps 1 and 4; one sample, two teachers.
    embedded = [torch.ones(1, 1, 1, 1, dtype=torch.float64), torch.full((1, 1, 1, 1), 2.0, dtype=torch.float64)]
    teacher_maps = [torch.zeros(1, 1, 1, 1, dtype=torch.float64)] * 2
    logits = [
        torch.tensor([[0.0, 0.0]], dtype=torch.float64),
        torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64),
    ]
    value = camkd_feature_loss(embedded, teacher_maps, logits, torch.tensor([0]))
    assert value.item() == pytest.approx((0.4 * 1 + 0.6 * 4) / 2)


def test_gradcheck_through_the_maps_and_the_weights() -> None:
    generator = torch.Generator().manual_seed(0)
    embedded = [torch.randn(3, 2, 2, 2, dtype=torch.float64, generator=generator, requires_grad=True) for _ in range(3)]
    teacher_maps = [torch.randn(3, 2, 2, 2, dtype=torch.float64, generator=generator) for _ in range(3)]
    logits = [torch.randn(3, 4, dtype=torch.float64, generator=generator, requires_grad=True) for _ in range(3)]
    labels = torch.tensor([0, 3, 1])
    assert torch.autograd.gradcheck(
        lambda *t: camkd_feature_loss(t[:3], teacher_maps, t[3:], labels), (*embedded, *logits)
    )


def _reference(loss: CAMKDFeatureLoss, heads: list[nn.Linear], feat_s, teacher_maps, target) -> torch.Tensor:
    """Rorozhl/CA-MKD's ``CalWeight.forward`` then ``CAMKD.forward``, rewritten: resize, embed, the teacher's
    ``avgpool(t_H)`` + flatten + ``fc`` on the embedded map, CE weights (not detached), per-sample MSE."""
    trans, outputs = [], []
    s_h = feat_s.shape[2]
    for embed, head, mid_t in zip(loss.embeds, heads, teacher_maps, strict=True):
        t_h = mid_t.shape[2]
        if s_h >= t_h:
            feat_s = F.adaptive_avg_pool2d(feat_s, (t_h, t_h))
        else:
            feat_s = F.interpolate(feat_s, size=(t_h, t_h), mode="bilinear")
        trans_s = embed(feat_s)
        trans.append(trans_s)
        outputs.append(head(nn.AvgPool2d(t_h)(trans_s).flatten(1)))
    bsz, num_teacher = target.shape[0], len(trans)
    loss_t = torch.stack([F.cross_entropy(out, target, reduction="none") for out in outputs])
    weight = (1.0 - F.softmax(loss_t, dim=0)) / (num_teacher - 1)
    loss_st = torch.stack(
        [F.mse_loss(s, t, reduction="none").reshape(bsz, -1).mean(-1) for s, t in zip(trans, teacher_maps, strict=True)]
    )
    return (weight * loss_st).sum() / (bsz * num_teacher)


@pytest.mark.parametrize("student_side", [2, 8])  # upsampled to the teachers' 4 x 4, and pooled down to it
def test_value_and_gradients_equal_the_reference(student_side: int) -> None:
    torch.manual_seed(0)
    loss = CAMKDFeatureLoss("s", "t", start_epoch=0).double()
    teacher_maps = [torch.rand(5, c, 4, 4, dtype=torch.float64) for c in (6, 8, 6)]
    shapes = {member_name(k, "t"): t.shape for k, t in enumerate(teacher_maps)}
    loss.build({"s": torch.Size((5, 3, student_side, student_side))}, shapes)
    loss.double()
    heads = [nn.Linear(t.shape[1], 7).double() for t in teacher_maps]
    networks = nn.ModuleList()
    for head in heads:
        network = nn.Module()
        network.head, network.feature_dim = head, head.in_features
        networks.append(network)
    loss.bind_teacher(networks)
    student_map = torch.rand(5, 3, student_side, student_side, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 6, 2, 2, 5])
    features = {member_name(k): torch.zeros(5, 7) for k in range(3)}
    features |= {member_name(k, "t"): t for k, t in enumerate(teacher_maps)}
    value = loss(
        ModelOutputs(torch.zeros(5, 7), {"s": student_map}),
        ModelOutputs(torch.zeros(5, 7), features),
        StepContext(labels),
    )
    ours = torch.autograd.grad(value, [student_map, *loss.parameters()])
    expected = _reference(loss, heads, student_map, teacher_maps, labels)
    theirs = torch.autograd.grad(expected, [student_map, *loss.parameters()])
    torch.testing.assert_close(value, expected)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    assert inspect.signature(type(loss).forward).parameters.keys() == {"self", "student", "teacher", "context"}


@pytest.mark.filterwarnings("ignore:.*untrained")
def test_the_term_is_left_out_before_its_start_epoch() -> None:
    module = DistillationModule(
        STUDENT,
        TEACHERS,
        num_classes=10,
        input_shape=(1, 8, 8),
        teacher_options={"ensemble": "camkd"},
        losses=[{"name": "ce"}, {"name": "camkd_feature", "weight": 50.0}],
    )
    x, labels = torch.rand(4, 1, 8, 8), torch.tensor([1, 2, 3, 4])
    student, teacher = module.student_outputs(x), module.teacher(x)
    assert module.loss_components(student, teacher, StepContext(labels, epoch=0))["camkd_feature"].item() == 0.0
    assert module.loss_components(student, teacher, StepContext(labels, epoch=1))["camkd_feature"].item() > 0.0


@pytest.mark.filterwarnings("ignore:.*untrained")
def test_one_teacher_or_a_layer_its_classifier_cannot_read_is_refused() -> None:
    term = [{"name": "camkd_feature"}]
    with pytest.raises(ConfigError, match="give `teacher` a list of teachers"):
        DistillationModule(STUDENT, TEACHERS[0], num_classes=10, input_shape=(1, 8, 8), losses=term)
    first_stage = [{"name": "camkd_feature", "kwargs": {"teacher_layer": "stage:0"}}]
    with pytest.raises(ConfigError, match="tap the last stage"):
        DistillationModule(STUDENT, TEACHERS, num_classes=10, input_shape=(1, 8, 8), losses=first_stage)
