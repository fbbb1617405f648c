"""TinyBERT's hidden-state and attention-map losses against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from kd_lightning.text.losses import AttentionMapMSE, HiddenStateMSE, attention_map_mse, hidden_state_mse


def test_hidden_state_mse_through_the_map_over_real_tokens_only() -> None:
    student = torch.tensor([[[1.0], [2.0], [9.0]]])  # [B=1, L=3, D_S=1]; the last token is padding
    teacher = torch.tensor([[[2.0, 0.0], [4.0, 1.0], [0.0, 0.0]]])  # D_T = 2
    weight, bias = torch.tensor([[2.0], [0.0]]), torch.tensor([0.0, 1.0])
    mask = torch.tensor([[1, 1, 0]])
    # projected: [[2, 1], [4, 1]] → squared errors [[0, 1], [0, 0]] → per-token means 0.5, 0 → 0.25
    assert hidden_state_mse(student, teacher, weight, bias, mask).item() == pytest.approx(0.25)
    # without the mask the padding token counts too: its projection (18, 1) vs (0, 0) adds (324 + 1) / 2
    assert hidden_state_mse(student, teacher, weight, bias).item() == pytest.approx((0.5 + 0 + 162.5) / 3)


def test_hidden_state_mse_refuses_unequal_widths_without_a_map() -> None:
    with pytest.raises(ValueError, match="do not match"):
        hidden_state_mse(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))


def test_hidden_state_module_learns_its_map() -> None:
    torch.manual_seed(0)
    loss = HiddenStateMSE(3, 5)
    student, teacher = torch.randn(2, 4, 3), torch.randn(2, 4, 5)
    loss(student, teacher).backward()
    assert loss.projection.weight.grad is not None and loss.projection.weight.grad.abs().sum() > 0
    expected = ((student @ loss.projection.weight.T + loss.projection.bias - teacher) ** 2).mean()
    torch.testing.assert_close(loss(student, teacher), expected)


def test_attention_map_mse_over_pairs_of_real_tokens() -> None:
    student = torch.zeros(1, 2, 2, 2)  # [B, h=2, L=2, L=2]
    teacher = torch.tensor([[[[1.0, 5.0], [5.0, 5.0]], [[3.0, 5.0], [5.0, 5.0]]]])
    mask = torch.tensor([[1, 0]])  # only the pair (0, 0) is real in each head
    # head 1: 1² = 1, head 2: 3² = 9 → mean over heads 5
    assert attention_map_mse(student, teacher, mask).item() == pytest.approx(5.0)
    assert attention_map_mse(student, teacher).item() == pytest.approx((1 + 75 + 9 + 75) / 8)
    assert AttentionMapMSE()(student, teacher, mask).item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="same heads"):
        attention_map_mse(torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 3, 3))
