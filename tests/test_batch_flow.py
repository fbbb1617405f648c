"""Batches say what they carry: unlabeled samples, cached teacher outputs, per-model resolutions."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from kd_lightning.cache.teacher import TeacherCacheConfig
from kd_lightning.data import DigitsDataModule
from kd_lightning.data.batch import IGNORE_LABEL, Batch
from kd_lightning.errors import ConfigError
from kd_lightning.losses import kd_loss
from kd_lightning.models import ModelSpec, create_model
from kd_lightning.models.feature_taps import FeatureTaps
from kd_lightning.modules import DistillationModule, FrozenBackboneFinetuner
from tests.conftest import make_trainer

STUDENT = ModelSpec("small_cnn", kwargs={"width": 4})


def _record_logs(module) -> dict[str, torch.Tensor]:
    logged: dict[str, torch.Tensor] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)
    module.log_dict = lambda values, **kw: logged.update(values) if isinstance(values, dict) else None
    return logged


def test_cross_entropy_ignores_unlabeled_samples_against_a_hand_computation(teacher_spec) -> None:
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, alpha=0.5)
    logits = torch.tensor([[2.0, 0.0, 0.0] + [0.0] * 7, [0.0, 1.0, 0.0] + [0.0] * 7, [5.0] + [0.0] * 9])
    labels = torch.tensor([0, IGNORE_LABEL, 2])
    # -log softmax at the true class, averaged over the two labeled rows only.
    row0 = -(2.0 - torch.log(torch.exp(torch.tensor(2.0)) + 9))
    row2 = -(0.0 - torch.log(torch.exp(torch.tensor(5.0)) + 9))
    torch.testing.assert_close(module.cross_entropy(logits, labels), (row0 + row2) / 2)


def test_a_batch_of_only_unlabeled_samples_trains_on_kd_alone(teacher_spec) -> None:
    alpha, temperature = 0.7, 3.0
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, alpha=alpha, temperature=temperature)
    module.train()
    logged = _record_logs(module)
    x = torch.rand(8, 1, 8, 8)
    loss = module.training_step(Batch(torch.full((8,), IGNORE_LABEL), images=x), 0)
    student = module.network(x)
    expected = alpha * kd_loss(student, module.teacher(x).logits, temperature)
    torch.testing.assert_close(loss, expected)
    assert logged["train/ce"].item() == 0.0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in module.network.parameters() if p.grad is not None)


def test_unlabeled_rest_keeps_k_labels_per_class_and_hands_out_the_rest() -> None:
    labeled_only = DigitsDataModule(samples_per_class=5)
    labeled_only.setup("fit")
    with_rest = DigitsDataModule(samples_per_class=5, unlabeled="rest")
    with_rest.setup("fit")
    full = DigitsDataModule()
    full.setup("fit")
    labels = with_rest.train_set.labels
    assert len(labels) == len(full.train_set) and with_rest.has_unlabeled
    assert torch.equal(torch.bincount(labels[labels != IGNORE_LABEL]), torch.full((10,), 5))
    # The labeled images are the same ones the few-shot module keeps, under the same labels.
    labeled = labels != IGNORE_LABEL
    assert torch.equal(with_rest.train_set.images[labeled], labeled_only.train_set.images)
    assert torch.equal(labels[labeled], labeled_only.train_set.labels)
    assert torch.equal(with_rest.train_set.images, full.train_set.images)


def test_unlabeled_needs_samples_per_class() -> None:
    with pytest.raises(ValueError, match="samples_per_class"):
        DigitsDataModule(unlabeled="rest")


class StepLosses(L.Callback):
    """Every training step's loss, and whether its batch brought the teacher's outputs along."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.cached: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach().clone())
        self.cached.append(batch.teacher is not None)


def test_distillation_on_an_unlabeled_transfer_set_trains_the_same_with_and_without_the_cache(teacher_spec) -> None:
    """Without augmentation the cached teacher outputs are the ones the teacher gives live, so the
    same seed and data order give the same losses, step by step."""
    runs = {}
    for cached in (False, True):
        L.seed_everything(0)
        cache = TeacherCacheConfig() if cached else None
        module = DistillationModule(STUDENT, teacher_spec, num_classes=10, teacher_cache=cache)
        dm = DigitsDataModule(batch_size=64, samples_per_class=2, unlabeled="rest")
        steps = StepLosses()
        make_trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=1, callbacks=[steps]).fit(module, dm)
        assert steps.cached == [cached] * 6
        runs[cached] = torch.stack(steps.losses)
    torch.testing.assert_close(runs[True], runs[False], rtol=1e-5, atol=1e-6)
    assert runs[False][-1] < runs[False][0]  # and the student learns: the distillation loss falls


def test_modules_that_need_every_label_refuse_unlabeled_data(teacher_spec) -> None:
    dm = DigitsDataModule(batch_size=64, samples_per_class=2, unlabeled="rest")
    with pytest.raises(ConfigError, match="needs a label for every training image"):
        make_trainer().fit(FrozenBackboneFinetuner(teacher_spec, num_classes=10, strategy="full"), dm)
    dkd = DistillationModule(STUDENT, teacher_spec, num_classes=10, losses=[{"name": "ce"}, {"name": "dkd"}])
    with pytest.raises(ConfigError, match=r"\['dkd'\] need a label for every sample"):
        make_trainer().fit(dkd, DigitsDataModule(batch_size=64, samples_per_class=2, unlabeled="rest"))


