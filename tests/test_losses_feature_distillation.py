"""Each feature method of RepDistiller/mdistiller takes a distillation step on digits with small CNNs.

The distiller taps the layers by name (pre-activations through ``@input`` of an in-place ReLU);
each logged term must equal the loss applied to the same layers cut out of the networks by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kd_lightning.data.batch import Batch
from kd_lightning.losses import ModelOutputs, StepContext
from kd_lightning.models import ModelSpec
from kd_lightning.models.feature_taps import FeatureTaps
from kd_lightning.modules import DistillationModule

STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})
DIGITS_SHAPE = (1, 8, 8)
STAGES = ["5", "12"]  # the two stages of small_cnn (last ReLU of each), 8×8 and 4×4
PREACT = ["5@input", "12@input"]  # the same, before their ReLU
# (term, weight, kwargs, teacher as wide as the student): one per method, RepDistiller's weights.
METHODS = [
    ("nst", 50.0, {"student_layers": STAGES, "teacher_layers": STAGES}, False),
    ("cc", 0.02, {"embed_dim": 6}, False),
    ("vid", 1.0, {"student_layers": STAGES, "teacher_layers": STAGES}, False),
    ("fsp", 50.0, {"student_layers": STAGES, "teacher_layers": STAGES}, True),
    ("kdsvd", 1.0, {"student_layers": STAGES, "teacher_layers": STAGES, "matrix": "ch_by_w"}, False),
    ("kdsvd", 1.0, {"student_layers": STAGES, "teacher_layers": STAGES}, True),
    ("ab", 1.0, {"student_layers": PREACT, "teacher_layers": PREACT}, False),
    ("ft", 200.0, {"student_layers": ["12"], "teacher_layers": ["12"]}, False),
]


def _cut(network, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The tapped tensor, from slicing the network's Sequential trunk rather than hooks."""
    body = network.input_adapter(x)
    if layer == "backbone":
        return network.backbone(body)
    index, _, io = layer.partition("@")
    return network.backbone[: int(index) + (0 if io == "input" else 1)](body)


@pytest.fixture(scope="module")
def narrow_teacher(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    """A teacher as wide as the student, for the methods that compare equal channel counts."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("narrow") / "teacher.pt"
    torch.save(STUDENT.build(10).state_dict(), path)
    return ModelSpec("small_cnn", weights_path=str(path), kwargs={"width": 4})


@pytest.mark.parametrize(
    ("name", "weight", "kwargs", "narrow"), METHODS, ids=[f"{m[0]}-{i}" for i, m in enumerate(METHODS)]
)
def test_a_distillation_step_trains_on_the_tapped_layers(
    name: str, weight: float, kwargs: dict, narrow: bool, teacher_spec: ModelSpec, narrow_teacher: ModelSpec
) -> None:
    torch.manual_seed(0)
    terms = [{"name": "ce"}, {"name": name, "weight": weight, "kwargs": kwargs}]
    teacher = narrow_teacher if narrow else teacher_spec
    module = DistillationModule(STUDENT, teacher, num_classes=10, losses=terms, input_shape=DIGITS_SHAPE)
    module.train()
    logged: dict[str, torch.Tensor] = {}
    module.log = lambda key, value, **kw: logged.__setitem__(key, value)
    module.log_dict = lambda values, **kw: logged.update(values) if isinstance(values, dict) else None
    optimizer = module.configure_optimizers()
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    total = module.training_step(Batch(y, images=x), 0)
    loss = module.loss_terms[name]
    with torch.no_grad():
        student = ModelOutputs(module.network(x), {n: _cut(module.network, n, x) for n in loss.student_layers})
        t_net = module.teacher.network
        teacher_out = ModelOutputs(t_net(x), {n: _cut(t_net, n, x) for n in loss.teacher_layers})
        expected = loss(student, teacher_out, StepContext(y))
        ce = F.cross_entropy(student.logits, y)
    torch.testing.assert_close(logged[f"train/{name}"], expected)
    torch.testing.assert_close(total, ce + weight * expected)
    assert expected.item() > 0
    total.backward()
    trained = [p for p in loss.parameters() if p.requires_grad]
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in trained} <= in_optimizer
    if name != "ft":  # FT's paraphraser is fixed after its initialisation stage
        assert all(p.grad is not None for p in trained)


def test_an_input_tap_on_an_in_place_relu_keeps_the_pre_activation() -> None:
    network = STUDENT.build(10).eval()
    x = torch.rand(3, 1, 8, 8)
    taps = FeatureTaps(network, ["5@input", "5"], x)
    _, features = taps(x)
    torch.testing.assert_close(features["5@input"], _cut(network, "5@input", x))
    assert features["5@input"].min() < 0 and features["5"].min() == 0
    torch.testing.assert_close(features["5"], features["5@input"].relu())


def test_the_initialisation_stage_trains_ab_alone_then_labels_only(teacher_spec: ModelSpec) -> None:
    ab = {"name": "ab", "kwargs": {"student_layers": PREACT, "teacher_layers": PREACT, "init_epochs": 2}}
    module = DistillationModule(
        STUDENT, teacher_spec, num_classes=10, losses=[{"name": "ce"}, ab], input_shape=DIGITS_SHAPE
    )
    assert module.objective_weights(1) == {"ab": 1.0}
    assert module.objective_weights(2) == {"ce": 1.0, "ab": 1.0}
    assert module.loss_terms["ab"].trains_alone(1) and not module.loss_terms["ab"].trains_alone(2)


def test_ft_paraphraser_stage_leaves_the_student_untouched(teacher_spec: ModelSpec, tmp_path: Path) -> None:
    ft = {"name": "ft", "weight": 200.0, "kwargs": {"init_epochs": 1, "reconstruction_weight": 0.005}}
    ft["kwargs"] |= {"student_layers": ["12"], "teacher_layers": ["12"]}
    module = DistillationModule(
        STUDENT, teacher_spec, num_classes=10, losses=[{"name": "ce"}, ft], input_shape=DIGITS_SHAPE
    )
    module.train()
    module.log = lambda *args, **kw: None
    module.log_dict = lambda *args, **kw: None
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    module.training_step(Batch(y, images=x), 0).backward()
    assert all(p.grad is None for p in module.network.parameters())
    assert all(p.grad is not None for p in module.loss_terms["ft"].paraphraser.parameters())
