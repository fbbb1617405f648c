"""Knowledge distillation: a frozen teacher trains a student on its softened outputs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from kd_lightning.cache.teacher import TeacherCache, TeacherCacheConfig, teacher_cache_source
from kd_lightning.cache.teacher.entry import Teacher
from kd_lightning.callbacks.teacher_check import TeacherCheck
from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.batch import Batch
from kd_lightning.data.calibration import training_batches
from kd_lightning.errors import ConfigError, as_config_error
from kd_lightning.losses import (
    CAMKDFeatureLoss,
    DistillationLoss,
    LogitLoss,
    LossTerm,
    StepContext,
    as_term,
    create_loss,
)
from kd_lightning.losses.kd import KDLoss
from kd_lightning.losses.term import CROSS_ENTROPY
from kd_lightning.metrics import TeacherStudentKL
from kd_lightning.models.feature_taps import FeatureTaps
from kd_lightning.models.spec import ModelSpec, as_spec
from kd_lightning.modules.aekd import aekd_loss, check_aekd
from kd_lightning.modules.base import SupervisedModule
from kd_lightning.modules.dot_objective import check_dot, task_objective
from kd_lightning.modules.ensemble import (
    AEKD,
    MEAN_LOGITS,
    MEAN_LOSS,
    SAMPLE_WEIGHTED,
    TeacherEnsemble,
    sample_weights,
    weighted_kd,
)
from kd_lightning.modules.teacher import FrozenTeacher, TeacherOptions
from kd_lightning.optim import DOT
from kd_lightning.outputs import ModelOutputs, member_outputs

TEACHER_PREFIX = "teacher."
# Hinton et al.'s objective, the distiller's default when no ``losses`` are given.
HINTON_ALPHA = 0.9
HINTON_TEMPERATURE = 4.0


class DistillationModule(SupervisedModule):
    """Train ``student`` on a weighted sum of loss terms; Hinton's ``(1 − α)·CE + α·KD`` by default.

    ``losses`` composes any registered distillation losses, e.g. RepDistiller's AT recipe
    ``[{name: ce, weight: 1.0}, {name: at, weight: 1000}]``; each term is logged as
    ``train/<label>``. Feature losses name the layers they need; those are tapped with forward
    hooks (on the teacher under ``no_grad``), their shapes probed once in ``__init__`` with a
    dummy batch that the student's input description builds (images, or token ids for a text
    student), and the losses' adapters built from them, so adapters are ordinary submodules: in
    the optimizer and in checkpoints like the student. A text batch's real tokens reach the
    losses as :attr:`StepContext.token_mask`.

    The teacher is a :class:`~kd_lightning.modules.teacher.FrozenTeacher`: no gradients, never in
    the optimizer, in eval mode for the whole run, and left out of checkpoints unless
    ``teacher_options`` says otherwise, since it is rebuilt from its spec.

    Training batches (:class:`~kd_lightning.data.batch.Batch`) may carry the teacher's outputs
    already (the teacher cache, served through the DataModule); otherwise the teacher runs on
    them. Samples labeled :data:`~kd_lightning.data.batch.IGNORE_LABEL` (an unlabeled transfer
    set) count in every distillation term but not in the label cross-entropy.

    Args:
        student: the network to train (registry name and optional weights).
        teacher: the trained network to learn from: a registry name with ``pretrained`` weights,
            or ``weights_path`` to a kd_lightning Lightning checkpoint or a state-dict file. A list of
            them: several teachers, combined as ``teacher_options.ensemble`` says (logit terms, and
            ``camkd_feature``, which taps every teacher).
        num_classes: classes of the task; the teacher must have as many.
        temperature: softening temperature ``T`` of the KD term; 4 when not given. Only without
            ``losses`` (a KD term in ``losses`` takes its own ``kwargs: {temperature: T}``).
        alpha: weight of the KD term, the cross-entropy on labels getting ``1 − α``; 0.9 when not
            given. Only without ``losses`` (which weights each term itself).
        losses: weighted loss terms, the objective in place of the α/T one (giving both is an
            error); ``ce`` is the label cross-entropy (weight 0 when not listed).
        input_shape: ``[C, H, W]`` of one image, for probing tapped feature shapes; defaults
            to the student's registered input config (text students probe with token ids of
            their own vocabulary). Only needed by image feature losses whose student declares no size.
        teacher_cache: compute the teacher's training outputs once, when ``fit`` sets up, and reuse
            them every epoch (:class:`~kd_lightning.cache.teacher.entry.TeacherCacheConfig`: storage,
            views, top-k, directory; see :mod:`kd_lightning.cache.teacher` for how augmented views
            stay exact). ``None``: the teacher runs on every batch.
        teacher_options: recalibrating the teacher's BatchNorm statistics before it teaches, and
            storing it in the student's checkpoints
            (:class:`~kd_lightning.modules.teacher.TeacherOptions`); ``None``: neither.
        optimizer, lr_scheduler, label_smoothing, channels_last, compile: see :class:`SupervisedModule`.
            With :class:`kd_lightning.optim.DOT` the weighted ``ce`` term is the task loss and the sum of
            every other weighted term the distillation loss, each with its own momentum.
    """

    def __init__(
        self,
        student: ModelSpec,
        teacher: ModelSpec | list[ModelSpec],
        num_classes: int,
        temperature: float | None = None,
        alpha: float | None = None,
        losses: list[LossTerm] | None = None,
        input_shape: tuple[int, int, int] | None = None,
        teacher_cache: TeacherCacheConfig | None = None,
        teacher_options: TeacherOptions | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(num_classes, optimizer, lr_scheduler, label_smoothing, channels_last, compile)
        if losses is None:
            # Recorded as the values trained with, so the hyper-parameters say what the objective was.
            alpha = HINTON_ALPHA if alpha is None else alpha
            temperature = HINTON_TEMPERATURE if temperature is None else temperature
            terms = hinton_terms(alpha, temperature)
        else:
            _refuse_two_objectives(alpha, temperature)
            terms = [as_term(term) for term in losses]
        student_spec = as_spec(student)
        teacher_specs = [as_spec(spec) for spec in teacher] if isinstance(teacher, list) else [as_spec(teacher)]
        cache_config = None if teacher_cache is None else TeacherCacheConfig.of(teacher_cache)
        # save_hyperparameters reads these locals: plain dicts keep checkpoints loadable with
        # weights_only=True and show up as fields, not object reprs, in loggers such as W&B.
        student = student_spec.to_dict()  # type: ignore[assignment]
        teacher_dicts = [spec.to_dict() for spec in teacher_specs]
        teacher = teacher_dicts if isinstance(teacher, list) else teacher_dicts[0]  # type: ignore[assignment]
        teacher_cache = None if cache_config is None else cache_config.to_dict()  # type: ignore[assignment]
        options = TeacherOptions.of(teacher_options)
        teacher_options = options.to_dict()  # type: ignore[assignment]
        losses = None if losses is None else [term.to_dict() for term in terms]  # type: ignore[misc]
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.teacher_options = options
        self.network = student_spec.build(num_classes)
        self.teacher: FrozenTeacher | TeacherEnsemble = (
            TeacherEnsemble(teacher_specs, num_classes, options.ensemble)
            if len(teacher_specs) > 1
            else FrozenTeacher(teacher_specs[0], num_classes)
        )
        # Under DDP the frozen teacher is neither in the gradient sync (it has no trainable
        # parameters) nor in the per-step buffer broadcast: every rank builds the same one.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            self, self.teacher.state_names(TEACHER_PREFIX)
        )
        # Loss hyper-parameters, layer names and feature shapes come from the config: a
        # ValueError here is the user's to fix, so it becomes a one-line ConfigError.
        with as_config_error():
            self.loss_terms, self.loss_weights = _build_terms(terms)
            if isinstance(self.teacher, TeacherEnsemble):
                _check_ensemble_terms(self.distillation_losses(), options.ensemble)
                if options.ensemble == AEKD:
                    check_aekd(options.aekd_max_weight, options.aekd_tolerance, len(teacher_specs))
            self.student_taps = self._tap_features(input_shape)
            for _, loss in self.distillation_losses():
                loss.bind_student(self.network)
                if isinstance(self.teacher, FrozenTeacher):
                    loss.bind_teacher(self.teacher.network)
                elif isinstance(loss, CAMKDFeatureLoss):
                    loss.bind_teacher(nn.ModuleList(teacher.network for teacher in self.teacher.members()))
        self.val_teacher_metrics = _teacher_metrics(num_classes, "val/")
        self.test_teacher_metrics = _teacher_metrics(num_classes, "test/")
        self.teacher_cache = (
            None
            if cache_config is None
            else TeacherCache(
                cache_config,
                num_classes,
                self.logit_temperature() if cache_config.topk else HINTON_TEMPERATURE,
                self.cached_teacher(),
            )
        )

    def cached_teacher(self) -> Teacher:
        """The teacher as the cache sees it; an ensemble's members are digested one by one
        (:func:`~kd_lightning.cache.teacher.entry.teacher_digest`), its networks moved together."""
        return cast(Teacher, self.teacher)

    def logit_temperature(self) -> float:
        """The one temperature at which the logit terms (:class:`~kd_lightning.losses.LogitLoss`) soften
        the teacher's logits, where a top-k teacher cache keeps the dropped classes' mass exact.

        Hinton's 4 when no term reads the teacher's logits (the dropped mass then matters to none).

        Raises:
            ConfigError: the logit terms soften at several temperatures, or a term cannot be served from the
                top-k logits at all.
        """
        misfits = [name for name, loss in self.distillation_losses() if not loss.topk_compatible]
        if misfits:
            raise ConfigError(
                f"teacher_cache.topk drops the teacher's other logits, but terms {misfits} read every class's logit "
                "or soften them at a learnt or several temperatures: drop teacher_cache.topk (or standardize)"
            )
        temperatures = {loss.temperature for _, loss in self.distillation_losses() if isinstance(loss, LogitLoss)}
        if len(temperatures) > 1:
            raise ConfigError(
                f"teacher_cache.topk keeps the teacher's dropped classes exact at one temperature, but the loss terms "
                f"soften its logits at {sorted(temperatures)}: use one temperature or drop teacher_cache.topk"
            )
        return temperatures.pop() if temperatures else HINTON_TEMPERATURE

    def _tap_features(self, input_shape: tuple[int, int, int] | None) -> FeatureTaps | None:
        """Hook the layers the losses need, probe their shapes and build the losses' adapters."""
        losses: list[DistillationLoss] = list(self.loss_terms.values())  # type: ignore[arg-type]  # a ModuleDict of them
        student_layers = [name for loss in losses for name in loss.student_layers]
        teacher_layers = [name for loss in losses for name in loss.teacher_layers]
        if not student_layers and not teacher_layers:
            return None
        sample = self._probe_batch(input_shape)
        student_taps = FeatureTaps(self.network, student_layers, sample)
        teacher_shapes = self.teacher.tap(teacher_layers, sample)
        for loss in losses:
            loss.build(student_taps.shapes, teacher_shapes)
        return student_taps

    def _probe_batch(self, input_shape: tuple[int, int, int] | None) -> torch.Tensor:
        """Two inputs as the student reads them (images or token ids), built by its input description."""
        if input_shape is not None:
            channels, height, width = input_shape  # a list when it comes from YAML
            return torch.rand(2, channels, height, width)
        try:
            return self.network.input_config.probe_batch(2)
        except ValueError as err:
            raise ValueError(f"feature losses probe layer shapes, but student {self.network.name!r} {err}") from None

    def prepare_training_data(self, datamodule: ImageClassificationDataModule) -> None:
        """Refuse teachers that number the classes otherwise and label-hungry losses on unlabeled data, size
        losses by the training set (CRD), serve the teacher cache through the DataModule."""
        for teacher in self.teacher.members():
            teacher.check_class_order(datamodule.class_names)
        if datamodule.has_unlabeled:
            needs_labels = [key for key, loss in self.loss_terms.items() if loss.needs_labels]
            if needs_labels:
                raise ConfigError(
                    f"loss terms {needs_labels} need a label for every sample, but the DataModule hands out "
                    "unlabeled images (unlabeled: rest): drop those terms or the unlabeled images"
                )
        if datamodule.train_set is not None:
            # Losses sized by the training set (CRD's memory) learn it here, before any checkpoint restore.
            with as_config_error():
                for _, loss in self.distillation_losses():
                    loss.bind_training_labels(datamodule.train_set.labels)
        if self.teacher_options.recalibrate_bn:
            device = self.trainer.strategy.root_device
            self.teacher.to(device)
            batches = training_batches(datamodule, self.teacher_options.recalibrate_bn, seed=0, device=device)
            self.teacher.recalibrate_batchnorm(batches)  # before the teacher cache stores its outputs
        if self.teacher_cache is not None:
            ensemble = self.teacher_options.ensemble
            if (
                isinstance(self.teacher, TeacherEnsemble)
                and (ensemble != MEAN_LOGITS or self.teacher.tapped)
                and datamodule.streams_training_set
            ):
                raise ConfigError(
                    f"the teacher cache of a streamed data set stores one teacher's outputs, but ensemble {ensemble} "
                    "or a camkd_feature term reads each teacher's: use ensemble mean_logits and no camkd_feature, "
                    "or drop teacher_cache"
                )
            source = teacher_cache_source(self.teacher_cache, self.trainer, self.cached_teacher())
            if source is not None:
                datamodule.use_source("train", source)

    def configure_callbacks(self) -> list[Callback]:
        """The base callbacks, and a :class:`TeacherCheck` at fit start unless the Trainer has one."""
        callbacks = super().configure_callbacks()
        present = self._trainer.callbacks if self._trainer is not None else []  # type: ignore[attr-defined]
        # The check reads one teacher's network and recorded scores.
        if isinstance(self.teacher, FrozenTeacher) and not any(isinstance(cb, TeacherCheck) for cb in present):
            callbacks.append(TeacherCheck())
        return callbacks

    def networks_to_compile(self) -> list[nn.Module]:
        return [self.network, *(teacher.network for teacher in self.teacher.members())]

    def student_outputs(self, x: torch.Tensor) -> ModelOutputs:
        if self.student_taps is None:
            return ModelOutputs(self.network(x))
        return ModelOutputs(*self.student_taps(x))

    def loss_components(
        self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext
    ) -> dict[str, torch.Tensor]:
        """Every weighted term by label (``ce`` plus each distillation loss), unweighted; every loss
        gets the same ``context`` and reads what it needs from it."""
        terms = {CROSS_ENTROPY: self.cross_entropy(student.logits, context.labels)}
        ensemble = self.teacher_options.ensemble if isinstance(self.teacher, TeacherEnsemble) else None
        for name, loss in self.distillation_losses():
            if isinstance(loss, CAMKDFeatureLoss):  # weighs the teachers itself
                terms[name] = loss(student, teacher, context)
            elif ensemble == MEAN_LOSS:
                members = member_outputs(teacher)
                terms[name] = torch.stack([loss(student, t, context) for t in members]).mean()
            elif ensemble in SAMPLE_WEIGHTED:
                logits = torch.stack([t.logits for t in member_outputs(teacher)])
                weights = sample_weights(ensemble, logits, context.labels)
                terms[name] = weighted_kd(student.logits, logits, weights, cast(LogitLoss, loss).temperature)
            elif ensemble == AEKD:
                options = self.teacher_options
                members = member_outputs(teacher)
                terms[name] = aekd_loss(
                    loss, student, members, context, options.aekd_max_weight, options.aekd_tolerance
                )
            else:
                terms[name] = loss(student, teacher, context)
        return terms

    def distillation_losses(self) -> list[tuple[str, DistillationLoss]]:
        """The distillation terms by label (``ModuleDict`` holds them as plain modules for type checkers)."""
        return [(name, cast(DistillationLoss, loss)) for name, loss in self.loss_terms.items()]

    def objective_weights(self, epoch: int) -> dict[str, float]:
        """The weight of each term at ``epoch``: all of them, or only a term that trains alone then."""
        alone = {name for name, loss in self.distillation_losses() if loss.trains_alone(epoch)}
        return {name: w for name, w in self.loss_weights.items() if not alone or name in alone}

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x = batch.inputs
        teacher = batch.teacher if batch.teacher is not None else self.teacher(x)
        student = self.student_outputs(x)
        context = StepContext(batch.labels, batch.indices, self.current_epoch, self.network.input_config.token_mask(x))
        terms = self.loss_components(student, teacher, context)
        weights = self.objective_weights(context.epoch)
        loss = torch.stack([weight * terms[name] for name, weight in weights.items()]).sum()
        trainer = self._trainer
        if trainer is not None and trainer.optimizers and isinstance(trainer.optimizers[0], DOT):
            loss = task_objective(trainer.optimizers[0], terms, weights, trainer.accumulate_grad_batches)
        self.train_metrics.update(student.logits, batch.labels)
        self.log_step_values(loss, terms, len(batch))
        return loss

    def configure_optimizers(self):
        config = super().configure_optimizers()
        if isinstance(config["optimizer"] if isinstance(config, dict) else config, DOT):
            check_dot(self.loss_weights, self.distillation_losses(), self._trainer)
        return config

    def _evaluate(self, batch: Batch, stage: str, metrics: MetricCollection) -> dict[str, torch.Tensor]:
        outputs = super()._evaluate(batch, stage, metrics)
        student_logits, teacher_logits = outputs["logits"], self.teacher(batch.inputs).logits
        teacher_metrics = self.val_teacher_metrics if stage == "val" else self.test_teacher_metrics
        teacher_metrics["teacher_acc"].update(teacher_logits, batch.labels)
        teacher_metrics["agreement"].update(student_logits, teacher_logits.argmax(dim=-1))
        teacher_metrics["kl"].update(student_logits, teacher_logits)
        self.log_dict(teacher_metrics)
        return {**outputs, "teacher_logits": teacher_logits}

    def trainable_parameters(self):
        # The teacher is frozen, so this is the student plus any loss adapters.
        return (p for name, p in self.named_parameters() if p.requires_grad and not name.startswith(TEACHER_PREFIX))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # Where the teacher came from and what it was, so evaluation can rebuild and verify it.
        checkpoint["teacher"] = self.teacher.fingerprint()
        if not self.teacher_options.stored:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved_teacher = any(k.startswith(TEACHER_PREFIX) for k in checkpoint["state_dict"])
        if "teacher" in checkpoint and not saved_teacher:
            self.teacher.verify(checkpoint["teacher"])

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load strictly; a checkpoint saved without its teacher keeps the teacher rebuilt from its spec."""
        has_teacher = any(k.startswith(TEACHER_PREFIX) for k in state_dict)
        if not has_teacher:
            teacher_state = {TEACHER_PREFIX + k: v for k, v in self.teacher.state_dict().items()}
            state_dict = {**state_dict, **teacher_state}
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if has_teacher:
            self.teacher.rehash()
        return result


def hinton_terms(alpha: float, temperature: float) -> list[LossTerm]:
    """Hinton et al.'s ``(1 − α)·CE + α·KD(T)`` written as loss terms."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1] (the KD share of the loss), got {alpha}")
    return [LossTerm(CROSS_ENTROPY, 1.0 - alpha), LossTerm("kd", alpha, {"temperature": temperature})]


