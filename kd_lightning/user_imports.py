"""The user's own modules, imported before a config is read (``imports:`` / ``--imports``).

A loss or backbone defined outside kd_lightning registers itself when its module is imported
(``@register_loss``, ``@register_backbone``); importing it before parsing lets a YAML config name
it like a built-in, and lets ``class_path`` point at the module's classes. An entry is a dotted
module name (found on ``sys.path``, to which the working directory is added, as ``python -m``
does) or the path of a ``.py`` file (relative to the working directory).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import yaml

from kd_lightning.errors import ConfigError

IMPORTS_FLAG = "--imports"
IMPORTS_KEY = "imports"
CONFIG_FLAGS = ("--config", "-c")


def requested_imports(argv: list[str]) -> list[str]:
    """Modules named by ``--imports`` (``--imports a b``, ``--imports=[a, b]``) and by the ``imports:``
    key of every ``--config`` file in ``argv``, in order."""
    names: list[str] = []
    for i, arg in enumerate(argv):
        if arg in CONFIG_FLAGS and i + 1 < len(argv):
            names += _imports_of_config(argv[i + 1])
        elif arg.startswith("--config="):
            names += _imports_of_config(arg.split("=", 1)[1])
        elif arg == IMPORTS_FLAG:
            following = []
            for value in argv[i + 1 :]:
                if value.startswith("--"):
                    break
                following.append(value)
            names += _as_list(following[0]) if len(following) == 1 else following
        elif arg.startswith(f"{IMPORTS_FLAG}="):
            names += _as_list(arg.split("=", 1)[1])
    return list(dict.fromkeys(names))


def _as_list(value: str) -> list[str]:
    """One ``--imports`` value: a name, or a YAML/JSON list of names."""
    parsed = yaml.safe_load(value) if value.lstrip().startswith("[") else value
    return [str(v) for v in parsed] if isinstance(parsed, list) else [str(parsed)]


def _imports_of_config(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        return []  # not a file (an inline config, or missing): the config parser reports it
    try:
        config = yaml.safe_load(file.read_text())
    except yaml.YAMLError:
        return []  # the config parser reports it, with the position of the mistake
    names = config.get(IMPORTS_KEY) if isinstance(config, dict) else None
    if names is None:
        return []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{path}: '{IMPORTS_KEY}' must be a list of module names or .py files, got {names!r}")
    return names


def import_user_modules(names: Iterable[str]) -> list[ModuleType]:
    """Import each module once (a module already imported is not run again, so its decorators do
    not register twice).

    Raises:
        ConfigError: a module or file that does not exist. Errors raised by the module's own code
            keep their traceback: they are bugs in that code, not in the config.
    """
    return [_import_file(name) if name.endswith(".py") else _import_module(name) for name in names]


def _import_module(name: str) -> ModuleType:
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name is None or not name.startswith(err.name):
            raise  # the module exists but imports something missing: its own problem, with traceback
        raise ConfigError(
            f"cannot import {name!r} (from {IMPORTS_FLAG} / {IMPORTS_KEY}:): no module named {err.name!r} on the "
            f"Python path (working directory {cwd}); give a module name or the path of a .py file"
        ) from err


def _import_file(name: str) -> ModuleType:
    path = Path(name).resolve()
    if not path.is_file():
        raise ConfigError(f"cannot import {name!r} (from {IMPORTS_FLAG} / {IMPORTS_KEY}:): no such file {path}")
    module_name = path.stem
    loaded = sys.modules.get(module_name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == path:
            return loaded
        raise ConfigError(
            f"cannot import {name!r}: a module named {module_name!r} is already loaded from "
            f"{getattr(loaded, '__file__', 'elsewhere')}; rename the file"
        )
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {name!r}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # so that class_path: <stem>.<Class> finds it
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
