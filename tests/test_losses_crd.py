"""CRD: the NCE objective against its formula, gradcheck, memory bank and normalisers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from kd_lightning.losses import CRDLoss, ModelOutputs, StepContext, crd_loss, nce_loss

GEN = torch.Generator().manual_seed(0)


def test_nce_loss_matches_the_formula() -> None:
    scores = torch.rand(3, 5, generator=GEN, dtype=torch.float64) + 0.1
    n, k = 100, 4
    noise = k / n
    expected = 0.0
    for row in scores.tolist():
        expected -= math.log(row[0] / (row[0] + noise + 1e-7))
        expected -= sum(math.log(noise / (h + noise + 1e-7)) for h in row[1:])
    assert nce_loss(scores, n).item() == pytest.approx(expected / 3, rel=1e-12)


def _embeddings(*shape: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=GEN, dtype=torch.float64), dim=-1)


def test_crd_loss_is_symmetric_nce_and_gradchecks() -> None:
    v_s, v_t = _embeddings(2, 4), _embeddings(2, 4)
    m_s, m_t = _embeddings(2, 6, 4), _embeddings(2, 6, 4)
    z = (3.0, 5.0)
    expected = nce_loss(torch.exp(torch.einsum("bkd,bd->bk", m_t, v_s) / 0.07) / 3.0, 50)
    expected = expected + nce_loss(torch.exp(torch.einsum("bkd,bd->bk", m_s, v_t) / 0.07) / 5.0, 50)
    got = crd_loss(v_s, v_t, m_s, m_t, z, 50)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    v = v_s.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: crd_loss(a, v_t, m_s, m_t, z, 50, 0.5), (v,))


def test_crd_scores_stay_float32_under_bf16_autocast() -> None:
    """exp(·/0.07) magnifies a bf16 rounding of the dot products to per cents of the loss; in a
    bf16-mixed step (bf16 embeddings, autocast on) the scores are still computed in float32."""
    v_s, v_t = _embeddings(4, 32).bfloat16(), _embeddings(4, 32).bfloat16()
    m_s, m_t = _embeddings(4, 9, 32).bfloat16(), _embeddings(4, 9, 32).bfloat16()
    exact = [t.double() for t in (v_s, v_t, m_s, m_t)]
    expected = nce_loss(torch.exp(torch.einsum("bkd,bd->bk", exact[3], exact[0]) / 0.07) / 3.0, 50)
    expected = expected + nce_loss(torch.exp(torch.einsum("bkd,bd->bk", exact[2], exact[1]) / 0.07) / 5.0, 50)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = crd_loss(v_s, v_t, m_s, m_t, (3.0, 5.0), 50)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def _crd(num_samples: int = 20) -> CRDLoss:
    loss = CRDLoss(num_samples, ["s"], ["t"], feat_dim=8, num_negatives=7)
    loss.build({"s": torch.Size([2, 6])}, {"t": torch.Size([2, 3, 2, 2])})
    return loss


def test_crd_updates_the_memory_of_the_batch_only_and_fixes_normalisers() -> None:
    loss = _crd()
    student = ModelOutputs(torch.zeros(4, 10), {"s": torch.randn(4, 6)})
    teacher = ModelOutputs(torch.zeros(4, 10), {"t": torch.randn(4, 3, 2, 2)})
    indices = torch.tensor([0, 5, 6, 19])
    before = loss.student_memory.clone()
    value = loss(student, teacher, StepContext(torch.zeros(4), indices))
    value.backward()
    assert torch.isfinite(value) and loss.student_embed.linear.weight.grad is not None
    v_s = loss.student_embed(student.features["s"]).detach()
    expected = F.normalize(before[indices] * 0.5 + v_s * 0.5, dim=1)
    torch.testing.assert_close(loss.student_memory[indices], expected)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[indices] = False
    torch.testing.assert_close(loss.student_memory[untouched], before[untouched])
    normalisers = loss.normalisers.clone()
    assert (normalisers > 0).all()
    loss(student, teacher, StepContext(torch.zeros(4), indices))
    torch.testing.assert_close(loss.normalisers, normalisers)
    assert {"student_memory", "teacher_memory", "normalisers"} <= set(loss.state_dict())


def test_crd_needs_indices_within_the_bank() -> None:
    loss = _crd()
    student = ModelOutputs(torch.zeros(2, 10), {"s": torch.randn(2, 6)})
    teacher = ModelOutputs(torch.zeros(2, 10), {"t": torch.randn(2, 3, 2, 2)})
    with pytest.raises(ValueError, match="return_indices"):
        loss(student, teacher, StepContext(torch.zeros(2)))
    with pytest.raises(ValueError, match="outside"):
        loss(student, teacher, StepContext(torch.zeros(2), torch.tensor([0, 20])))


def _rank_batch(rank: int, step: int) -> tuple[ModelOutputs, ModelOutputs, torch.Tensor]:
    """Rank 0 holds rows 0, 5, 6 and rank 1 rows 10, 11: uneven batches, disjoint rows."""
    gen = torch.Generator().manual_seed(10 * rank + step)
    indices = torch.tensor([0, 5, 6] if rank == 0 else [10, 11])
    n = len(indices)
    student = ModelOutputs(torch.zeros(n, 10), {"s": torch.randn(n, 6, generator=gen)})
    teacher = ModelOutputs(torch.zeros(n, 10), {"t": torch.randn(n, 3, 2, 2, generator=gen)})
    return student, teacher, indices


def _ddp_rank(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)  # the same memory and embedding heads on both ranks
    loss = _crd()
    model = DistributedDataParallel(loss)  # broadcasts rank 0's buffers before every forward
    for step in range(2):
        student, teacher, indices = _rank_batch(rank, step)
        model(student, teacher, StepContext(torch.zeros(len(indices)), indices)).backward()
    torch.save([loss.student_memory, loss.teacher_memory, loss.normalisers], Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_crd_memory_under_ddp_takes_every_ranks_rows(tmp_path: Path) -> None:
    """Two gloo ranks end with the memory of one process that saw both ranks' batches."""
    mp.spawn(_ddp_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    torch.manual_seed(0)
    single = _crd()
    for step in range(2):
        parts = [_rank_batch(rank, step) for rank in range(2)]
        student = ModelOutputs(torch.zeros(5, 10), {"s": torch.cat([p[0].features["s"] for p in parts])})
        teacher = ModelOutputs(torch.zeros(5, 10), {"t": torch.cat([p[1].features["t"] for p in parts])})
        single(student, teacher, StepContext(torch.zeros(5), torch.cat([p[2] for p in parts])))
    for student_memory, teacher_memory, normalisers in ranks:
        torch.testing.assert_close(student_memory, single.student_memory)
        torch.testing.assert_close(teacher_memory, single.teacher_memory)
        torch.testing.assert_close(normalisers, ranks[0][2])
