"""Values Lightning, torch or NumPy refuse, settings that would keep nothing, and YAML that never
finishes loading: each is one ``error:`` line (exit 2, no traceback) that leaves an earlier run as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kd_lightning.cli import main
from kd_lightning.config_yaml import MAX_NODES, expanded_size
from tests._bad_input_helpers import snapshot, user_error_line

QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False}


def _config(run: Path) -> dict:
    checkpoint = {"dirpath": str(run), "filename": "best", "monitor": "val/acc", "mode": "max"}
    checkpoint["enable_version_counter"] = False
    trainer = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "limit_test_batches": 1}
    trainer |= {**QUIET, "default_root_dir": str(run)}
    trainer["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": checkpoint}]
    model = {
        "class_path": "kd_lightning.modules.FrozenBackboneFinetuner",
        "init_args": {"network": {"name": "small_cnn", "kwargs": {"width": 4}}, "strategy": "full"},
    }
    data = {"class_path": "kd_lightning.data.DigitsDataModule", "init_args": {"batch_size": 64}}
    return {"trainer": trainer, "model": model, "data": data}


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """A finished run whose folder every case below writes (or would write) into."""
    root = tmp_path_factory.mktemp("earlier")
    (root / "config.yaml").write_text(yaml.safe_dump(_config(root / "run")))
    main(["fit", "--config", str(root / "config.yaml")])
    assert (root / "run" / "best.ckpt").is_file()
    return root


def billion_laughs(levels: int = 7) -> str:
    """About 300 bytes of YAML whose aliases stand for 10**levels strings."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


REFUSED = {
    "negative_max_epochs": (["--trainer.max_epochs=-5"], "Lightning refused the configuration: `max_epochs` must be"),
    "absent_accelerator": (["--trainer.accelerator=mps"], "Lightning refused the configuration: `MPSAccelerator`"),
    "val_check_interval": (
        ["--trainer.val_check_interval=1.5"],
        "Lightning refused the configuration: You have passed invalid value 1.5 for val_check_interval",
    ),
    "negative_sgd_lr": (
        ["--model.init_args.optimizer=torch.optim.SGD", "--model.init_args.optimizer.init_args.lr=-0.1"],
        "torch refused a value of the config: Invalid learning rate: -0.1; change it in the config",
    ),
    "adam_betas": (
        ["--model.init_args.optimizer=torch.optim.Adam", "--model.init_args.optimizer.init_args.betas=[1.5, 0.9]"],
        "torch refused a value of the config: Invalid beta parameter at index 0: 1.5",
    ),
    "seed_too_large": (
        ["--seed_everything=4294967296"],
        "seed_everything must be in 0..4294967295 (a 32-bit seed), got 4294967296",
    ),
    "seed_negative": (["--seed_everything=-1"], "seed_everything must be in 0..4294967295 (a 32-bit seed), got -1"),
    "label_smoothing": (
        ["--model.init_args.label_smoothing=1.5"],
        "torch refused a value of the config: label_smoothing must be between 0.0 and 1.0. Got: 1.5",
    ),
    "image_size_beyond_memory": (
        ["--data.init_args.image_size=1000000"],
        "not enough memory for what the config asks (238,418.6 GiB requested); lower data.image_size",
    ),
    "no_validation_data": (
        ["--data.init_args.val_fraction=0"],
        "ModelCheckpoint monitors 'val/acc', but this fit has no validation data (the validation set is empty",
    ),
    "no_validation_batches": (
        ["--trainer.limit_val_batches=0"],
        "ModelCheckpoint monitors 'val/acc', but this fit has no validation data (limit_val_batches is 0)",
    ),
    "early_stopping_without_validation": (
        [
            "--data.init_args.val_fraction=0",
            "--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping",
            "--trainer.callbacks.monitor=val/loss",
        ],
        "monitors 'val/",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_a_refused_value_is_one_line_and_keeps_the_earlier_run(earlier, capsys, case):
    overrides, expected = REFUSED[case]
    before = snapshot(earlier)
    line = user_error_line(capsys, ["fit", "--config", str(earlier / "config.yaml"), *overrides])
    assert expected in line, line
    assert snapshot(earlier) == before


@pytest.mark.parametrize(
    ("subcommand", "overrides", "expected"),
    [
        ("validate", ["--data.init_args.val_fraction=0"], "validate ran on zero samples: the validation set is empty"),
        ("validate", ["--trainer.limit_val_batches=0"], "give it data (data.val_fraction > 0 or a validation split)"),
        (
            "test",
            ["--trainer.limit_test_batches=0"],
            "test ran on zero samples: the test set is empty or trainer.limit",
        ),
    ],
)
def test_evaluating_zero_samples_is_an_error(earlier, capsys, subcommand, overrides, expected):
    before = snapshot(earlier)
    args = [subcommand, "--config", str(earlier / "config.yaml"), *overrides]
    line = user_error_line(capsys, [*args, "--ckpt_path", str(earlier / "run" / "best.ckpt")])
    assert expected in line
    assert snapshot(earlier) == before


def test_a_billion_laughs_config_is_refused_fast(earlier, tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(billion_laughs() + yaml.safe_dump(_config(earlier / "run")))
    assert bomb.stat().st_size < 1500
    before = snapshot(earlier)
    line = user_error_line(capsys, ["fit", "--config", str(bomb)])
    assert f"a YAML document expands to more than {MAX_NODES:,} values through its aliases" in line
    assert snapshot(earlier) == before


def test_a_billion_laughs_value_on_the_command_line_is_refused(earlier, capsys):
    line = user_error_line(
        capsys, ["fit", "--config", str(earlier / "config.yaml"), "--trainer.plugins", billion_laughs()]
    )
    assert "expands to more than" in line


def test_aliases_within_the_bound_load_as_written():
    text = "base: &b {lr: 0.1, momentum: 0.9}\nfirst: *b\nsecond: *b\n"
    # The root, its three keys, and three copies of a mapping of two pairs.
    assert expanded_size(yaml.compose(text)) == 1 + 3 + 3 * (1 + 4)
    assert yaml.safe_load(text)["second"] == {"lr": 0.1, "momentum": 0.9}
    # The root, three keys, then lists of 10 strings, 10 of those, 10 of those.
    assert expanded_size(yaml.compose(billion_laughs(3))) == 1 + 3 + 11 + 111 + 1111
