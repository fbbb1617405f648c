"""Typed functions as subcommands, and the argument plumbing around them."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import yaml

from kd_lightning.cli import TASK_COMMANDS, lightning_main, main
from kd_lightning.typed_commands import list_options, load_command, space_separated_lists, strip_option
from kd_lightning.user_imports import requested_imports

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "digits"


def test_every_registered_command_is_a_typed_function_with_help(capsys):
    for name, target in TASK_COMMANDS.items():
        function = load_command(target)
        assert function.__doc__ and "Args:" in function.__doc__, name
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert f"kd-lightning {name}" in capsys.readouterr().out


def test_list_options_take_space_separated_values():
    from kd_lightning.report.build import report

    assert list_options(report) == {"--students", "--names"}
    argv = ["--students", "a.ckpt", "b.ckpt", "--names", "[x, y]", "--data", "digits"]
    assert space_separated_lists(argv, {"--students", "--names"}) == [
        '--students=["a.ckpt", "b.ckpt"]',
        "--names",
        "[x, y]",
        "--data",
        "digits",
    ]
    assert space_separated_lists(["--seeds", "-1", "2"], {"--seeds"}) == ['--seeds=["-1", "2"]']


def test_strip_option_removes_the_option_and_its_values():
    assert strip_option(["x.ckpt", "--imports", "a", "b.py", "--data", "d"], "--imports") == ["x.ckpt", "--data", "d"]
    assert strip_option(["--imports=[a]", "--atol", "1"], "--imports") == ["--atol", "1"]


def test_requested_imports_from_flags_and_config_files(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"imports": ["from_config"], "model": {}}))
    argv = ["fit", "--config", str(config), "--imports", "one", "two.py", "--imports=[three]", "-c", "missing.yaml"]
    assert requested_imports(argv) == ["from_config", "one", "two.py", "three"]
    assert requested_imports(["fit", "--imports", "[a, b]"]) == ["a", "b"]


def test_no_warning_about_args_next_to_sys_argv(monkeypatch):
    """LightningCLI warns whenever ``args`` is given while sys.argv has arguments; main() always gives
    ``args`` (it is how --traceback and --wandb are handled), so the warning would be on every run."""
    monkeypatch.setattr(sys, "argv", ["kd-lightning", "fit", "--config", str(CONFIGS / "teacher.yaml")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lightning_main(["--config", str(CONFIGS / "teacher.yaml")], run=False)
    assert not [w for w in caught if "not recommended to provide both args" in str(w.message)]
