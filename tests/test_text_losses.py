"""TinyBERT's hidden-state and attention-map losses against hand-computed values, and through the distiller."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kd_lightning.data import TextClassificationDataModule
from kd_lightning.losses import StepContext, attention_map_mse, create_loss, hidden_state_mse
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule
from kd_lightning.outputs import ModelOutputs
from tests._extras import require_extra
from tests._text_helpers import toy_rows, write_rows, write_tiny_bert
from tests.conftest import make_trainer

require_extra("text")

STUDENT_STATES = torch.tensor([[[1.0], [2.0], [9.0]]])  # [B=1, L=3, D_S=1]; the last token is padding
TEACHER_STATES = torch.tensor([[[2.0, 0.0], [4.0, 1.0], [0.0, 0.0]]])  # D_T = 2
WEIGHT, BIAS = torch.tensor([[2.0], [0.0]]), torch.tensor([0.0, 1.0])
# projected: [[2, 1], [4, 1], [18, 1]] → per-token squared-error means 0.5, 0 and (324 + 1) / 2
MASKED, UNMASKED = 0.25, (0.5 + 0 + 162.5) / 3


def test_hidden_state_mse_through_the_map_over_real_tokens_only() -> None:
    mask = torch.tensor([[1, 1, 0]])
    assert hidden_state_mse(STUDENT_STATES, TEACHER_STATES, WEIGHT, BIAS, mask).item() == pytest.approx(MASKED)
    assert hidden_state_mse(STUDENT_STATES, TEACHER_STATES, WEIGHT, BIAS).item() == pytest.approx(UNMASKED)


def test_hidden_state_mse_refuses_unequal_widths_without_a_map() -> None:
    with pytest.raises(ValueError, match="do not match"):
        hidden_state_mse(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))


def _hidden_loss(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], **kwargs):
    loss = create_loss("hidden_mse", student_layers=["s"], teacher_layers=["t"], **kwargs)
    loss.build({"s": torch.Size(student_shape)}, {"t": torch.Size(teacher_shape)})
    return loss


def _outputs(student: torch.Tensor, teacher: torch.Tensor) -> tuple[ModelOutputs, ModelOutputs]:
    return ModelOutputs(torch.zeros(len(student), 2), {"s": student}), ModelOutputs(torch.zeros(1, 2), {"t": teacher})


def test_registered_hidden_mse_reads_the_token_mask_from_the_step_context() -> None:
    loss = _hidden_loss((2, 3, 1), (2, 3, 2))
    with torch.no_grad():
        loss.projections[0].weight.copy_(WEIGHT)
        loss.projections[0].bias.copy_(BIAS)
    student, teacher = _outputs(STUDENT_STATES, TEACHER_STATES)
    masked = StepContext(torch.zeros(1), token_mask=torch.tensor([[1, 1, 0]]))
    assert loss(student, teacher, masked).item() == pytest.approx(MASKED)
    assert loss(student, teacher, StepContext(torch.zeros(1))).item() == pytest.approx(UNMASKED)
    # Pooled [B, D] vectors (a text model's backbone) average over the samples; a token mask does not apply.
    pooled = _hidden_loss((2, 1), (2, 2))
    with torch.no_grad():
        pooled.projections[0].weight.copy_(WEIGHT)
        pooled.projections[0].bias.copy_(BIAS)
    student, teacher = _outputs(torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0, 1.0], [5.0, 1.0]]))
    assert pooled(student, teacher, masked).item() == pytest.approx(0.25)  # errors (0, 0) and (1, 0)


def test_hidden_mse_learns_its_map_and_compares_directly_without_one() -> None:
    torch.manual_seed(0)
    loss = _hidden_loss((2, 4, 3), (2, 4, 5))
    s, t = torch.randn(2, 4, 3), torch.randn(2, 4, 5)
    value = loss(*_outputs(s, t), StepContext(torch.zeros(2)))
    value.backward()
    projection = loss.projections[0]
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    torch.testing.assert_close(value, ((s @ projection.weight.T + projection.bias - t) ** 2).mean())
    direct = _hidden_loss((2, 4, 5), (2, 4, 5), project=False)
    assert len(list(direct.parameters())) == 0
    wide = s @ torch.ones(3, 5)
    torch.testing.assert_close(direct(*_outputs(wide, t), StepContext(torch.zeros(2))), ((wide - t) ** 2).mean())


def test_hidden_mse_refuses_layers_it_cannot_pair() -> None:
    with pytest.raises(ValueError, match="pair per-token states with per-token states"):
        _hidden_loss((2, 4, 3), (2, 5))
    with pytest.raises(ValueError, match="widths 3 .* and 5 .*set project: true"):
        _hidden_loss((2, 4, 3), (2, 4, 5), project=False)


def test_attention_map_mse_over_pairs_of_real_tokens() -> None:
    student = torch.zeros(1, 2, 2, 2)  # [B, h=2, L=2, L=2]
    teacher = torch.tensor([[[[1.0, 5.0], [5.0, 5.0]], [[3.0, 5.0], [5.0, 5.0]]]])
    mask = torch.tensor([[1, 0]])  # only the pair (0, 0) is real in each head
    # head 1: 1² = 1, head 2: 3² = 9 → mean over heads 5
    assert attention_map_mse(student, teacher, mask).item() == pytest.approx(5.0)
    assert attention_map_mse(student, teacher).item() == pytest.approx((1 + 75 + 9 + 75) / 8)
    with pytest.raises(ValueError, match="same heads"):
        attention_map_mse(torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 3, 3))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def _tinybert_distiller(bert_dir: Path) -> DistillationModule:
    """A 2-layer, 8-wide BERT student whose layers mimic layers 2 and 4 of the 4-layer, 16-wide teacher."""
    student = ModelSpec("small_bert", kwargs={"tokenizer": str(bert_dir), "layers": 2, "hidden": 8, "max_length": 32})
    layers = {"student_layers": ["stage:0", "stage:1"], "teacher_layers": ["stage:1", "stage:3"]}
    losses = [{"name": "kd"}, {"name": "hidden_mse", "kwargs": layers}]
    return DistillationModule(student, ModelSpec(f"hf/{bert_dir}", pretrained=True), 2, losses=losses)


def test_hidden_mse_through_the_distiller_on_a_tiny_bert(bert_dir: Path) -> None:
    module = _tinybert_distiller(bert_dir).eval()
    assert module.student_taps is not None and module.teacher.taps is not None
    assert {k: tuple(v[2:]) for k, v in module.student_taps.shapes.items()} == {"stage:0": (8,), "stage:1": (8,)}
    assert {k: tuple(v[2:]) for k, v in module.teacher.taps.shapes.items()} == {"stage:1": (16,), "stage:3": (16,)}
    ids = torch.tensor([[2, 5, 9, 3, 0, 0], [2, 6, 7, 8, 10, 3]])
    mask = module.network.input_config.token_mask(ids)
    student, teacher = module.student_outputs(ids), module.teacher(ids)
    context = StepContext(torch.tensor([0, 1]), token_mask=mask)
    value = module.loss_components(student, teacher, context)["hidden_mse"]
    expected = torch.zeros(())
    for index, (s, t) in enumerate((("stage:0", "stage:1"), ("stage:1", "stage:3"))):
        projection = module.loss_terms["hidden_mse"].projections[index]
        per_token = ((projection(student.features[s]) - teacher.features[t]) ** 2).mean(-1)
        expected = expected + (per_token * mask).sum() / mask.sum()
    torch.testing.assert_close(value, expected)
    # The teacher's states at padding do not count.
    noisy = ModelOutputs(teacher.logits, {k: v + 100.0 * (1 - mask[..., None]) for k, v in teacher.features.items()})
    torch.testing.assert_close(module.loss_components(student, noisy, context)["hidden_mse"], value)


def test_distiller_hands_hidden_mse_the_batchs_real_tokens(bert_dir: Path, tmp_path: Path) -> None:
    write_rows(tmp_path / "train.tsv", toy_rows(repeat=5))
    data = TextClassificationDataModule(str(bert_dir), data_dir=str(tmp_path), batch_size=8, max_length=16)
    module = _tinybert_distiller(bert_dir)
    ids: list[torch.Tensor] = []
    masks: list[torch.Tensor | None] = []
    module.network.register_forward_pre_hook(lambda _, args: ids.append(args[0]))
    module.loss_terms["hidden_mse"].register_forward_pre_hook(lambda _, args: masks.append(args[2].token_mask))
    trainer = make_trainer(limit_train_batches=2, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert len(masks) == 2
    for tokens, mask in zip(ids, masks, strict=True):
        assert mask is not None and torch.equal(mask, (tokens != 0).long())
        assert 0 < int(mask.sum()) < mask.numel()  # the batch of 8 texts is padded to its longest
    assert trainer.callback_metrics["train/hidden_mse"].item() > 0
