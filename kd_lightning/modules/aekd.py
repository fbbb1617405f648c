"""AEKD (Du et al., NeurIPS 2020): teachers weighted by the point of least norm among their gradients.

"Agree to Disagree: Adaptive Ensemble Knowledge Distillation in Gradient Space" weights teacher
``k``'s loss ``L_k`` by ``w = argmin ‖Σ_k w_k g_k‖²`` over ``{Σ_k w_k = 1, 0 ≤ w_k ≤ C}``, ``g_k`` the
gradient of ``L_k``: where the teachers disagree, the student follows the direction that serves
all of them best, and the cap ``C`` keeps any one teacher from taking over. The problem is the dual
of a one-class SVM on the Gram matrix of the gradients, with ``ν = 1 / (C·K)``.

This module computes it as the reference code of CA-MKD does (Rorozhl/CA-MKD, which runs AEKD
among its baselines: ``helper/loops.py`` and ``helper/optimization.py``), which is where its
published numbers come from:

- ``g_k`` is the gradient of ``L_k`` with respect to the student's logits, averaged over the batch
  (one ``[C]`` vector per teacher), not flattened over the samples; unnormalised (its
  ``--svm_norm`` option, off in its runs, is not offered);
- the weights are constants: the loss is ``Σ_k w_k L_k``, so its gradient is ``Σ_k w_k ∇L_k``;
- the quadratic program is solved by the reference's solver, scikit-learn's ``OneClassSVM`` (libsvm's
  SMO) on the precomputed Gram matrix, started where libsvm starts (``⌊νK⌋`` teachers at the cap,
  the rest of the mass on the next, in teacher order) and stopped when its first-order gap is below
  an *absolute* tolerance, ``1e-6`` there.

**Where the reference departs from the paper** (and this module with it, by default): batch-mean
logit gradients are small, so the solver's gap can start under its tolerance, and then it stops at
its starting point: weights ``(0.6, 0.4, 0)`` for three teachers at ``C = 0.6``, whatever the
gradients. On random CIFAR-shaped logits (batch 64, 100 classes, ``T = 4``) the Gram's entries were
``1e-5`` and below and it stopped there every time. A tolerance far below the Gram's scale
(``aekd_tolerance: 1e-12``) gives the least-norm point the paper describes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kd_lightning.errors import ConfigError
from kd_lightning.losses import DistillationLoss, StepContext
from kd_lightning.losses._utils import autocast_off, full_precision
from kd_lightning.outputs import ModelOutputs

# The reference's cap (its ``-C`` default) and libsvm's tolerance as the reference sets it.
REFERENCE_MAX_WEIGHT = 0.6
REFERENCE_TOLERANCE = 1e-6


def check_aekd(max_weight: float, tolerance: float, num_teachers: int) -> None:
    """Refuse a cap under which the weights cannot sum to 1, or a tolerance the solver cannot stop at."""
    if max_weight * num_teachers < 1.0:
        raise ConfigError(
            f"teacher_options.aekd_max_weight {max_weight} caps each of {num_teachers} teachers' weights below a "
            f"sum of 1: use at least 1/{num_teachers} (which gives equal weights)"
        )
    if tolerance <= 0:
        raise ConfigError(f"teacher_options.aekd_tolerance must be > 0 (the solver's stopping gap), got {tolerance}")


def one_class_nu(max_weight: float, num_teachers: int) -> float:
    """The one-class SVM's ``ν`` for a cap ``C``: ``1 / (C·K)``, held in ``[1/K, 1]`` as the reference holds it."""
    return min(max(1.0 / (max_weight * num_teachers), 1.0 / num_teachers), 1.0)


def min_norm_weights(
    gram: torch.Tensor, max_weight: float = REFERENCE_MAX_WEIGHT, tolerance: float = REFERENCE_TOLERANCE
) -> torch.Tensor:
    """``[K]`` float64 weights ``w`` minimising ``wᵀ G w`` on ``{Σ w = 1, 0 ≤ w ≤ C}``, as the reference finds them.

    libsvm solves for ``α = νK·w`` (``0 ≤ α ≤ 1``, ``Σ α = νK``) and stops once its largest
    first-order violation is below ``tolerance`` (absolute, in ``α`` units).

    Args:
        gram: ``[K, K]`` Gram matrix of the teachers' gradients.
        max_weight: the cap ``C`` on each weight; at least ``1/K``.
        tolerance: libsvm's stopping tolerance (``eps``).
    """
    k = gram.shape[0]
    nu = one_class_nu(max_weight, k)
    if nu >= 1.0:
        # Every weight at the cap 1/K is the only feasible point (libsvm, left no free variable, fails on it).
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    from sklearn.svm import OneClassSVM  # the reference's solver; imported only where AEKD runs

    svm = OneClassSVM(kernel="precomputed", nu=nu, tol=tolerance)
    svm.fit(gram.detach().to(device="cpu", dtype=torch.float64).numpy())
    weights = torch.zeros(k, dtype=torch.float64)
    weights[torch.from_numpy(svm.support_)] = torch.from_numpy(svm.dual_coef_[0]) / (k * nu)
    return weights


def logit_gradients(
    loss: DistillationLoss, student_logits: torch.Tensor, members: Sequence[ModelOutputs], context: StepContext
) -> torch.Tensor:
    """``[K, C]``: each teacher's ``∂L_k/∂z`` at the student's logits ``z``, averaged over the batch.

    Taken on a detached copy of the logits, so the training graph is untouched (and it works under
    ``no_grad`` too); the values are those a hook on the logits would record.
    """
    z = full_precision(student_logits.detach()).requires_grad_()
    with torch.enable_grad():
        grads = [torch.autograd.grad(loss(ModelOutputs(z), t, context), z)[0] for t in members]
    return torch.stack(grads).mean(1)


def aekd_loss(
    loss: DistillationLoss,
    student: ModelOutputs,
    members: Sequence[ModelOutputs],
    context: StepContext,
    max_weight: float = REFERENCE_MAX_WEIGHT,
    tolerance: float = REFERENCE_TOLERANCE,
) -> torch.Tensor:
    """``Σ_k w_k L_k``, ``L_k`` the term ``loss`` against teacher ``k``, ``w`` (constants) from
    :func:`min_norm_weights` on the Gram matrix of :func:`logit_gradients`."""
    g = logit_gradients(loss, student.logits, members, context)
    with autocast_off(g):  # a half-precision Gram would move the solver's stopping point
        gram = g @ g.T
    weights = min_norm_weights(gram, max_weight, tolerance)
    values = torch.stack([loss(student, t, context) for t in members])
    return (weights.to(values) * values).sum()