def _refuse_two_objectives(alpha: float | None, temperature: float | None) -> None:
    """``alpha``/``temperature`` write the α/T objective that ``losses`` replaces: giving both is ambiguous."""
    given = [
        f"{name}: {value}" for name, value in (("alpha", alpha), ("temperature", temperature)) if value is not None
    ]
    if given:
        raise ConfigError(
            f"{' and '.join(given)} would be ignored next to losses, which replaces the alpha/temperature "
            "objective: drop them and set each term's weight and temperature in losses, e.g. "
            "[{name: ce, weight: 0.1}, {name: kd, weight: 0.9, kwargs: {temperature: 4.0}}]"
        )


def _check_ensemble_terms(losses: list[tuple[str, DistillationLoss]], ensemble: str) -> None:
    """Several teachers serve logit terms and ``camkd_feature`` (which weighs them itself); ``ebkd``/``camkd``
    weight the per-sample KD term and nothing else."""
    unbound = DistillationLoss.bind_teacher
    combined = [(name, loss) for name, loss in losses if not isinstance(loss, CAMKDFeatureLoss)]
    misfits = [
        name
        for name, loss in combined
        if loss.teacher_layers or loss.student_layers or type(loss).bind_teacher is not unbound
    ]
    if misfits:
        raise ValueError(
            f"loss terms {misfits} read one teacher's layers or weights, but there are several teachers: "
            "use logit terms (kd, dkd, dist, ...), camkd_feature, or one teacher"
        )
    if ensemble in SAMPLE_WEIGHTED:
        others = [name for name, loss in combined if not isinstance(loss, KDLoss) or loss.standardize]
        if others:
            raise ValueError(
                f"ensemble {ensemble} weights each teacher's per-sample KD term, but terms {others} are not plain "
                "kd: use ce and kd only, or ensemble mean_loss"
            )


