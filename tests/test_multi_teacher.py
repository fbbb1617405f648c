"""Several teachers: each ensemble's weighting by hand, the distiller's routing, the cache, refusals."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch

from kd_lightning.cache.teacher import TeacherCacheConfig
from kd_lightning.data import DigitsDataModule
from kd_lightning.errors import CheckpointError, ConfigError
from kd_lightning.losses import StepContext, kd_loss
from kd_lightning.models import ModelSpec
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner
from kd_lightning.modules.aekd import min_norm_weights
from kd_lightning.modules.ensemble import TeacherEnsemble, camkd_weights, ebkd_weights, weighted_kd
from kd_lightning.modules.teacher import TeacherOptions
from kd_lightning.outputs import ModelOutputs
from tests.conftest import make_trainer
from tests.test_batch_flow import StepLosses

STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})
WIDTHS = (4, 6, 8)
# Two teachers on one two-class sample: uniform, and 3:1 for class 0 (logit ln 3).
UNIFORM, CONFIDENT = [0.0, 0.0], [math.log(3.0), 0.0]


def _train_teacher(path: Path, width: int) -> ModelSpec:
    spec = ModelSpec("small_cnn", kwargs={"width": width})
    L.seed_everything(width, verbose=False)
    finetuner = FrozenBackboneFinetuner(spec, num_classes=10, strategy="full")
    make_trainer(max_steps=8, limit_val_batches=0).fit(finetuner, DigitsDataModule(batch_size=64))
    torch.save(finetuner.network.state_dict(), path)
    return ModelSpec(spec.name, weights_path=str(path), kwargs=spec.kwargs)


@pytest.fixture(scope="module")
def teacher_specs(tmp_path_factory: pytest.TempPathFactory) -> list[ModelSpec]:
    """Three small digits teachers of different widths, each trained a few steps."""
    folder = tmp_path_factory.mktemp("teachers")
    return [_train_teacher(folder / f"w{width}.pt", width) for width in WIDTHS]


def test_ebkd_weighs_the_confident_teacher_more_by_hand() -> None:
    logits = torch.tensor([[UNIFORM], [CONFIDENT]], dtype=torch.float64)
    h_uniform = math.log(2.0)
    h_confident = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    total = h_uniform + h_confident
    expected = torch.tensor([[1 - h_uniform / total], [1 - h_confident / total]], dtype=torch.float64)
    torch.testing.assert_close(ebkd_weights(logits), expected)


def test_camkd_weighs_the_teacher_closer_to_the_label_more_by_hand() -> None:
    # CE with label 0: ln 2 and ln(4/3); softmax over them: 2 / (2 + 4/3) = 0.6 and 0.4, so weights 0.4 and 0.6.
    logits = torch.tensor([[UNIFORM], [CONFIDENT]], dtype=torch.float64)
    weights = camkd_weights(logits, torch.tensor([0]))
    torch.testing.assert_close(weights, torch.tensor([[0.4], [0.6]], dtype=torch.float64))


def test_weighted_kd_divides_by_samples_and_teachers_as_the_reference_does() -> None:
    logits = torch.tensor([[UNIFORM], [CONFIDENT]], dtype=torch.float64)
    student = torch.zeros(1, 2, dtype=torch.float64)
    kl_confident = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    weights = torch.tensor([[0.4], [0.6]], dtype=torch.float64)
    # T = 2 softens the confident teacher to sqrt(3):1; the uniform one stays uniform.
    p = math.sqrt(3.0) / (1 + math.sqrt(3.0))
    kl_soft = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    torch.testing.assert_close(weighted_kd(student, logits, weights, 1.0).item(), 0.6 * kl_confident / 2)
    torch.testing.assert_close(weighted_kd(student, logits, weights, 2.0).item(), 4 * 0.6 * kl_soft / 2)


def _aekd_by_hand(student: torch.Tensor, teachers: torch.Tensor, temperature: float) -> torch.Tensor:
    """AEKD's KD term from the closed-form KD gradients ``T·(q − p_k)/B``, averaged over the batch."""
    q = (student / temperature).softmax(-1)
    g = (temperature * (q - (teachers / temperature).softmax(-1)) / len(student)).mean(1)
    weights = min_norm_weights(g @ g.T)
    return (weights.to(student) * torch.stack([kd_loss(student, t, temperature) for t in teachers])).sum()


