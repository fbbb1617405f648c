"""Text classification on the same modules: tokenized data, text backbones, a finetuner and a distiller step."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from kd_lightning.cache.teacher import TeacherCacheConfig
from kd_lightning.cache.teacher.in_memory import TeacherPass
from kd_lightning.data import TextClassificationDataModule
from kd_lightning.data.batch import IGNORE_LABEL, Batch
from kd_lightning.data.text_dataset import TokenizedTextDataset
from kd_lightning.errors import ConfigError
from kd_lightning.losses import StepContext
from kd_lightning.models import InputConfig, ModelSpec, create_model, list_backbones
from kd_lightning.models._registry import get_backbone_entry
from kd_lightning.models.text_classifier import TextClassifier
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner
from kd_lightning.outputs import ModelOutputs
from kd_lightning.text import TextInputConfig
from kd_lightning.text.inputs import PROBE_LENGTH
from tests._extras import require_extra
from tests._text_helpers import SPECIALS, WORDS, toy_rows, write_rows, write_tiny_bert, write_tokenizer
from tests.conftest import count_calls, make_trainer

require_extra("text")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture
def toy_data(tmp_path: Path, bert_dir: Path) -> TextClassificationDataModule:
    write_rows(tmp_path / "train.tsv", toy_rows(repeat=5))
    write_rows(tmp_path / "test.tsv", toy_rows(repeat=1))
    return TextClassificationDataModule(str(bert_dir), data_dir=str(tmp_path), batch_size=8, max_length=16)


def test_dataset_pads_each_batch_to_its_longest_text() -> None:
    data = TokenizedTextDataset.from_lists([[5, 6], [7, 8, 9], [4]], torch.tensor([0, 1, 0]), pad_id=0)
    batch = data.__getitems__([2, 0])
    assert batch.tokens is not None and batch.images is None
    assert batch.tokens.tolist() == [[4, 0], [5, 6]]
    assert batch.labels.tolist() == [0, 0]
    assert data.__getitems__([1]).inputs.tolist() == [[7, 8, 9]]
    assert data.subset(torch.tensor([1, 2])).pad(torch.tensor([0, 1])).tolist() == [[7, 8, 9], [4, 0, 0]]


def test_batch_moves_tokens_and_inputs_prefers_what_is_present() -> None:
    batch = Batch(torch.tensor([1]), tokens=torch.tensor([[3, 4]])).to("cpu")
    assert batch.inputs.tolist() == [[3, 4]]
    with pytest.raises(ValueError, match="pre-computed features"):
        _ = Batch(torch.tensor([1]), features=torch.zeros(1, 2)).inputs


def test_datamodule_tokenizes_once_splits_like_the_image_modules(toy_data: TextClassificationDataModule) -> None:
    toy_data.setup("fit")
    assert toy_data.class_names == ["HUM", "LOC"]
    assert (len(toy_data.train_set), len(toy_data.val_set)) == (36, 4)  # 10 % of 40 held out, seeded
    batch = next(iter(toy_data.train_dataloader()))
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    # Every text starts with [CLS]; the batch is padded (id 0) to its own longest text only.
    assert (batch.tokens[:, 0] == vocab["[CLS]"]).all()
    assert batch.tokens.shape[1] == int((batch.tokens != 0).sum(1).max())
    again = TextClassificationDataModule(toy_data.tokenizer_source, data_dir=toy_data.data_dir, max_length=16)
    again.setup("fit")
    assert torch.equal(again.train_set.labels, toy_data.train_set.labels)


def test_datamodule_few_labels_rest_unlabeled_and_indices(tmp_path: Path, bert_dir: Path) -> None:
    write_rows(tmp_path / "train.tsv", toy_rows(repeat=5))
    data = TextClassificationDataModule(
        str(bert_dir), data_dir=str(tmp_path), samples_per_class=2, unlabeled="rest", return_indices=True, batch_size=64
    )
    data.setup("fit")
    labels = data.train_set.labels
    assert int((labels != IGNORE_LABEL).sum()) == 4 and len(labels) == 36
    batch = next(iter(data.train_dataloader()))
    assert sorted(batch.indices.tolist()) == list(range(36))


def test_reads_jsonl_and_csv_with_named_fields(tmp_path: Path, bert_dir: Path) -> None:
    rows = [{"sentence": t, "y": y} for t, y in toy_rows(repeat=1)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = TextClassificationDataModule(
        str(bert_dir), data_dir=str(tmp_path), train_file="train.jsonl", text_field="sentence", label_field="y"
    )
    assert data.rows("train")[0] == ("where is the city", "LOC")
    write_rows(tmp_path / "train.csv", toy_rows(repeat=1))
    csv_data = TextClassificationDataModule(str(bert_dir), data_dir=str(tmp_path), train_file="train.csv")
    assert csv_data.rows("train") == data.rows("train")


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("bilstm", {"embed_dim": 8, "hidden": 8}),
        ("textcnn", {"embed_dim": 8, "channels": 4}),
        ("small_bert", {"layers": 1, "hidden": 16, "heads": 2, "max_length": 32}),
    ],
)
def test_text_students_give_a_text_the_same_logits_alone_and_padded(name: str, kwargs: dict, bert_dir: Path) -> None:
    torch.manual_seed(0)
    model = create_model(name, 3, tokenizer=str(bert_dir), **kwargs).eval()
    assert isinstance(model, TextClassifier)
    assert model.input_config.pad_id == 0 and model.input_config.vocab_size == len(SPECIALS) + len(WORDS)
    alone = model(torch.tensor([[2, 5, 9, 3]]))
    padded = model(torch.tensor([[2, 5, 9, 3, 0, 0, 0], [2, 6, 7, 8, 9, 10, 3]]))
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.rand(1, 1, 8, 8))


TEXT_BACKBONES = [n for n in list_backbones() if isinstance(get_backbone_entry(n).input_config, TextInputConfig)]


@pytest.mark.parametrize("name", TEXT_BACKBONES)
def test_every_registered_text_backbone_builds_and_runs_on_token_ids(name: str, bert_dir: Path) -> None:
    source = {"source": str(bert_dir)} if name == "distil_hf" else {"tokenizer": str(bert_dir)}
    model = create_model(name, 7, **source)
    assert isinstance(model, TextClassifier) and isinstance(model.input_config, TextInputConfig)
    ids = torch.tensor([[2, 5, 9, 3, 0], [2, 6, 7, 8, 3]])
    assert model(ids).shape == (2, 7)
    assert model.forward_features(ids).shape == (2, model.feature_dim)


def test_hf_encoder_by_folder_loads_the_weights_and_masks_padding(bert_dir: Path) -> None:
    from transformers import AutoModel

    model = create_model(f"hf/{bert_dir}", 2, pretrained=True).eval()
    reference = AutoModel.from_pretrained(bert_dir).eval()
    ids = torch.tensor([[2, 5, 9, 3, 0]])
    mask = (ids != 0).long()
    hidden = reference(input_ids=ids, attention_mask=mask).last_hidden_state[:, :4].mean(1)
    torch.testing.assert_close(model.forward_features(ids), hidden, atol=1e-5, rtol=1e-5)
    assert model.stages == tuple(f"model.encoder.layer.{i}" for i in range(4))
    assert model.training is False and create_model(f"hf/{bert_dir}", 2, pretrained=True).backbone.training


def test_distil_hf_keeps_every_other_teacher_layer(bert_dir: Path) -> None:
    teacher = create_model(f"hf/{bert_dir}", 2, pretrained=True)
    student = create_model("distil_hf", 2, pretrained=True, source=str(bert_dir))
    assert len(student.stages) == 2
    t_layers, s_layers = teacher.backbone.model.encoder.layer, student.backbone.model.encoder.layer
    for s, t in zip(s_layers, [t_layers[0], t_layers[2]], strict=True):
        for (name, ps), pt in zip(s.state_dict().items(), t.state_dict().values(), strict=True):
            assert torch.equal(ps, pt), name
    assert student.backbone.model.config.num_hidden_layers == 2
    with pytest.raises(ConfigError, match="keep_layers"):
        create_model("distil_hf", 2, pretrained=True, source=str(bert_dir), keep_layers=[7])


def test_a_student_over_another_vocabulary_is_refused_in_one_line(tmp_path: Path, bert_dir: Path) -> None:
    write_rows(tmp_path / "train.tsv", toy_rows(repeat=5))
    data = TextClassificationDataModule(str(bert_dir), data_dir=str(tmp_path))
    other = create_model("bilstm", 2, vocab_size=1000, pad_id=1, embed_dim=4, hidden=4)
    with pytest.raises(ConfigError, match="two-tokenizer distillation is not supported yet"):
        data.check_models(other)
    same = create_model("bilstm", 2, tokenizer=str(write_tokenizer(tmp_path / "tok")), embed_dim=4, hidden=4)
    data.check_models(same)


def test_finetuner_trains_a_bilstm_to_separate_the_toy_classes(toy_data: TextClassificationDataModule) -> None:
    torch.manual_seed(0)
    spec = ModelSpec("bilstm", kwargs={"tokenizer": toy_data.tokenizer_source, "embed_dim": 16, "hidden": 16})
    module = FrozenBackboneFinetuner(
        spec,
        2,
        strategy="full",
        optimizer=lambda p: torch.optim.Adam(p, lr=0.02),  # type: ignore[arg-type, return-value]
    )
    trainer = make_trainer(max_epochs=8)
    trainer.fit(module, datamodule=toy_data)
    assert trainer.callback_metrics["val/acc"].item() == 1.0
    assert trainer.test(module, datamodule=toy_data, verbose=False)[0]["test/acc"] == 1.0


def test_distiller_step_on_text_trains_the_student_and_not_the_teacher(
    toy_data: TextClassificationDataModule, bert_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    teacher = ModelSpec(f"hf/{bert_dir}", pretrained=True)
    weights = tmp_path / "teacher.pt"
    torch.save(teacher.build(2).state_dict(), weights)
    teacher.weights_path = str(weights)
    student = ModelSpec("bilstm", kwargs={"tokenizer": str(bert_dir), "embed_dim": 8, "hidden": 8})
    module = DistillationModule(student, teacher, num_classes=2, temperature=2.0, alpha=0.5)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = make_trainer(limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=toy_data)
    after = module.state_dict()
    changed = {
        k.split(".")[0] for k in before if not torch.equal(before[k], after[k]) and before[k].is_floating_point()
    }
    assert "network" in changed and "teacher" not in changed
    assert 0.0 <= trainer.callback_metrics["val/agreement"].item() <= 1.0
    assert trainer.callback_metrics["train/kd"].item() > 0.0


class LiveTeacherCheck(L.Callback):
    """Before every cached step: the live teacher's KD loss on the batch, beside the cached one."""

    def __init__(self) -> None:
        self.losses: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        assert batch.teacher is not None, "a cached batch carries the teacher's outputs"
        # The texts are the training set's own, at their dataset indices, padded per batch.
        assert torch.equal(batch.tokens.cpu(), trainer.datamodule.train_set.pad(batch.indices.cpu()))
        pl_module.eval()  # no dropout, so the two losses see one student output
        student = pl_module.student_outputs(batch.tokens)
        live = ModelOutputs(pl_module.teacher.network(batch.tokens))
        context = StepContext(batch.labels)
        cached = pl_module.loss_components(student, batch.teacher, context)["kd"]
        self.losses.append((cached.item(), pl_module.loss_components(student, live, context)["kd"].item()))
        pl_module.train()


