"""AEKD: the least-norm weights by hand and by an exact solve, the reference's stopping point, and the
reference's training-loop arithmetic (hooks on the logits, one-class SVM, dot product) rewritten here."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.svm import OneClassSVM

from kd_lightning.errors import ConfigError
from kd_lightning.losses import StepContext
from kd_lightning.losses.kd import KDLoss
from kd_lightning.modules.aekd import aekd_loss, check_aekd, logit_gradients, min_norm_weights
from kd_lightning.outputs import ModelOutputs

TIGHT = 1e-12  # far below every Gram here: the solver reaches the least-norm point


def exact_least_norm(gram: np.ndarray, cap: float) -> np.ndarray:
    """``argmin wᵀGw`` on ``{Σw = 1, 0 ≤ w ≤ cap}`` by trying every split into zero, capped and free
    weights and keeping the best point that solves its KKT system and is feasible."""
    k = len(gram)
    best, best_value = None, np.inf
    for split in itertools.product((0, 1, 2), repeat=k):  # 0: w = 0, 1: w = cap, 2: free
        free = [i for i in range(k) if split[i] == 2]
        capped = [i for i in range(k) if split[i] == 1]
        w = np.zeros(k)
        w[capped] = cap
        rest = 1.0 - cap * len(capped)
        if free:
            # [G_FF 1; 1ᵀ 0] [w_F; −λ] = [−G_FC·cap; rest]
            system = np.zeros((len(free) + 1, len(free) + 1))
            system[:-1, :-1] = gram[np.ix_(free, free)]
            system[:-1, -1] = 1.0
            system[-1, :-1] = 1.0
            rhs = np.append(-gram[np.ix_(free, capped)].sum(1) * cap, rest)
            try:
                w[free] = np.linalg.solve(system, rhs)[:-1]
            except np.linalg.LinAlgError:
                continue
        elif abs(rest) > 1e-12:
            continue
        if w.min() < -1e-12 or w.max() > cap + 1e-12:
            continue
        value = w @ gram @ w
        if value < best_value - 1e-15:
            best, best_value = w, value
    assert best is not None
    return best


def test_two_teachers_meet_at_the_closed_form_least_norm_point_by_hand() -> None:
    # g1 = (1, 0), g2 = (0, 2): ‖w g1 + (1 − w) g2‖² = w² + 4(1 − w)², least at w = 4/5.
    g = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    gram = g @ g.T
    torch.testing.assert_close(min_norm_weights(gram, 1.0, TIGHT), torch.tensor([0.8, 0.2], dtype=torch.float64))
    # A cap of 0.6 binds: the first teacher stops there, the second takes the rest.
    torch.testing.assert_close(min_norm_weights(gram, 0.6, TIGHT), torch.tensor([0.6, 0.4], dtype=torch.float64))
    # Opposite gradients of equal length cancel at equal weights.
    opposite = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(min_norm_weights(opposite, 1.0, TIGHT), torch.tensor([0.5, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("seed", range(6))
def test_the_weights_equal_an_exact_least_norm_solve(seed: int) -> None:
    generator = np.random.default_rng(seed)
    k = 3 + seed % 3
    cap = (0.6, 0.45, 1.0)[seed % 3]
    g = generator.normal(size=(k, 20)) + generator.normal(size=(1, 20))  # teachers that partly agree
    gram = g @ g.T
    weights = min_norm_weights(torch.from_numpy(gram), cap, TIGHT).numpy()
    np.testing.assert_allclose(weights, exact_least_norm(gram, cap), atol=1e-6)
    assert abs(weights.sum() - 1.0) < 1e-9 and weights.max() <= cap + 1e-9


def test_the_reference_tolerance_stops_at_its_starting_point_when_the_gradients_are_small() -> None:
    """libsvm starts with the first ⌊νK⌋ = 1 teacher at the cap and the rest on the second, and stops
    there when its gap is under 1e-6: the reference's weights for KD gradients at batch 64."""
    # The third gradient is the shortest: the least norm puts the cap on it and splits the rest evenly.
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.3]], dtype=torch.float64)
    gram = g @ g.T
    least = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    torch.testing.assert_close(torch.from_numpy(exact_least_norm(gram.numpy(), 0.6)), least)
    torch.testing.assert_close(min_norm_weights(gram, 0.6), least, atol=1e-5, rtol=0)
    start = torch.tensor([0.6, 0.4, 0.0], dtype=torch.float64)
    torch.testing.assert_close(min_norm_weights(gram * 1e-7, 0.6), start)


