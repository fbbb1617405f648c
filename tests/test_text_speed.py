"""``benchmarks/text_speed.py`` on a tiny BERT: its loops compute the same numbers, so its ratios compare speed only."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import _textbrewer
from benchmarks.text_speed import (
    BARE_DISTILL,
    BARE_STUDENT,
    CACHED,
    KD_STUDENT,
    ONLINE,
    TB_CACHED,
    TB_ONLINE,
    Setup,
    run,
)
from tests._extras import require_extra
from tests._text_helpers import toy_rows, write_rows, write_tiny_bert

require_extra("text")


def test_every_loop_takes_the_same_first_step_and_ends_on_the_same_weights(tmp_path: Path) -> None:
    teacher = write_tiny_bert(tmp_path / "bert")
    write_rows(tmp_path / "data" / "train.tsv", toy_rows(repeat=8))  # 64 texts: 2 batches of 32 per epoch
    results = run(Setup(teacher, tmp_path / "data", epochs=2, steps_per_turn=1))
    peer = _textbrewer.unavailable_reason() is None
    assert set(results.epoch_times) == {BARE_DISTILL, ONLINE, CACHED, BARE_STUDENT, KD_STUDENT} | (
        {TB_ONLINE, TB_CACHED} if peer else set()
    )
    assert all(len(times) == 2 for times in results.epoch_times.values())
    first = results.first_losses
    # kd_lightning's step is the bare loop's arithmetic on the same batch, live or from the cache.
    assert first[ONLINE] == pytest.approx(first[BARE_DISTILL], rel=1e-6)
    assert first[CACHED] == pytest.approx(first[BARE_DISTILL], rel=1e-5)
    assert first[KD_STUDENT] == pytest.approx(first[BARE_STUDENT], rel=1e-6)
    assert first[BARE_STUDENT] != pytest.approx(first[BARE_DISTILL], rel=1e-3)  # no KD term: another number
    assert results.weight_gaps[ONLINE] == 0.0  # bit for bit
    assert results.weight_gaps[CACHED] < 1e-5  # the cached logits come from other batches' padding
    if peer:
        # TextBrewer's soft cross-entropy is kd_lightning's KL plus the teacher's entropy: same gradient.
        assert first[TB_ONLINE] - first[BARE_DISTILL] == pytest.approx(results.entropy_offset, rel=1e-4)
        assert results.entropy_offset > 1.0
        assert results.weight_gaps[TB_ONLINE] < 1e-5
    else:
        assert set(results.skipped) == {TB_ONLINE, TB_CACHED}
