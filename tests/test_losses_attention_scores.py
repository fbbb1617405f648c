"""TinyBERT's attention-score loss: hand values, gradcheck, a BERT's own attention, the distiller."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from kd_lightning.cache.teacher import TeacherCacheConfig
from kd_lightning.data import TextClassificationDataModule
from kd_lightning.errors import ConfigError
from kd_lightning.losses import StepContext, attention_map_mse, attention_scores, create_loss
from kd_lightning.models import ModelSpec
from kd_lightning.models.feature_taps import FeatureTaps
from kd_lightning.models.hf_encoder import EncoderTrunk
from kd_lightning.modules import DistillationModule
from kd_lightning.outputs import ModelOutputs
from tests._extras import require_extra
from tests._text_helpers import toy_rows, write_rows, write_tiny_bert
from tests.conftest import make_trainer

require_extra("text")

# One text of two tokens, the second padding; heads of width 1 (student) and 2 (teacher).
QUERY = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], dtype=torch.float64)
KEY = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
# head 0: q (1, 3) × k (1, 0) → [[1, 0], [3, 0]]; head 1: q (2, 4) × k (0, 1) → [[0, 2], [0, 4]]
STUDENT_SCORES = torch.tensor([[[[1.0, 0.0], [3.0, 0.0]], [[0.0, 2.0], [0.0, 4.0]]]], dtype=torch.float64)
# head 0: q = k = (1, 1) → 2 / √2 everywhere; head 1: q = k = 0
TEACHER_QUERY = torch.tensor([[[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]], dtype=torch.float64)
# Errors against the teacher's (√2, 0) heads: pair (0, 0) only with the mask, every pair without.
MASKED = ((1 - math.sqrt(2)) ** 2 + 0.0) / 2
UNMASKED = (((1 - math.sqrt(2)) ** 2 + 2 + (3 - math.sqrt(2)) ** 2 + 2) + (0 + 4 + 0 + 16)) / 8
BLOCKS = {"student_layers": ["s"], "teacher_layers": ["t"]}


def _outputs(sq, sk, tq, tk) -> tuple[ModelOutputs, ModelOutputs]:
    student = {"s.attention.self.query": sq, "s.attention.self.key": sk}
    teacher = {"t.attention.self.query": tq, "t.attention.self.key": tk}
    return ModelOutputs(torch.zeros(len(sq), 2), student), ModelOutputs(torch.zeros(len(tq), 2), teacher)


def test_attention_scores_split_the_heads_and_scale_by_their_width() -> None:
    torch.testing.assert_close(attention_scores(QUERY, KEY, heads=2), STUDENT_SCORES)
    teacher = attention_scores(TEACHER_QUERY, TEACHER_QUERY, heads=2)
    torch.testing.assert_close(teacher[0, 0], torch.full((2, 2), math.sqrt(2), dtype=torch.float64))
    assert teacher[0, 1].abs().sum() == 0
    with pytest.raises(ValueError, match=r"multiple of the 3 heads"):
        attention_scores(QUERY, KEY, heads=3)


def test_registered_loss_by_hand_in_float64_over_real_pairs() -> None:
    loss = create_loss("attention_mse", heads=2, **BLOCKS)
    student, teacher = _outputs(QUERY, KEY, TEACHER_QUERY, TEACHER_QUERY)
    masked = loss(student, teacher, StepContext(torch.zeros(1), token_mask=torch.tensor([[1, 0]])))
    assert masked.dtype == torch.float64 and masked.item() == pytest.approx(MASKED, rel=1e-12)
    assert loss(student, teacher, StepContext(torch.zeros(1))).item() == pytest.approx(UNMASKED, rel=1e-12)


def test_attention_mse_gradcheck() -> None:
    gen = torch.Generator().manual_seed(0)
    sq, sk = (torch.randn(2, 5, 6, dtype=torch.float64, generator=gen, requires_grad=True) for _ in range(2))
    tq, tk = torch.randn(2, 5, 9, dtype=torch.float64, generator=gen), torch.randn(2, 5, 9, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    loss = create_loss("attention_mse", heads=3, **BLOCKS)
    context = StepContext(torch.zeros(2), token_mask=mask)
    assert torch.autograd.gradcheck(lambda q, k: loss(*_outputs(q, k, tq, tk), context), (sq, sk))


def test_padding_and_what_it_holds_change_nothing() -> None:
    gen = torch.Generator().manual_seed(1)
    sq, sk, tq, tk = (torch.randn(1, 3, 4, generator=gen) for _ in range(4))
    loss = create_loss("attention_mse", heads=2, **BLOCKS)
    alone = loss(*_outputs(sq, sk, tq, tk), StepContext(torch.zeros(1), token_mask=torch.ones(1, 3)))
    # The same text padded with 4 positions whose projections hold noise.
    padded = [torch.cat([t, 50 * torch.randn(1, 4, 4, generator=gen)], dim=1) for t in (sq, sk, tq, tk)]
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0]])
    torch.testing.assert_close(loss(*_outputs(*padded), StepContext(torch.zeros(1), token_mask=mask)), alone)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def test_softmax_of_the_tapped_scores_is_the_attention_bert_returns(bert_dir: Path) -> None:
    from transformers import BertModel

    model = BertModel.from_pretrained(bert_dir, attn_implementation="eager")
    ids = torch.tensor([[2, 5, 9, 3, 0, 0], [2, 6, 7, 8, 10, 3]])
    mask = (ids != 0).long()
    names = [f"model.encoder.layer.{i}.attention.self.{part}" for i in range(4) for part in ("query", "key")]
    trunk = EncoderTrunk(model, pad_id=0).eval()  # masks the padding, as in training; eval: no attention dropout
    taps = FeatureTaps(trunk, names, ids[:1])
    _, features = taps(ids)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    for layer in range(4):
        query, key = (features[f"model.encoder.layer.{layer}.attention.self.{part}"] for part in ("query", "key"))
        scores = attention_scores(query, key, heads=model.config.num_attention_heads)
        # The same scores recomputed from the layer's input and its projection weights.
        attention = model.encoder.layer[layer].attention.self
        hidden = reference.hidden_states[layer]
        q = (hidden @ attention.query.weight.T + attention.query.bias).view(2, 6, 2, 8).transpose(1, 2)
        k = (hidden @ attention.key.weight.T + attention.key.bias).view(2, 6, 2, 8).transpose(1, 2)
        torch.testing.assert_close(scores, q @ k.transpose(-1, -2) / math.sqrt(8))
        probabilities = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf")).softmax(-1)
        torch.testing.assert_close(probabilities, reference.attentions[layer])


def _student(bert_dir: Path, heads: int = 2) -> ModelSpec:
    kwargs = {"tokenizer": str(bert_dir), "layers": 2, "hidden": 8, "heads": heads, "max_length": 32}
    return ModelSpec("small_bert", kwargs=kwargs)


ATTENTION = {
    "name": "attention_mse",
    "kwargs": {"student_layers": ["stage:0", "stage:1"], "teacher_layers": ["stage:1", "stage:3"]},
}


def _distiller(bert_dir: Path, losses: list | None = None, **options) -> DistillationModule:
    """A 2-layer, 8-wide BERT student whose attention mimics layers 2 and 4 of the 4-layer, 16-wide teacher."""
    torch.manual_seed(0)
    teacher = ModelSpec(f"hf/{bert_dir}", pretrained=True)
    losses = [{"name": "kd"}, ATTENTION] if losses is None else losses
    return DistillationModule(_student(bert_dir), teacher, 2, losses=losses, **options)


def _explicit_scores(encoder, ids: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
    """Each named layer's scores from its input hidden states and weights, outside any tap."""
    mask = (ids != 0).long()
    hidden = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    scores = []
    for layer in layers:
        attention = encoder.encoder.layer[layer].attention.self
        heads, width = attention.num_attention_heads, attention.attention_head_size
        q, k = (
            (hidden[layer] @ p.weight.T + p.bias).view(*ids.shape, heads, width).transpose(1, 2)
            for p in (attention.query, attention.key)
        )
        scores.append(q @ k.transpose(-1, -2) / math.sqrt(width))
    return scores


