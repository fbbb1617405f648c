"""The optional extras the tests know about are the ones pyproject.toml declares, and `dev` has them all.

Whether every imported package is declared at all is deptry's job in CI (.ci/run); these tests
keep the skip-or-fail rule of tests/_extras.py honest.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests._extras import EXTRA_MODULES, REQUIRE_EXTRAS_VARIABLE, require_extra

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _optional_dependencies() -> dict[str, list[str]]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]


def _distribution(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", requirement)
    assert match, requirement
    return match.group(0)


# Extras no test needs: `bench` is the peer of benchmarks/peer_speed.py, which runs without it.
NOT_FOR_TESTS = {"dev", "bench"}


def test_the_extras_table_matches_pyproject() -> None:
    extras = {name: reqs for name, reqs in _optional_dependencies().items() if name not in NOT_FOR_TESTS}
    assert set(extras) == set(EXTRA_MODULES)
    for name, requirements in extras.items():
        modules = {_distribution(r).lower().replace("-", "_") for r in requirements}
        assert modules == set(EXTRA_MODULES[name]), name


def test_dev_includes_every_extra() -> None:
    dev = _optional_dependencies()["dev"]
    [own] = [r for r in dev if _distribution(r) == "kd-lightning"]
    included = {extra.strip() for extra in own[own.index("[") + 1 : own.index("]")].split(",")}
    assert included == set(EXTRA_MODULES)


def test_a_missing_extra_skips_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_EXTRAS_VARIABLE, raising=False)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # None in sys.modules makes the import fail
    with pytest.raises(pytest.skip.Exception, match=re.escape("missing onnxruntime): pip install -e '.[export]'")):
        require_extra("export")


def test_a_missing_extra_fails_when_extras_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_EXTRAS_VARIABLE, "1")
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(pytest.fail.Exception, match=f"{REQUIRE_EXTRAS_VARIABLE}=1 requires every extra"):
        require_extra("efficientnet-lite0")