@pytest.mark.parametrize("ensemble", ["mean_logits", "mean_loss", "ebkd", "camkd", "aekd"])
def test_the_distiller_combines_the_teachers_kd_terms_as_its_ensemble_says(teacher_specs, ensemble) -> None:
    module = DistillationModule(STUDENT, teacher_specs, num_classes=10, teacher_options={"ensemble": ensemble})
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 8, 8, generator=generator)
    labels = torch.tensor([0, 3, 5, 7, 9])
    student = torch.randn(5, 10, generator=generator)
    members = [teacher(x).logits for teacher in module.teacher.members()]  # type: ignore[union-attr]
    terms = module.loss_components(ModelOutputs(student), module.teacher(x), StepContext(labels))
    stacked = torch.stack(members)
    expected = {
        "mean_logits": kd_loss(student, stacked.mean(0)),
        "mean_loss": torch.stack([kd_loss(student, t) for t in members]).mean(),
        "ebkd": weighted_kd(student, stacked, ebkd_weights(stacked), 4.0),
        "camkd": weighted_kd(student, stacked, camkd_weights(stacked, labels), 4.0),
        "aekd": _aekd_by_hand(student, stacked, 4.0),
    }[ensemble]
    torch.testing.assert_close(terms["kd"], expected)
    assert len({round(kd_loss(student, t).item(), 4) for t in members}) == 3  # three teachers that differ


@pytest.mark.parametrize(
    ("ensemble", "feature_term"), [("mean_logits", False), ("camkd", False), ("aekd", False), ("camkd", True)]
)
def test_three_teachers_train_the_same_with_and_without_the_cache(teacher_specs, ensemble, feature_term) -> None:
    """Without augmentation the cache stores what the teachers give live (each one's logits for camkd and aekd,
    and each one's last stage for CA-MKD's feature term), so the same seed and data order give the same losses
    step by step, and the student learns."""
    losses = [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9}]
    if feature_term:  # counted from the second epoch, as CA-MKD's loop does
        losses.append({"name": "camkd_feature", "weight": 50.0})
    runs = {}
    for cached in (False, True):
        L.seed_everything(0)
        module = DistillationModule(
            STUDENT,
            teacher_specs,
            num_classes=10,
            losses=losses,
            input_shape=(1, 8, 8),
            teacher_cache=TeacherCacheConfig() if cached else None,
            teacher_options=TeacherOptions(recalibrate_bn=2, ensemble=ensemble),
        )
        steps = StepLosses()
        trainer = make_trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=1, callbacks=[steps])
        trainer.fit(module, DigitsDataModule(batch_size=64))
        assert steps.cached == [cached] * 8
        runs[cached] = torch.stack(steps.losses)
    torch.testing.assert_close(runs[True], runs[False], rtol=1e-5, atol=1e-6)
    first = 4 if feature_term else 0  # the feature term joins at the second epoch's first step
    assert runs[False][-1] < runs[False][first]


def test_a_teacher_of_another_class_count_is_refused_by_its_position(teacher_specs, tmp_path) -> None:
    three_classes = ModelSpec("small_cnn", weights_path=str(tmp_path / "three.pt"), kwargs={"width": 4})
    torch.save(ModelSpec("small_cnn", kwargs={"width": 4}).build(3).state_dict(), tmp_path / "three.pt")
    with pytest.raises(CheckpointError, match="teacher 1 .'small_cnn'.: .*3"):
        DistillationModule(STUDENT, [teacher_specs[0], three_classes], num_classes=10)


def test_several_teachers_refuse_feature_terms_and_ebkd_refuses_other_logit_terms(teacher_specs) -> None:
    at = {"name": "at", "kwargs": {"student_layers": ["backbone.1"], "teacher_layers": ["backbone.1"]}}
    with pytest.raises(ConfigError, match="several teachers"):
        DistillationModule(STUDENT, teacher_specs, num_classes=10, losses=[at])
    with pytest.raises(ConfigError, match="not plain kd"):
        DistillationModule(
            STUDENT, teacher_specs, num_classes=10, losses=[{"name": "dkd"}], teacher_options={"ensemble": "ebkd"}
        )
    with pytest.raises(ConfigError, match="ensemble must be one of"):
        TeacherEnsemble(teacher_specs, 10, "median")
    with pytest.raises(ConfigError, match="aekd_max_weight 0.25 caps each of 3 teachers"):
        DistillationModule(
            STUDENT, teacher_specs, num_classes=10, teacher_options={"ensemble": "aekd", "aekd_max_weight": 0.25}
        )


def test_several_teachers_are_fingerprinted_each() -> None:
    specs = [ModelSpec("small_cnn", kwargs={"width": w}) for w in (4, 6)]
    with pytest.warns(UserWarning, match="untrained"):
        module = DistillationModule(STUDENT, specs, num_classes=10)
    fingerprint = module.teacher.fingerprint()
    assert [f["spec"]["kwargs"]["width"] for f in fingerprint["teachers"]] == [4, 6]
    assert fingerprint["teachers"][0]["sha256"] != fingerprint["teachers"][1]["sha256"]


def test_a_checkpoint_without_the_teachers_verifies_each_of_them(teacher_specs) -> None:
    module = DistillationModule(STUDENT, teacher_specs, num_classes=10)
    student_state = {k: v for k, v in module.state_dict().items() if not k.startswith("teacher.")}
    checkpoint = {"state_dict": student_state, "teacher": module.teacher.fingerprint()}
    module.on_load_checkpoint(checkpoint)  # the same three teachers: accepted
    checkpoint["teacher"]["teachers"][2]["sha256"] = "0" * 64
    with pytest.raises(CheckpointError):
        module.on_load_checkpoint(checkpoint)