class InputSizes(L.Callback):
    """The spatial size each network's trunk receives in the first training step."""

    def __init__(self) -> None:
        self.sizes: dict[str, tuple[int, int]] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        for name, network in (("student", pl_module.network), ("teacher", pl_module.teacher.network)):
            network.backbone.register_forward_pre_hook(self._recorder(name))

    def _recorder(self, name: str):
        def record(module, args) -> None:
            self.sizes.setdefault(name, tuple(args[0].shape[-2:]))

        return record


@pytest.mark.parametrize("cache", [None, TeacherCacheConfig(views=2)], ids=["uncached", "cached"])
def test_teacher_and_student_each_run_at_their_own_resolution(tmp_path, cache) -> None:
    teacher = create_model("small_cnn", 10, width=8)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    teacher_spec = ModelSpec("small_cnn", kwargs={"width": 8}, weights_path=str(tmp_path / "teacher.pt"), input_size=16)
    module = DistillationModule(STUDENT, teacher_spec, num_classes=10, teacher_cache=cache)
    sizes, seen = InputSizes(), []

    class TeacherSeesTheStudentView(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch.teacher is not None:
                # The cached outputs are the teacher's on this very batch, resized inside the teacher.
                fresh = pl_module.teacher.network(batch.images)
                seen.append((fresh - batch.teacher.logits).abs().max().item())

    dm = DigitsDataModule(batch_size=64, crop_padding=1, hflip=True)
    callbacks = [sizes, TeacherSeesTheStudentView()]
    make_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=callbacks).fit(module, dm)
    assert sizes.sizes == {"student": (8, 8), "teacher": (16, 16)}
    assert len(seen) == (2 if cache else 0) and max(seen, default=0.0) < 1e-5


def test_resize_inside_the_network_equals_resizing_the_batch() -> None:
    network = create_model("small_cnn", 10, width=4, input_size=16).eval()
    plain = create_model("small_cnn", 10, width=4).eval()
    plain.load_state_dict(network.state_dict())
    x = torch.rand(4, 1, 8, 8)
    resized = F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(network(x), plain(resized))


def test_stage_names_and_input_taps_address_layers_across_architectures() -> None:
    for name, expected_last in (("small_cnn", "12"), ("resnet8x4", "layer3"), ("wrn_16_2", "block3")):
        model = create_model(name, 10)
        sample = torch.rand(2, model.input_config.in_chans, 32, 32)
        taps = FeatureTaps(model, ["stage:-1", "stage:-1@input", "head@input"], sample)
        logits, features = taps(sample)
        assert model.stages[-1] == expected_last
        torch.testing.assert_close(features["head@input"], model.forward_features(sample))
        assert features["stage:-1"].dim() == 4 and features["stage:-1@input"].dim() == 4
    with pytest.raises(ValueError, match="is not a stage"):
        FeatureTaps(create_model("resnet8x4", 10), ["stage:7"], torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="'input' or 'output'"):
        FeatureTaps(create_model("resnet8x4", 10), ["layer1@inside"], torch.rand(2, 3, 32, 32))


def test_the_datamodule_moves_every_field_of_a_batch_to_the_device() -> None:
    """Its own transfer (no generic walk) still moves every tensor, cached teacher outputs included."""
    from kd_lightning.outputs import ModelOutputs

    batch = Batch(
        torch.tensor([1, IGNORE_LABEL]),
        images=torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
        indices=torch.tensor([4, 7]),
        teacher=ModelOutputs(torch.randn(2, 10), {"stage1": torch.randn(2, 3)}),
    )
    datamodule = DigitsDataModule()
    on_cpu = datamodule.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert on_cpu.labels is batch.labels and on_cpu.images is batch.images  # already there: no copy
    moved = datamodule.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved.features is None
    tensors = [moved.labels, moved.images, moved.indices, moved.teacher.logits, moved.teacher.features["stage1"]]
    assert all(t.device.type == "meta" for t in tensors)
    assert [t.shape for t in tensors] == [(2,), (2, 1, 8, 8), (2,), (2, 10), (2, 3)]
    assert moved.images.dtype == torch.uint8
    assert datamodule.transfer_batch_to_device([torch.ones(1)], torch.device("meta"), 0)[0].device.type == "meta"


class PlainClassifier(L.LightningModule):
    """A user's own module, written as for any ``(x, y)`` DataModule."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        self.correct = self.seen = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)  # no batch_size: Lightning infers it from the batch
        return loss

    def validation_step(self, batch, batch_idx) -> None:
        x, y = batch[0], batch[1]
        self.correct += int((self.net(x).argmax(dim=-1) == y).sum())
        self.seen += len(y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_a_plain_x_y_lightning_module_trains_on_a_kd_lightning_datamodule() -> None:
    L.seed_everything(0)
    module = PlainClassifier()
    make_trainer(max_epochs=1, num_sanity_val_steps=0).fit(module, DigitsDataModule(batch_size=32))
    assert module.seen == 144  # the whole validation split
    assert module.correct / module.seen > 0.7  # chance is 0.1


def test_a_batch_unpacks_as_input_and_labels_and_keeps_its_batch_size() -> None:
    images, features, labels = torch.rand(3, 1, 8, 8), torch.rand(3, 5), torch.tensor([1, 2, 3])
    x, y = Batch(labels, images=images, indices=torch.arange(3))
    assert x is images and y is labels
    assert len(Batch(labels, images=images)) == 3
    x, y = Batch(labels, features=features)  # a feature-cache batch: its input is the features
    assert x is features
    with pytest.raises(ValueError, match="neither images nor features"):
        Batch(labels)[0]