def test_teacher_cache_on_text_runs_the_teacher_once_and_gives_the_live_loss(
    toy_data: TextClassificationDataModule, bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = ModelSpec(f"hf/{bert_dir}", pretrained=True)
    torch.save(teacher.build(2).state_dict(), tmp_path / "teacher.pt")
    teacher.weights_path = str(tmp_path / "teacher.pt")
    student = ModelSpec("bilstm", kwargs={"tokenizer": str(bert_dir), "embed_dim": 8, "hidden": 8})
    module = DistillationModule(student, teacher, num_classes=2, teacher_cache=TeacherCacheConfig())
    passes = count_calls(monkeypatch, TeacherPass, "over_batches")
    teacher_calls = count_calls(monkeypatch, module.teacher, "forward")
    check = LiveTeacherCheck()
    trainer = make_trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=0, callbacks=[check])
    trainer.fit(module, datamodule=toy_data)
    # One pass over the 36 training texts, 8 at a time; no teacher forward in the four training steps.
    assert (len(passes), len(teacher_calls)) == (1, 5)
    assert len(check.losses) == 4
    for cached, live in check.losses:
        assert cached == pytest.approx(live, rel=1e-5) and cached > 0
    assert next(iter(toy_data.train_dataloader())).teacher is None  # the DataModule serves plain texts again


