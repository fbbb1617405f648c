"""Map a function over inputs in forked worker processes, in input order, and never hang on a dead worker.

``multiprocessing.Pool`` waits forever for the result of a worker that was killed (out of
memory, a segfault in an image decoder), and LitData's ``optimize`` waits forever for a worker
that failed after its last progress report (a full disk while writing the final chunk). Here
each worker answers on its own pipe, which reads as closed the moment the worker dies: an
exception raised by the function is re-raised in the parent as it was (with the worker's
traceback as its cause), and a worker that dies is one :class:`WorkerDiedError` naming how.
Workers are forked with the inputs and receive only positions in them (tensors sent through a
pipe would move to shared memory, which containers keep small). Results come in input order,
with a bounded number of batches in flight, so the caller can write them as they come.
"""

from __future__ import annotations

import multiprocessing
import signal
import traceback
from collections.abc import Callable, Generator, Iterator, Sequence
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from kd_lightning.errors import KDLightningError

Item = TypeVar("Item")
Result = TypeVar("Result")
# Inputs per batch: large enough that messages are few, small enough that a batch of encoded
# images stays a few MB in the parent.
BATCH_SIZE = 32
# Batches decoded ahead of the one the caller waits for, per worker.
AHEAD = 4


class WorkerDiedError(KDLightningError, RuntimeError):
    """A worker process ended without answering: killed, out of memory, or crashed."""


class WorkerTraceback(Exception):
    """Where in a worker an exception was raised: the cause of the one re-raised in the parent."""


def ordered_map(
    fn: Callable[[Item], Result],
    inputs: Sequence[Item],
    num_workers: int,
    describe: Callable[[Item], str] = str,
) -> Generator[Result, None, None]:
    """``map(fn, inputs)`` computed by ``num_workers`` forked processes (in this process when ``<= 1``).

    Close the generator (``contextlib.closing``) when not consuming it to the end: that stops
    the workers at once instead of when it is garbage-collected.

    Args:
        fn: a module-level function; forked workers reach it without pickling.
        inputs: what to map, in order.
        num_workers: processes to run ``fn`` in.
        describe: how a :class:`WorkerDiedError` names an input (the first and last of the batch
            the dead worker was given).
    """
    if num_workers <= 1:
        yield from map(fn, inputs)
        return
    context = multiprocessing.get_context("fork")
    workers: dict[Connection, BaseProcess] = {}
    try:
        for _ in range(num_workers):
            ours, theirs = context.Pipe()
            process = context.Process(target=_serve, args=(fn, inputs, theirs), daemon=True)
            process.start()
            # Closed here before the next fork, so a dead worker's pipe reads as closed at once.
            theirs.close()
            workers[ours] = process
        yield from _collect(workers, inputs, num_workers * AHEAD, describe)
    finally:
        for worker in workers.values():
            worker.terminate()
        for conn, worker in workers.items():
            worker.join()
            conn.close()


def _collect(
    workers: dict[Connection, BaseProcess],
    inputs: Sequence[Any],
    ahead: int,
    describe: Callable[[Any], str],
) -> Iterator[Any]:
    """Hand batches of positions to idle workers and yield their results in input order."""
    batches = (range(start, min(start + BATCH_SIZE, len(inputs))) for start in range(0, len(inputs), BATCH_SIZE))
    assigned: dict[Connection, tuple[int, range]] = {}
    finished: dict[int, list[Any]] = {}
    handed_out = next_number = 0
    idle = list(workers)
    exhausted = False
    while True:
        while idle and not exhausted:
            batch = next(batches, None)
            if batch is None:
                exhausted = True
                break
            conn = idle.pop()
            assigned[conn] = (handed_out, batch)
            handed_out += 1
            try:
                conn.send((batch.start, batch.stop))
            except OSError:  # the worker died while idle
                raise _died(workers[conn], [inputs[i] for i in batch], describe) from None
        if not assigned:
            return
        # A pipe whose worker died becomes readable too: recv then raises EOFError.
        ready = wait(list(assigned))
        for conn in [conn for conn in assigned if conn in ready]:
            number, batch = assigned.pop(conn)
            try:
                ok, payload = conn.recv()
            except (EOFError, OSError):
                raise _died(workers[conn], [inputs[i] for i in batch], describe) from None
            if not ok:
                error, where = payload
                raise error from WorkerTraceback(where)
            finished[number] = payload
            idle.append(conn)
        while next_number in finished:
            yield from finished.pop(next_number)
            next_number += 1
        # Keep at most ``ahead`` finished batches waiting behind a slow one.
        if len(finished) >= ahead:
            idle = []
        elif not idle:
            idle = [conn for conn in workers if conn not in assigned]


def _serve(fn: Callable[[Any], Any], inputs: Sequence[Any], conn: Connection) -> None:
    """A worker: answer each batch ``(start, stop)`` with ``(True, results)`` or ``(False, the exception)``."""
    # Ctrl+C reaches the whole process group; the parent stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            start, stop = conn.recv()
        except EOFError:
            return
        try:
            answer: tuple[bool, Any] = (True, [fn(inputs[i]) for i in range(start, stop)])
        except Exception as err:
            answer = (False, (err, traceback.format_exc()))
        try:
            conn.send(answer)
        except Exception as err:  # a result or an exception that does not pickle: send its text
            conn.send((False, (RuntimeError(f"{type(err).__name__}: {err}"), traceback.format_exc())))


def _died(process: BaseProcess, held: list[Any], describe: Callable[[Any], str]) -> WorkerDiedError:
    process.join(timeout=5)
    code = process.exitcode
    inputs = f"{describe(held[0])} … {describe(held[-1])}" if len(held) > 1 else describe(held[0])
    if code == -signal.SIGKILL:
        how, fix = "was killed (SIGKILL: out of memory?)", "lower num_workers or free memory"
    elif code is not None and code < 0:
        how, fix = f"crashed ({signal.Signals(-code).name})", "check or remove those inputs"
    else:
        how = "stopped answering" if code is None else f"exited without answering (status {code})"
        fix = "check or remove those inputs"
    return WorkerDiedError(f"a worker process (pid {process.pid}) {how} while handling {inputs}; {fix}")