def test_attention_mse_through_the_distiller_equals_an_explicit_recomputation(bert_dir: Path) -> None:
    module = _distiller(bert_dir).eval()
    loss = module.loss_terms["attention_mse"]
    assert (loss.student_heads, loss.teacher_heads) == ([2, 2], [2, 2])  # read from the networks' attention
    ids = torch.tensor([[2, 5, 9, 3, 0, 0], [2, 6, 7, 8, 10, 3]])
    mask = module.network.input_config.token_mask(ids)
    context = StepContext(torch.tensor([0, 1]), token_mask=mask)
    value = module.loss_components(module.student_outputs(ids), module.teacher(ids), context)["attention_mse"]
    with torch.no_grad():
        student = _explicit_scores(module.network.backbone.model, ids, (0, 1))
        teacher = _explicit_scores(module.teacher.network.backbone.model, ids, (1, 3))
    pairs = (mask[:, None, :, None] * mask[:, None, None, :]).expand(-1, 2, -1, -1)
    expected = sum(((s - t) ** 2 * pairs).sum() / pairs.sum() for s, t in zip(student, teacher, strict=True))
    torch.testing.assert_close(value, expected)
    assert value.item() > 0
    # The same texts padded four positions longer: the loss does not move.
    longer = torch.cat([ids, torch.zeros(2, 4, dtype=torch.long)], dim=1)
    context = StepContext(torch.tensor([0, 1]), token_mask=module.network.input_config.token_mask(longer))
    padded = module.loss_components(module.student_outputs(longer), module.teacher(longer), context)
    torch.testing.assert_close(padded["attention_mse"], value)


