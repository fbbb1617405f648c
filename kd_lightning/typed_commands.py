"""Typed functions as ``kd-lightning`` subcommands: jsonargparse builds each parser from a signature.

A command is a plain function with type hints and a Google-style docstring (``Args:`` becomes the
help text); positional parameters without a default are positional arguments, keyword-only ones
are options. List parameters take space-separated values (``--students a.ckpt b.ckpt``), as
argparse's ``nargs="+"`` would, besides jsonargparse's ``--students '[a.ckpt, b.ckpt]'``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import typing
from collections.abc import Callable, Iterable
from types import UnionType
from typing import Any

from jsonargparse import ArgumentParser


def load_command(target: str) -> Callable[..., Any]:
    """The function a ``"module:function"`` string names."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run_typed_command(name: str, target: str, argv: list[str]) -> Any:
    """Parse ``argv`` against the signature of the function ``target`` names and call it.

    Raises:
        argparse.ArgumentError: an argument the signature does not accept (the caller prints it
            as one ``error:`` line).
    """
    function = load_command(target)
    doc = inspect.getdoc(function) or ""
    parser = ArgumentParser(prog=f"kd-lightning {name}", description=doc.split("\n\n")[0], exit_on_error=False)
    parser.add_function_arguments(function, as_positional=True)
    config = parser.parse_args(space_separated_lists(argv, list_options(function)))
    arguments = parser.instantiate_classes(config).as_dict()
    positional = [
        arguments.pop(p.name)
        for p in inspect.signature(function).parameters.values()
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.default is inspect.Parameter.empty
    ]
    return function(*positional, **arguments)


def list_options(function: Callable[..., Any]) -> set[str]:
    """``--name`` of every parameter of ``function`` annotated as a list or a ``tuple[X, ...]``."""
    hints = typing.get_type_hints(function)
    return {f"--{name}" for name, hint in hints.items() if name != "return" and _is_list(hint)}


def _is_list(hint: Any) -> bool:
    if typing.get_origin(hint) is list:
        return True
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[-1:] == (Ellipsis,)
    if typing.get_origin(hint) in (typing.Union, UnionType):
        return any(_is_list(arg) for arg in typing.get_args(hint))
    return False


def space_separated_lists(argv: list[str], options: Iterable[str]) -> list[str]:
    """Rewrite ``--opt a b c`` as ``--opt=["a", "b", "c"]`` for the list-valued ``options``.

    A value already in list syntax (``--opt '[a, b]'``) and ``--opt=value`` are left as they are.
    """
    options = set(options)
    result: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in options and i + 1 < len(argv) and not argv[i + 1].lstrip().startswith("["):
            values = []
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
            result.append(f"{arg}={json.dumps(values)}")
            continue
        result.append(arg)
        i += 1
    return result


def strip_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and its values (``--opt v ...`` or ``--opt=v``)."""
    result: list[str] = []
    skipping = False
    for arg in argv:
        if arg == option:
            skipping = True
            continue
        if skipping and not arg.startswith("--"):
            continue
        skipping = False
        if not arg.startswith(f"{option}="):
            result.append(arg)
    return result
