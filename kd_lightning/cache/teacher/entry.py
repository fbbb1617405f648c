"""The teacher cache's settings, stored entry and key, shared by its in-memory and streamed implementations.

A frozen teacher in eval mode is a fixed function, so its outputs can be stored. With random
augmentation the student sees a new view of each image every epoch and the teacher must see that
same view. The cache fixes ``views`` augmented views per sample in advance: their crop offsets and
flips are drawn once from a seeded generator and stored next to the teacher's outputs, and in
epoch ``e`` the student trains on view ``e mod views``, rendered on the device from those
parameters with the functions the random augmentation uses (:func:`~kd_lightning.data.transforms.crop_at`,
:func:`~kd_lightning.data.transforms.flip_where`). This is the "stored soft labels per crop" design
of FKD (Shen & Xing, 2021): fresh per-epoch views would need a teacher forward every epoch. The
trade-off: ``views`` distinct views per image instead of one per epoch (Beyer et al., 2022, find
long, consistent "function matching" benefits from many views).

An entry holds ``[views, N, ...]`` tensors: the view parameters (``dy``, ``dx``, ``flip``), the
logits whole or as top-k values, class indices and one fill logit (:func:`topk_compress`), and the
tapped teacher layers (``feature.<layer>``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import torch

from kd_lightning.cache.keys import backbone_digest, cache_key, module_digest
from kd_lightning.cache.mapped import Layout
from kd_lightning.cache.store import CacheStore
from kd_lightning.data.transforms import crop_at, flip_where, to_float_images
from kd_lightning.errors import ConfigError
from kd_lightning.models.classifier import Classifier
from kd_lightning.models.feature_taps import FeatureTaps
from kd_lightning.outputs import ModelOutputs

log = logging.getLogger(__name__)

LOGITS = "logits"
TOPK = ("topk_values", "topk_indices", "topk_fill")
VIEW_PARAMETERS = ("dy", "dx", "flip")
FEATURE = "feature."  # prefix of the tapped teacher layers' entry names
FILLED = "filled"  # which rows of a streamed entry hold outputs
VIEW_SEED = 0  # the fixed views do not depend on the run's seed, so runs with other seeds share an entry
VIEW_PIPELINE = "to_float_images+crop_at+flip_where/v1"  # bump when view rendering changes


@dataclass
class TeacherCacheConfig:
    """The distiller's teacher cache: the teacher's training outputs computed once, when ``fit`` sets up.

    Args:
        storage: ``"memory"`` (this process), or ``"disk"``: files under ``directory``, memory-mapped,
            reused by later runs and shared by DDP ranks.
        views: fixed augmented views per training sample (used when the DataModule augments).
        topk: store only the top-k teacher logits per sample (many-class data sets); the other classes
            keep their total probability at the temperature of the logit losses.
        directory: folder of the ``"disk"`` entries.
        share_backbone_features: also store the teacher backbone's features and compute the logits with
            its head, so teachers sharing one frozen backbone (linear probes: seeds, label budgets)
            share one backbone pass. In-memory data sets and teachers without tapped layers only.
    """

    storage: Literal["memory", "disk"] = "memory"
    views: int = 1
    topk: int | None = None
    directory: str = ".kd_cache/teacher"
    share_backbone_features: bool = False

    def __post_init__(self) -> None:
        if self.storage not in ("memory", "disk"):
            raise ConfigError(f"teacher_cache.storage must be 'memory' or 'disk', got {self.storage!r}")
        if self.views < 1:
            raise ConfigError(f"teacher_cache.views must be >= 1, got {self.views}")
        if self.topk is not None and self.topk < 1:
            raise ConfigError(f"teacher_cache.topk must be >= 1 (or null: all logits), got {self.topk}")

    @classmethod
    def of(cls, value: TeacherCacheConfig | dict[str, Any]) -> TeacherCacheConfig:
        """Accept a config, or the dict stored in a checkpoint's hyper-parameters."""
        return value if isinstance(value, TeacherCacheConfig) else cls(**value)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so the config can live in a checkpoint loaded with ``weights_only=True``."""
        return asdict(self)


class Teacher(Protocol):
    """What the cache uses of the distiller's :class:`~kd_lightning.modules.teacher.FrozenTeacher`."""

    network: Classifier
    taps: FeatureTaps | None

    def __call__(self, x: torch.Tensor) -> ModelOutputs: ...


def teacher_digest(teacher: Teacher) -> str:
    """What decides the teacher's outputs: its weights, its input resize and pooled layers, its taps.

    Several teachers (:class:`~kd_lightning.modules.ensemble.TeacherEnsemble`): each member's digest and
    the ensemble, which decides whether the entry holds each member's logits or only their mean.
    """
    members = getattr(teacher, "teachers", None)
    if members is not None:
        return cache_key(teachers=[teacher_digest(member) for member in members], ensemble=teacher.ensemble)  # type: ignore[attr-defined]
    network = teacher.network
    return cache_key(
        state=module_digest(network),
        input_size=network.input_size,
        feature_layers=list(network.feature_layers),
        taps=list(teacher.taps.layers) if teacher.taps is not None else None,
    )


