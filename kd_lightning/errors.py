"""User errors: mistakes in a config, a path or a file, reported as one line instead of a traceback.

Every error a user can fix by changing their input derives from :class:`KDLightningError`; the
``kd-lightning`` command prints those as ``error: ...`` and exits with status 2. Anything else
is a bug and keeps its traceback. Each class also derives from the built-in type callers
already catch (``ValueError``, ``FileNotFoundError``), so existing ``except`` clauses still work.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class KDLightningError(Exception):
    """Base of the errors caused by user input; its message names the problem and the fix."""


class ConfigError(KDLightningError, ValueError):
    """A config value out of range, an unknown name, or settings that contradict each other."""


class DataError(KDLightningError, FileNotFoundError):
    """A data set or folder that is missing."""


class InvalidDataError(KDLightningError, ValueError):
    """Data that is there but unusable: a corrupt, empty, truncated or foreign file, an empty class,
    mixed sizes, or a data file that would run code when read (refused unread)."""


class CheckpointError(KDLightningError, ValueError):
    """A weights file or checkpoint that is missing, unreadable, or does not fit the model."""


class NonFiniteError(KDLightningError, FloatingPointError):
    """NaN or infinite values where there must be none: weights in a checkpoint, evaluation metrics."""


class NonFiniteLossError(NonFiniteError):
    """The training loss became NaN or infinite."""


class RunFolderBusyError(KDLightningError, RuntimeError):
    """Another live run is writing into the output folder this run would write into."""


def unknown_name_error(kind: str, name: str, known: list[str]) -> ConfigError:
    """A :class:`ConfigError` that suggests the closest known names, for typos in configs."""
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ConfigError(f"unknown {kind} {name!r}.{hint}")


def check_keyword_arguments(fn: Callable, kwargs: dict, what: str) -> None:
    """Refuse keyword arguments that ``fn`` does not take, naming the ones it does.

    A misspelt key in a config's ``kwargs`` would otherwise surface as a ``TypeError`` deep in
    the model or loss construction (a traceback, not one line). A ``fn`` that takes ``**kwargs``
    accepts every key, so nothing can be checked for it here.
    """
    signature = inspect.signature(fn)
    try:
        signature.bind_partial(**kwargs)
    except TypeError as err:
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        accepted = ", ".join(name for name, p in signature.parameters.items() if p.kind in named)
        raise ConfigError(f"{what}: {err}; it takes {accepted}") from err


@contextmanager
def as_config_error() -> Iterator[None]:
    """Re-raise a ``ValueError`` from a validation helper as a :class:`ConfigError` (same message)."""
    try:
        yield
    except KDLightningError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from err


# Libraries whose refusal of a value (an optimizer's learning rate, a Trainer setting, a loss's
# argument) is the user's input to fix, not a kd_lightning bug: the error is raised in their code.
VALUE_CHECKING_LIBRARIES = ("torch", "lightning", "pytorch_lightning", "numpy", "jsonargparse", "torchmetrics")
ALLOCATION_FAILURES = ("can't allocate memory", "not enough memory", "out of memory", "cannot allocate memory")


def refused_value(err: BaseException) -> ConfigError | None:
    """A library's refusal of a config value, anywhere in ``err``'s chain, as a :class:`ConfigError`.

    Lightning's ``MisconfigurationException``; a ``ValueError`` raised inside torch, Lightning,
    NumPy or jsonargparse (an optimizer's learning rate, a scheduler's step); a torch
    ``RuntimeError`` that names a bound (``label_smoothing must be between 0.0 and 1.0``); and an
    allocation that cannot succeed (an ``image_size`` whose batch would not fit in memory).
    """
    for current in exception_chain(err):
        message = " ".join(str(current).split())
        if type(current).__name__ == "MisconfigurationException":
            return ConfigError(f"Lightning refused the configuration: {message} Change that setting in the config")
        if isinstance(current, MemoryError) or (
            isinstance(current, RuntimeError) and any(text in message.lower() for text in ALLOCATION_FAILURES)
        ):
            return ConfigError(
                f"not enough memory for what the config asks ({_allocation(message)}); lower data.image_size, "
                "batch_size or the model's width"
            )
        library = _raised_in(current)
        if library is None:
            continue
        if isinstance(current, ValueError) or (isinstance(current, RuntimeError) and " must be " in message):
            return ConfigError(f"{library} refused a value of the config: {message}; change it in the config")
    return None


def exception_chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack += [current.__cause__, current.__context__]


def _raised_in(err: BaseException) -> str | None:
    """The value-checking library whose code raised ``err`` (its innermost Python frame), if any."""
    traceback = err.__traceback__
    module = None
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        traceback = traceback.tb_next
    top = (module or "").split(".")[0]
    return top if top in VALUE_CHECKING_LIBRARIES else None


def _allocation(message: str) -> str:
    requested = re.search(r"allocate (\d+) bytes", message)
    return f"{int(requested.group(1)) / 2**30:,.1f} GiB requested" if requested else message