def test_text_teacher_cache_on_disk_is_reused_and_shares_the_teacher_backbone(
    toy_data: TextClassificationDataModule, bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher = ModelSpec(f"hf/{bert_dir}", pretrained=True)
    torch.save(teacher.build(2).state_dict(), tmp_path / "teacher.pt")
    teacher.weights_path = str(tmp_path / "teacher.pt")
    student = ModelSpec("textcnn", kwargs={"tokenizer": str(bert_dir), "embed_dim": 8, "channels": 4})
    config = TeacherCacheConfig("disk", directory=str(tmp_path / "cache"), share_backbone_features=True)
    passes = count_calls(monkeypatch, TeacherPass, "over_batches")
    for _ in range(2):
        check = LiveTeacherCheck()
        module = DistillationModule(student, teacher, num_classes=2, teacher_cache=config)
        make_trainer(limit_train_batches=2, limit_val_batches=0, callbacks=[check]).fit(module, datamodule=toy_data)
        assert len(check.losses) == 2
        for cached, live in check.losses:
            assert cached == pytest.approx(live, rel=1e-5) and cached > 0
    assert len(passes) == 1  # the second run reads the first one's entry from disk


def test_teacher_cache_refuses_per_token_teacher_layers_in_one_line(
    toy_data: TextClassificationDataModule, bert_dir: Path
) -> None:
    student = ModelSpec("small_bert", kwargs={"tokenizer": str(bert_dir), "layers": 1, "hidden": 8})
    hidden = {"name": "hidden_mse", "kwargs": {"student_layers": ["stage:0"], "teacher_layers": ["stage:1"]}}
    teacher = ModelSpec(f"hf/{bert_dir}", pretrained=True)
    module = DistillationModule(
        student, teacher, 2, losses=[{"name": "kd"}, hidden], teacher_cache=TeacherCacheConfig()
    )
    with pytest.raises(ConfigError, match=r"per-token layers \['stage:1'\].*tap pooled layers"):
        make_trainer(limit_train_batches=1, limit_val_batches=0).fit(module, datamodule=toy_data)


def test_input_descriptions_build_the_probe_batch() -> None:
    probe = TextInputConfig(pad_id=0, max_length=5, vocab_size=3).probe_batch(4)
    assert probe.shape == (4, 5) and probe.dtype == torch.int64
    assert set(probe.unique().tolist()) <= {1, 2}  # token ids of the vocabulary, never the pad id
    assert TextInputConfig(max_length=64).probe_batch(2).shape == (2, PROBE_LENGTH)
    assert InputConfig(in_chans=3, input_size=(4, 6)).probe_batch(2).shape == (2, 3, 4, 6)
    with pytest.raises(ValueError, match="declares no input size"):
        InputConfig().probe_batch()
    ids = torch.tensor([[2, 5, 0], [2, 0, 0]])
    assert TextInputConfig().token_mask(ids).tolist() == [[1, 1, 0], [1, 0, 0]]
    assert TextInputConfig(max_length=2).token_mask(ids).tolist() == [[1, 1], [1, 0]]  # as the model reads them
    assert InputConfig().token_mask(ids) is None


def test_feature_taps_on_a_text_student(bert_dir: Path) -> None:
    teacher = ModelSpec(f"hf/{bert_dir}", pretrained=True)
    student = ModelSpec("bilstm", kwargs={"tokenizer": str(bert_dir), "embed_dim": 8, "hidden": 6})
    fitnet = {"name": "fitnet", "kwargs": {"student_layers": ["backbone"], "teacher_layers": ["backbone"]}}
    module = DistillationModule(student, teacher, num_classes=2, losses=[{"name": "kd"}, fitnet]).eval()
    assert module.student_taps is not None and module.teacher.taps is not None
    # Probed with [2, L] token ids: the BiLSTM pools 2 × 6, the tiny BERT 16 features per text.
    assert module.student_taps.shapes == {"backbone": torch.Size([2, 12])}
    assert module.teacher.taps.shapes == {"backbone": torch.Size([2, 16])}
    regressor = module.loss_terms["fitnet"].regressors[0][0]
    assert (regressor.in_features, regressor.out_features) == (12, 16)
    ids = torch.tensor([[2, 5, 9, 3, 0], [2, 6, 7, 8, 3]])
    student_out, teacher_out = module.student_outputs(ids), module.teacher(ids)
    features = module.network.forward_features(ids)
    assert torch.equal(student_out.features["backbone"], features)
    torch.testing.assert_close(teacher_out.features["backbone"], module.teacher.network.forward_features(ids))
    hint = module.loss_components(student_out, teacher_out, StepContext(torch.tensor([0, 1])))["fitnet"]
    expected = ((regressor(features) - teacher_out.features["backbone"]) ** 2).mean()
    torch.testing.assert_close(hint, expected)