def test_a_cap_of_one_over_k_gives_equal_weights_and_a_lower_one_is_refused() -> None:
    gram = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(min_norm_weights(gram, 1 / 3), torch.full((3,), 1 / 3, dtype=torch.float64))
    with pytest.raises(ConfigError, match="at least 1/3"):
        check_aekd(0.3, 1e-6, 3)
    with pytest.raises(ConfigError, match="aekd_tolerance must be > 0"):
        check_aekd(0.6, 0.0, 3)


def test_kd_gradients_are_t_over_b_times_the_batch_mean_of_q_minus_p() -> None:
    """∂(T²·KL(p ‖ q)/B)/∂z_b = T·(q_b − p_b)/B, q = softmax(z/T): averaged over the batch, by hand."""
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(6, 5, dtype=torch.float64, generator=generator)
    teachers = [ModelOutputs(torch.randn(6, 5, dtype=torch.float64, generator=generator)) for _ in range(3)]
    q = (student / 4.0).softmax(-1)
    expected = torch.stack([(4.0 * (q - (t.logits / 4.0).softmax(-1)) / 6).mean(0) for t in teachers])
    torch.testing.assert_close(logit_gradients(KDLoss(4.0), student, teachers, StepContext(torch.zeros(6))), expected)


def _reference_weights(grads: torch.Tensor, max_weight: float, tolerance: float) -> torch.Tensor:
    """The reference's ``find_optimal_svm`` (no ``--svm_norm``): batch-mean gradients, their Gram, ν = 1/(C·K)."""
    m = grads.shape[0]
    mean = grads.reshape(m, grads.shape[1], -1).mean(1)
    gram = (mean @ mean.T).numpy()
    nu = min(max(1 / (max_weight * m), 1 / m), 1.0)
    svm = OneClassSVM(kernel="precomputed", nu=nu, tol=tolerance).fit(gram)
    weights = np.zeros(m)
    weights[svm.support_] = svm.dual_coef_[0] / (m * nu)
    return torch.from_numpy(weights)


def _reference_step(student: torch.Tensor, teachers: list[torch.Tensor], temperature: float, tolerance: float):
    """The reference's AEKD branch: a hook on the logits records each teacher's KD gradient as it is
    backpropagated; the loss is the weights' dot product with the KD values. Returns value and ∂/∂logits."""
    logits = student.clone().requires_grad_()
    grads: list[torch.Tensor] = []
    handle = logits.register_hook(lambda grad: grads.append(grad.detach().clone()))
    values = []
    for t in teachers:
        log_q = F.log_softmax(logits / temperature, dim=1)
        p = F.softmax(t / temperature, dim=1)
        value = F.kl_div(log_q, p, reduction="batchmean") * temperature**2
        value.backward(retain_graph=True)
        values.append(value)
    handle.remove()
    logits.grad = None
    loss = torch.dot(_reference_weights(torch.stack(grads), 0.6, tolerance), torch.stack(values))
    loss.backward()
    return loss.detach(), logits.grad


@pytest.mark.parametrize("tolerance", [1e-6, TIGHT])
def test_value_and_gradient_equal_the_reference_loop(tolerance: float) -> None:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(16, 10, dtype=torch.float64, generator=generator) * 3
    teachers = [torch.randn(16, 10, dtype=torch.float64, generator=generator) * 3 for _ in range(3)]
    expected_value, expected_grad = _reference_step(student, teachers, 4.0, tolerance)

    logits = student.clone().requires_grad_()
    members = [ModelOutputs(t) for t in teachers]
    value = aekd_loss(KDLoss(4.0), ModelOutputs(logits), members, StepContext(torch.zeros(16)), 0.6, tolerance)
    value.backward()
    torch.testing.assert_close(value.detach(), expected_value)
    torch.testing.assert_close(logits.grad, expected_grad)


def test_under_bf16_autocast_the_weights_are_the_float32_ones() -> None:
    """The gradients and their Gram stay float32 under autocast: a bf16 Gram would move where the solver stops."""
    generator = torch.Generator().manual_seed(3)
    student = ModelOutputs(torch.randn(32, 10, generator=generator) * 3)
    members = [ModelOutputs(torch.randn(32, 10, generator=generator) * 3) for _ in range(3)]
    context = StepContext(torch.zeros(32))
    g = logit_gradients(KDLoss(4.0), student.logits, members, context)
    weights = min_norm_weights(g @ g.T, 0.6, TIGHT)
    assert 0.05 < weights.min() and weights.max() < 0.55  # inside the simplex: any change of the Gram moves it
    expected = (weights * torch.stack([KDLoss(4.0)(student, t, context) for t in members])).sum()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = aekd_loss(KDLoss(4.0), student, members, context, 0.6, TIGHT)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected.float())