def test_distiller_refuses_unequal_head_counts_naming_both(bert_dir: Path) -> None:
    teacher = ModelSpec(f"hf/{bert_dir}", pretrained=True)
    with pytest.raises(
        ConfigError,
        match=r"^attention_mse .* student layer 'stage:0' has 4 heads and teacher layer "
        r"'stage:1' 2: give the student 2 heads$",
    ):
        DistillationModule(_student(bert_dir, heads=4), teacher, 2, losses=[ATTENTION])
    wrong = {**ATTENTION, "kwargs": {**ATTENTION["kwargs"], "heads": 4}}
    with pytest.raises(ConfigError, match=r"heads: 4, but student layer 'stage:0.attention.self.query' declares 2"):
        DistillationModule(_student(bert_dir), teacher, 2, losses=[wrong])


def test_one_training_step_moves_the_student_attention(bert_dir: Path, tmp_path: Path) -> None:
    write_rows(tmp_path / "train.tsv", toy_rows(repeat=5))
    data = TextClassificationDataModule(str(bert_dir), data_dir=str(tmp_path), batch_size=8, max_length=16)
    module = _distiller(bert_dir, losses=[ATTENTION], optimizer=torch.optim.SGD)  # the attention term alone
    seen: list[float] = []
    module.loss_terms["attention_mse"].register_forward_hook(lambda *args: seen.append(args[2].item()))
    layers = module.network.backbone.model.encoder.layer
    # Layer 1's value projection feeds its output only, never the scores of layer 1 or 0.
    watched = {"query 0": layers[0].attention.self.query, "query 1": layers[1].attention.self.query}
    watched["value 1"] = layers[1].attention.self.value
    before = {name: p.weight.detach().clone() for name, p in watched.items()}
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    trainer = make_trainer(limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=data)
    assert len(seen) == 1 and seen[0] > 0
    assert trainer.callback_metrics["train/attention_mse"].item() == pytest.approx(seen[0])
    changed = {name for name, p in watched.items() if not torch.equal(p.weight, before[name])}
    assert changed == {"query 0", "query 1"}
    assert all(torch.equal(v, teacher_before[k]) for k, v in module.teacher.state_dict().items())


def test_teacher_cache_refuses_the_per_token_projections(bert_dir: Path, tmp_path: Path) -> None:
    write_rows(tmp_path / "train.tsv", toy_rows(repeat=2))
    data = TextClassificationDataModule(str(bert_dir), data_dir=str(tmp_path), batch_size=8, max_length=16)
    module = _distiller(bert_dir, teacher_cache=TeacherCacheConfig())
    with pytest.raises(ConfigError, match=r"per-token layers \['stage:1.attention.self.query', .*drop teacher_cache"):
        make_trainer(limit_train_batches=1, limit_val_batches=0).fit(module, datamodule=data)


def test_attention_map_mse_is_what_the_term_averages() -> None:
    # The term is attention_map_mse over the rebuilt scores, per layer pair, summed.
    loss = create_loss("attention_mse", heads=2, student_layers=["a", "b"], teacher_layers=["c", "d"])
    gen = torch.Generator().manual_seed(2)
    t = {f"{n}.attention.self.{p}": torch.randn(1, 3, 4, generator=gen) for n in "abcd" for p in ("query", "key")}
    student = ModelOutputs(torch.zeros(1, 2), {k: v for k, v in t.items() if k[0] in "ab"})
    teacher = ModelOutputs(torch.zeros(1, 2), {k: v for k, v in t.items() if k[0] in "cd"})
    scores = {n: attention_scores(t[f"{n}.attention.self.query"], t[f"{n}.attention.self.key"], 2) for n in "abcd"}
    expected = attention_map_mse(scores["a"], scores["c"]) + attention_map_mse(scores["b"], scores["d"])
    torch.testing.assert_close(loss(student, teacher, StepContext(torch.zeros(1))), expected)


def test_head_counts_come_from_distilbert_too_or_from_the_heads_argument() -> None:
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(vocab_size=30, dim=16, n_layers=1, n_heads=4, hidden_dim=32, max_position_embeddings=16)
    distilbert = DistilBertModel(config)
    blocks = {"student_layers": ["transformer.layer.0"], "teacher_layers": ["transformer.layer.0"]}
    loss = create_loss("attention_mse", query="attention.q_lin", key="attention.k_lin", **blocks)
    loss.bind_student(distilbert)
    loss.bind_teacher(distilbert)
    assert (loss.student_heads, loss.teacher_heads) == ([4], [4])
    # A network whose attention declares no head count needs the heads argument.
    plain = torch.nn.Module()
    plain.block = torch.nn.Module()
    plain.block.query, plain.block.key = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
    plain_blocks = {"student_layers": ["block"], "teacher_layers": ["block"], "query": "query", "key": "key"}
    with pytest.raises(ValueError, match=r"cannot read the head count of student layer 'block.query': give it"):
        create_loss("attention_mse", **plain_blocks).bind_student(plain)
    named = create_loss("attention_mse", heads=2, **plain_blocks)
    named.bind_student(plain)
    assert named.student_heads == [2]
