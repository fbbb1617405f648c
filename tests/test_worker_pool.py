"""``ordered_map``: results in input order, a worker's exception raised as itself, a dead worker
one :class:`WorkerDiedError`, and no worker left running whatever happens."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from contextlib import closing

import pytest

from kd_lightning.data.worker_pool import WorkerDiedError, WorkerTraceback, ordered_map
from tests.conftest import hang_guard


def square_first_batch_last(x: int) -> int:
    if x == 0:  # the first batch finishes after the ones handed out with it
        time.sleep(0.3)
    return x * x


def refuse_seven(x: int) -> int:
    if x == 7:
        raise ValueError(f"input {x} refused")
    return x


def die_at_forty(x: int) -> int:
    if x == 40:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


@pytest.mark.parametrize("num_workers", [1, 3])
def test_results_come_in_input_order(num_workers):
    with hang_guard():
        assert list(ordered_map(square_first_batch_last, range(200), num_workers)) == [x * x for x in range(200)]
    assert multiprocessing.active_children() == []


def test_an_exception_in_a_worker_is_raised_as_itself():
    with hang_guard(), pytest.raises(ValueError, match="^input 7 refused$") as raised:
        list(ordered_map(refuse_seven, range(100), 2))
    assert isinstance(raised.value.__cause__, WorkerTraceback)
    assert 'raise ValueError(f"input {x} refused")' in str(raised.value.__cause__)
    assert multiprocessing.active_children() == []


def test_a_killed_worker_is_one_error_naming_the_signal_and_its_inputs():
    with hang_guard(), pytest.raises(WorkerDiedError) as raised:
        list(ordered_map(die_at_forty, range(100), 2, describe=lambda x: f"item {x}"))
    message = str(raised.value)
    assert "was killed (SIGKILL: out of memory?) while handling item 32 … item 63" in message
    assert message.endswith("lower num_workers or free memory")
    assert multiprocessing.active_children() == []


def test_stopping_early_stops_the_workers():
    with hang_guard(), closing(ordered_map(square_first_batch_last, range(1000), 2)) as results:
        assert [next(results) for _ in range(3)] == [0, 1, 4]
        assert len(multiprocessing.active_children()) == 2
    assert multiprocessing.active_children() == []