def shared_backbone_network(teacher: Teacher) -> Classifier:
    """The teacher's classifier, refused when its outputs are more than its head over its backbone's features."""
    if getattr(teacher, "teachers", None) is not None:
        raise ConfigError(
            "the teacher cache shares one teacher's backbone, but there are several teachers: "
            "turn teacher_cache.share_backbone_features off"
        )
    if teacher.taps is not None:
        raise ConfigError(
            "the teacher cache cannot share the backbone: the losses tap the teacher's layers "
            f"{list(teacher.taps.layers)}, which backbone features do not hold; turn "
            "teacher_cache.share_backbone_features off"
        )
    return teacher.network


def index_dtype(num_classes: int) -> torch.dtype:
    """The narrowest integer type that holds every class index."""
    return torch.int16 if num_classes <= torch.iinfo(torch.int16).max else torch.int32


def topk_compress(
    logits: torch.Tensor, k: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``k`` logits, their class indices, and one fill logit for the other ``C − k`` classes.

    The fill is ``T · log-mean-exp(dropped / T)``: at the distillation temperature ``T`` the
    dropped classes keep exactly their total softened probability mass (spread evenly). Only the
    shape of the tail is lost, and at high ``T`` the tail carries much of the signal, so the error
    grows with ``T`` (benchmarks/RESULTS_performance.md).
    """
    num_classes = logits.shape[-1]
    if not 0 < k < num_classes:
        raise ValueError(f"top-k needs 0 < k < num_classes={num_classes}, got {k}")
    values, indices = logits.topk(k, dim=-1)
    rest = logits.scatter(-1, indices, float("-inf"))
    fill = temperature * ((rest / temperature).logsumexp(dim=-1, keepdim=True) - math.log(num_classes - k))
    return values, indices, fill


def topk_expand(values: torch.Tensor, indices: torch.Tensor, fill: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Full logits from :func:`topk_compress`'s output."""
    full = fill.expand(*fill.shape[:-1], num_classes).clone()
    return full.scatter(-1, indices.long(), values)


class TeacherCache:
    """What this run's teacher cache stores and where: its config, the class count and the top-k temperature.

    The entry's format (:meth:`stored_logits`, :meth:`layout`) and key (:meth:`key`) are defined here
    once; :func:`~kd_lightning.cache.teacher.teacher_cache_source` fills and serves the entry.

    Args:
        config: the user's settings.
        num_classes: classes of the teacher's logits.
        temperature: the temperature the logit losses soften the teacher at, where top-k storage
            keeps the dropped classes' mass exact.
        teacher: the teacher, checked now against ``share_backbone_features``.
    """

    def __init__(self, config: TeacherCacheConfig, num_classes: int, temperature: float, teacher: Teacher) -> None:
        if config.topk is not None and config.topk >= num_classes:
            raise ConfigError(
                f"teacher_cache.topk must be below the {num_classes} classes (null: every logit), got {config.topk}"
            )
        if config.share_backbone_features:
            shared_backbone_network(teacher)
        self.config = config
        self.num_classes = num_classes
        self.temperature = temperature
        self.store = CacheStore(config.storage, config.directory, setting="teacher_cache.directory")

    def views_for(self, augments: bool) -> int:
        """The fixed views to store: ``config.views``, or one when the training data is not randomly augmented."""
        if augments or self.config.views == 1:
            return self.config.views
        log.info("teacher cache: no random augmentation, so one view per sample")
        return 1

    def stored_logits(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[..., C]`` logits as the entry stores them: whole, or as top-k values, indices and fill."""
        topk = self.config.topk
        if topk is None:
            return {LOGITS: logits}
        values, indices, fill = topk_compress(logits, topk, self.temperature)
        return dict(zip(TOPK, (values, indices.to(index_dtype(self.num_classes)), fill), strict=True))

    def layout(self, num_views: int, n: int, feature_shapes: dict[str, tuple[int, ...]]) -> Layout:
        """Names, shapes and dtypes of an entry of ``n`` samples (the view parameters, the outputs)."""
        rows = (num_views, n)
        layout: Layout = {"dy": (rows, torch.int64), "dx": (rows, torch.int64), "flip": (rows, torch.bool)}
        topk = self.config.topk
        if topk is None:
            layout[LOGITS] = ((*rows, self.num_classes), torch.float32)
        else:
            shapes = ((*rows, topk), (*rows, topk), (*rows, 1))
            dtypes = (torch.float32, index_dtype(self.num_classes), torch.float32)
            layout |= dict(zip(TOPK, zip(shapes, dtypes, strict=True), strict=True))
        for name, shape in feature_shapes.items():
            layout[FEATURE + name] = ((*rows, *shape), torch.float32)
        return layout

    def key(self, teacher: Teacher, views: dict[str, Any], labels: str) -> str:
        """The key of the teacher's outputs on ``views`` (:func:`view_key_parts`) of samples labelled ``labels``."""
        topk = self.config.topk
        return cache_key(
            kind="teacher",
            teacher=teacher_digest(teacher),
            labels=labels,
            topk=topk,
            topk_temperature=self.temperature if topk else None,
            **views,
        )


def view_key_parts(
    data: dict[str, Any], num_views: int, padding: int, hflip: bool, image_size: int | None, precision: str
) -> dict[str, Any]:
    """What decides the inputs the teacher sees: the samples (content digests, decoding), the views, the precision."""
    return dict(
        data=data,
        image_size=image_size,
        padding=padding,
        hflip=hflip,
        num_views=num_views,
        seed=VIEW_SEED,
        pipeline=VIEW_PIPELINE,
        precision=precision,
    )


def backbone_key(network: Classifier, views: dict[str, Any]) -> str:
    """The key of a teacher backbone's features on ``views`` (shared by teachers with another head)."""
    return cache_key(kind="teacher-features", backbone=backbone_digest(network), **views)


@dataclass
class ViewTable:
    """Per-sample augmentation parameters of ``num_views`` fixed views: ``[num_views, N]`` each."""

    padding: int
    dy: torch.Tensor
    dx: torch.Tensor
    flip: torch.Tensor
    hflip: bool = True

    @classmethod
    def sample(cls, n: int, num_views: int, padding: int, hflip: bool, seed: int = VIEW_SEED) -> ViewTable:
        generator = torch.Generator().manual_seed(seed)
        dy = torch.randint(0, 2 * padding + 1, (num_views, n), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (num_views, n), generator=generator)
        flip = (
            torch.rand(num_views, n, generator=generator) < 0.5
            if hflip
            else torch.zeros(num_views, n, dtype=torch.bool)
        )
        return cls(padding, dy, dx, flip, hflip)

    @property
    def num_views(self) -> int:
        return self.dy.shape[0]

    def render(self, images: torch.Tensor, index: torch.Tensor, view: int, image_size: int | None) -> torch.Tensor:
        """View ``view`` of the samples ``index`` from their uint8 ``images``, as float in [0, 1]."""
        x = to_float_images(images, image_size)
        x = crop_at(x, self.padding, self.dy[view, index], self.dx[view, index])
        return flip_where(x, self.flip[view, index]) if self.hflip else x

    def to(self, device: torch.device) -> ViewTable:
        return ViewTable(self.padding, self.dy.to(device), self.dx.to(device), self.flip.to(device), self.hflip)

    def to_entry(self) -> dict[str, torch.Tensor]:
        return dict(zip(VIEW_PARAMETERS, (self.dy, self.dx, self.flip), strict=True))


@dataclass
class TeacherOutputCache:
    """A stored entry in use: the views and the teacher's ``[num_views, N, ...]`` outputs on them.

    ``outputs`` holds either ``logits`` or the top-k triple (:meth:`TeacherCache.stored_logits`).
    """

    views: ViewTable
    image_size: int | None
    num_classes: int
    outputs: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def view_of_epoch(self, epoch: int) -> int:
        return epoch % self.views.num_views

    def render(self, images: torch.Tensor, index: torch.Tensor, epoch: int) -> torch.Tensor:
        """The student's (and the stored teacher's) input for this batch in ``epoch``."""
        return self.views.render(images, index, self.view_of_epoch(epoch), self.image_size)

    def teacher_outputs(self, index: torch.Tensor, epoch: int) -> ModelOutputs:
        """What the teacher computed on :meth:`render`'s views of the samples ``index``."""
        view = self.view_of_epoch(epoch)
        rows = {name: t[view].index_select(0, index) for name, t in self.outputs.items()}  # cheaper than t[view, index]
        if LOGITS in rows:
            logits = rows[LOGITS]
        else:
            values, indices, fill = (rows[name] for name in TOPK)
            logits = topk_expand(values, indices, fill, self.num_classes)
        return ModelOutputs(logits, {name: t[view].index_select(0, index) for name, t in self.features.items()})

    def to_entry(self) -> dict[str, torch.Tensor]:
        return self.views.to_entry() | self.outputs | {FEATURE + name: t for name, t in self.features.items()}

    @classmethod
    def from_entry(
        cls,
        entry: dict[str, torch.Tensor],
        padding: int,
        hflip: bool,
        image_size: int | None,
        num_classes: int,
        device: torch.device | None = None,
    ) -> TeacherOutputCache:
        """The entry's tensors, moved to ``device`` (``None``: left where they are, e.g. memory-mapped)."""
        moved = {name: t if device is None else t.to(device) for name, t in entry.items()}
        dy, dx, flip = (moved[name] for name in VIEW_PARAMETERS)
        views = ViewTable(padding, dy, dx, flip, hflip)
        outputs = {name: moved[name] for name in (LOGITS, *TOPK) if name in moved}
        features = {name.removeprefix(FEATURE): t for name, t in moved.items() if name.startswith(FEATURE)}
        return cls(views, image_size, num_classes, outputs, features)