def _build_terms(terms: list[LossTerm]) -> tuple[nn.ModuleDict, dict[str, float]]:
    keys = [term.key for term in terms]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(f"loss terms {duplicates} appear twice: give each a distinct `label`")
    modules = nn.ModuleDict()
    for term in terms:
        if term.name == CROSS_ENTROPY:
            if term.kwargs or term.key != CROSS_ENTROPY:
                raise ValueError("the ce term takes no kwargs or label (label_smoothing is a module argument)")
        elif term.key == CROSS_ENTROPY:
            raise ValueError(f"label 'ce' is reserved for the cross-entropy term, not {term.name!r}")
        else:
            modules[term.key] = create_loss(term.name, **term.kwargs)
    weights = {CROSS_ENTROPY: 0.0} | {term.key: term.weight for term in terms}
    return modules, weights


def _teacher_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Teacher accuracy, top-1 agreement (student accuracy against the teacher's argmax) and
    mean KL(teacher ‖ student) at temperature 1."""
    return MetricCollection(
        {
            "teacher_acc": MulticlassAccuracy(num_classes, average="micro"),
            "agreement": MulticlassAccuracy(num_classes, average="micro"),
            "kl": TeacherStudentKL(),
        },
        prefix=prefix,
        compute_groups=False,
    )
