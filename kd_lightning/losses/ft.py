"""Factor Transfer (Kim, Park & Kwak, "Paraphrasing Complex Network", NeurIPS 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kd_lightning.losses._feature_maps import check_feature_maps, check_init_epochs, pool_to_smaller
from kd_lightning.losses._registry import register_loss
from kd_lightning.losses._utils import full_precision
from kd_lightning.losses.base import DistillationLoss
from kd_lightning.losses.context import StepContext
from kd_lightning.outputs import ModelOutputs


def factor_map(factor: torch.Tensor) -> torch.Tensor:
    """RepDistiller's normalised factor: the channel mean of ``F²``, flattened and L2-normalised ``[B, H·W]``."""
    return F.normalize(full_precision(factor).pow(2).mean(dim=1).flatten(1), dim=1)


def ft_loss(student_factor: torch.Tensor, teacher_factor: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the normalised factors (Kim et al. 2018, Eq. 3 with ``p = 1``).

    The paper L2-normalises the flattened factors ``F/‖F‖₂``; like RepDistiller, whose numbers the
    CRD paper reports, each factor is first reduced to the channel mean of its squares (an
    attention map), and the loss averages over positions and batch instead of summing. The
    larger factor is average-pooled to the smaller's size.
    """
    s, t = pool_to_smaller(student_factor, teacher_factor)
    return (factor_map(s) - factor_map(t)).abs().mean()


def _conv_stack(cin: int, cout: int, conv: type[nn.Conv2d | nn.ConvTranspose2d], batchnorm: bool) -> nn.Sequential:
    """Three 3×3 (transposed) convs ``cin → cin → cout → cout``, each followed by (BN and) LeakyReLU(0.1)."""
    layers: list[nn.Module] = []
    for a, b in ((cin, cin), (cin, cout), (cout, cout)):
        layers += [conv(a, b, 3, 1, 1), *([nn.BatchNorm2d(b)] if batchnorm else []), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """The teacher-side autoencoder: three 3×3 convs down to ``rate × C`` factors, three transposed convs back.

    Without BatchNorm, as RepDistiller builds it.
    """

    def __init__(self, channels: int, rate: float) -> None:
        super().__init__()
        factors = int(channels * rate)
        self.encoder = _conv_stack(channels, factors, nn.Conv2d, batchnorm=False)
        self.decoder = _conv_stack(factors, channels, nn.ConvTranspose2d, batchnorm=False)


def build_translator(student_channels: int, teacher_channels: int, rate: float) -> nn.Module:
    """The student-side encoder: three 3×3 conv-BN-LeakyReLU layers to the paraphraser's factor width."""
    return _conv_stack(student_channels, int(teacher_channels * rate), nn.Conv2d, batchnorm=True)


@register_loss("ft")
class FTLoss(DistillationLoss):
    """Factor transfer from one teacher layer to one student layer, with the paraphraser's initialisation stage.

    For the first ``init_epochs`` epochs this term is the whole objective and is the paraphraser's
    reconstruction error ``MSE(decoder(encoder(t)), t)`` times ``reconstruction_weight`` (so only the
    paraphraser trains; RepDistiller: 30 epochs, unweighted, so ``reconstruction_weight`` is
    ``1 / weight``). Afterwards the paraphraser is fixed and the term is :func:`ft_loss` between the
    translator's factor of the student and the paraphraser's factor of the teacher. RepDistiller
    trains its paraphraser with lr 0.01 on CIFAR ResNets and WRNs, and a fresh optimizer;
    here the stage shares the run's optimizer and learning rate. The paraphraser's decoder (and,
    in each stage, the part not trained then) gets no gradient, so under DDP use
    ``strategy: ddp_find_unused_parameters_true``.

    Args:
        student_layers: the one student layer translated (RepDistiller: the last stage).
        teacher_layers: the one teacher layer paraphrased.
        rate: factor width as a fraction of the teacher's channels (0.5 in the paper).
        init_epochs: epochs of paraphraser training; 0 = no initialisation stage (a random paraphraser).
        reconstruction_weight: factor on the reconstruction error during that stage.
    """

    def __init__(
        self,
        student_layers: Sequence[str] = ("layer3",),
        teacher_layers: Sequence[str] = ("layer3",),
        rate: float = 0.5,
        init_epochs: int = 0,
        reconstruction_weight: float = 1.0,
    ) -> None:
        super().__init__()
        check_init_epochs(init_epochs)
        if len(student_layers) != 1:
            raise ValueError(f"FT translates one layer per network, got student_layers={list(student_layers)}")
        self.set_layers(student_layers, teacher_layers)
        self.rate, self.init_epochs, self.reconstruction_weight = rate, init_epochs, reconstruction_weight
        self.paraphraser: nn.Module = nn.Identity()
        self.translator: nn.Module = nn.Identity()

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size]) -> None:
        check_feature_maps("FT", student_shapes, self.student_layers)
        check_feature_maps("FT", teacher_shapes, self.teacher_layers)
        s_channels, t_channels = student_shapes[self.student_layers[0]][1], teacher_shapes[self.teacher_layers[0]][1]
        if int(t_channels * self.rate) < 1:
            raise ValueError(f"FT's rate {self.rate} leaves no factor channel of the teacher's {t_channels}")
        self.paraphraser = Paraphraser(t_channels, self.rate)
        self.translator = build_translator(s_channels, t_channels, self.rate)

    def trains_alone(self, epoch: int) -> bool:
        return epoch < self.init_epochs

    def forward(self, student: ModelOutputs, teacher: ModelOutputs, context: StepContext) -> torch.Tensor:
        if not isinstance(self.paraphraser, Paraphraser):
            raise RuntimeError("FTLoss.build() was not called: its paraphraser needs the probed feature shapes")
        ((s, t),) = self.feature_pairs(student, teacher)
        if self.trains_alone(context.epoch):
            reconstruction = self.paraphraser.decoder(self.paraphraser.encoder(t))
            return self.reconstruction_weight * F.mse_loss(full_precision(reconstruction), full_precision(t))
        with torch.no_grad():  # the trained paraphraser stays fixed, as in RepDistiller
            teacher_factor = self.paraphraser.encoder(t)
        return ft_loss(self.translator(s), teacher_factor)

    def extra_repr(self) -> str:
        return f"rate={self.rate}, init_epochs={self.init_epochs}, reconstruction_weight={self.reconstruction_weight}"
