"""The ``kd-lightning`` command: LightningCLI's fit/validate/test/predict plus typed task commands.

Every command shares one error path: a :class:`~kd_lightning.errors.KDLightningError` (or a
rejected argument) prints one ``error: ...`` line and exits with status 2; ``--traceback`` or
``KD_LIGHTNING_TRACEBACK=1`` shows the full traceback instead.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings
from argparse import ArgumentError
from contextlib import nullcontext
from pathlib import Path

import lightning as L
from jsonargparse import Namespace
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from kd_lightning.callbacks.confusion import ConfusionMatrixLogger
from kd_lightning.callbacks.interrupt import GracefulInterrupt, RunInterrupted
from kd_lightning.callbacks.run_checks import MonitoredMetricCheck
from kd_lightning.callbacks.save_config import LoggerSaveConfigCallback
from kd_lightning.checkpointing import (
    check_checkpoint_class,
    check_checkpoint_config,
    check_finite_metrics,
    read_checkpoint,
    resolve_ckpt_keyword,
    use_safe_checkpoint_io,
)
from kd_lightning.config_yaml import use_bounded_yaml
from kd_lightning.data import ImageClassificationDataModule
from kd_lightning.errors import ConfigError, KDLightningError, exception_chain, refused_value
from kd_lightning.modules import SupervisedModule
from kd_lightning.run_lock import RunFolderLock, checkpoint_folders
from kd_lightning.typed_commands import run_typed_command, space_separated_lists, strip_option
from kd_lightning.user_imports import IMPORTS_FLAG, import_user_modules, requested_imports

# Commands beyond Lightning's own: name -> "module:function". Each is a typed function whose
# signature and docstring jsonargparse turns into the command's parser (litgpt's pattern);
# registering a command is one line here. Modules are imported only when their command runs.
TASK_COMMANDS: dict[str, str] = {
    "quickstart": "kd_lightning.quickstart:quickstart",
    "report": "kd_lightning.report.build:report",
    "export": "kd_lightning.export:export",
    "prepare": "kd_lightning.data.prepare:prepare_dataset",
}

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")

# ``--wandb`` stands for this logger; configs/logger/wandb.yaml is the same as a config fragment.
WANDB_FLAG = "--wandb"
WANDB_LOGGER = {
    "class_path": "lightning.pytorch.loggers.WandbLogger",
    "init_args": {"project": "kd-lightning", "log_model": True},
}

# Set to 1 to see the full traceback of a user error (or pass --traceback).
TRACEBACK_ENV = "KD_LIGHTNING_TRACEBACK"
CHECKPOINT_CONFIG_FLAG = "use_checkpoint_config"
# NumPy's global generator, which seed_everything seeds too, takes 32-bit seeds only.
SEED_MAX = 2**32 - 1


class KDLightningCLI(LightningCLI):
    """LightningCLI with the data set's class count linked into the model, a rich progress bar and
    the confusion-matrix callback on by default, and ``--ckpt_path`` checked against the config."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.add_argument(
            IMPORTS_FLAG,
            type=list[str],
            default=[],
            help="Python modules (dotted names, or .py files) imported before the config is read, so "
            "that their @register_loss / @register_backbone decorators run and their classes can be "
            "named in class_path. Also a top-level config key.",
        )
        parser.add_argument(
            f"--{CHECKPOINT_CONFIG_FLAG}",
            type=bool,
            default=False,
            help="Take the model settings from --ckpt_path instead of refusing a config that differs from them.",
        )

    def parse_arguments(self, parser, args) -> None:
        # main() always passes the arguments explicitly (sys.argv's included), so LightningCLI's
        # warning about ``args`` next to a non-empty sys.argv would fire on every command-line run.
        self.config = parser.parse_object(args) if isinstance(args, dict | Namespace) else parser.parse_args(args)

    def before_instantiate_classes(self) -> None:
        trainer = self.config[self.subcommand].trainer if self.subcommand else self.config.trainer
        self.trainer_defaults["callbacks"] = default_callbacks(trainer.enable_progress_bar, trainer.callbacks or [])

    def _parse_ckpt_path(self) -> None:
        # LightningCLI replaces the model config by the checkpoint's hyper-parameters here, so an
        # override next to --ckpt_path would be dropped without a word. Only on explicit request;
        # otherwise the two are compared once the module is built (_run_subcommand).
        subcommand = self.config.get("subcommand")
        if not subcommand or not self.config[subcommand].get(CHECKPOINT_CONFIG_FLAG):
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if ckpt_path is None or not Path(ckpt_path).is_file():
            raise ConfigError(
                f"--{CHECKPOINT_CONFIG_FLAG} needs --ckpt_path to name a checkpoint file, got {ckpt_path!r}"
            )
        checkpoint = read_checkpoint(ckpt_path)
        check_checkpoint_class(checkpoint, self.config[subcommand].model.class_path, ckpt_path)
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        # The link overwrites model.num_classes with the data's count on instantiation, so a value
        # given for it would be dropped without a word; it may only repeat the data's count.
        config = self.config[self.subcommand] if self.subcommand else self.config
        given = config.model.init_args.get("num_classes")
        classes = getattr(self.datamodule, "num_classes", None)
        if given is not None and classes is not None and given != classes:
            raise ConfigError(
                f"model.num_classes is {given} but {type(self.datamodule).__name__} has {classes} classes: "
                "the model takes the data's class count (data.num_classes), so leave model.num_classes out"
            )

    def _set_seed(self) -> None:
        seed = self._get(self.config, "seed_everything")
        if not isinstance(seed, bool) and isinstance(seed, int) and not 0 <= seed <= SEED_MAX:
            raise ConfigError(f"seed_everything must be in 0..{SEED_MAX} (a 32-bit seed), got {seed}")
        super()._set_seed()

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        use_safe_checkpoint_io(trainer)
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        """Check the checkpoint before anything is written, lock the fit's output folders, and
        refuse non-finite evaluation metrics."""
        config = self.config_init[subcommand]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is not None:
            ckpt_path = resolve_ckpt_keyword(self.trainer, subcommand, ckpt_path)
            config["ckpt_path"] = ckpt_path
        if ckpt_path is not None and _is_local_file_protocol(ckpt_path):  # remote ones: ExactResume, on load
            check_checkpoint_config(
                read_checkpoint(ckpt_path), self.model, self.datamodule, ckpt_path, subcommand, CHECKPOINT_CONFIG_FLAG
            )
        lock = RunFolderLock(checkpoint_folders(self.trainer)) if subcommand == "fit" else nullcontext()
        try:
            with lock:
                super()._run_subcommand(subcommand)
        except (SIGTERMException, SystemExit) as err:
            raise interrupted(self.trainer, subcommand, err) from None
        if subcommand in ("validate", "test"):
            check_evaluated_something(self.trainer, subcommand)
            check_finite_metrics(self.trainer.callback_metrics, subcommand)


def check_evaluated_something(trainer: L.Trainer, subcommand: str) -> None:
    """Refuse a ``validate``/``test`` that ran on zero samples: it would exit 0 with no metric at all."""
    validating = subcommand == "validate"
    if not sum(trainer.num_val_batches if validating else trainer.num_test_batches):
        split, limit = ("validation", "limit_val_batches") if validating else ("test", "limit_test_batches")
        give = "data.val_fraction > 0 or a validation split" if validating else "a test split"
        raise ConfigError(
            f"{subcommand} ran on zero samples: the {split} set is empty or trainer.{limit} is 0; "
            f"give it data ({give}) and a non-zero {limit}"
        )


def interrupted(trainer: L.Trainer, subcommand: str, err: BaseException) -> BaseException:
    """What a trainer that ended by a signal raises to the CLI: :class:`RunInterrupted`, else ``err``.

    Lightning ends a run stopped by SIGTERM with ``SIGTERMException`` (a ``SystemExit`` of status
    0) and one interrupted by a forced Ctrl+C with ``sys.exit(1)``.
    """
    handler = next((cb for cb in trainer.callbacks if isinstance(cb, GracefulInterrupt)), None)  # type: ignore[attr-defined]
    signum = handler.signum if handler is not None else None
    if signum is None and isinstance(err, SIGTERMException):
        signum = signal.SIGTERM
    if signum is None:
        return err
    return RunInterrupted(signum, subcommand, handler.last_checkpoint if handler is not None else None)


def default_callbacks(enable_progress_bar: bool | None, configured: list) -> list[Callback]:
    """What every CLI run gets unless the config already has its own (or turns the bar off)."""
    class_paths = " ".join(str(getattr(c, "class_path", type(c).__name__)) for c in configured)
    callbacks: list[Callback] = [GracefulInterrupt(), MonitoredMetricCheck()]
    if enable_progress_bar is not False and "ProgressBar" not in class_paths:
        callbacks.append(RichProgressBar())
    if "ConfusionMatrixLogger" not in class_paths:
        callbacks.append(ConfusionMatrixLogger())
    return callbacks


def expand_wandb_flag(args: list[str]) -> list[str]:
    """Replace ``--wandb`` by the W&B logger argument, in place, so later arguments can refine it
    (e.g. ``--wandb --trainer.logger.init_args.project=mine``)."""
    return [f"--trainer.logger={json.dumps(WANDB_LOGGER)}" if arg == WANDB_FLAG else arg for arg in args]


def lightning_main(args: list[str] | None = None, run: bool = True) -> KDLightningCLI:
    """``kd-lightning {fit,validate,test,predict} --config FILE [--wandb] [--imports MODULE ...]``: any
    kd_lightning module and data set; ``--wandb`` logs to Weights & Biases (``WANDB_MODE=offline``
    works without an account); ``--imports`` loads the user's own losses and backbones first."""
    args = expand_wandb_flag(sys.argv[1:] if args is None else list(args))
    import_user_modules(requested_imports(args))
    return KDLightningCLI(
        SupervisedModule,
        ImageClassificationDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_callback=LoggerSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        # A rejected argument raises instead of printing the whole usage: main() prints one line.
        parser_kwargs={
            "exit_on_error": False,
            "description": "Lightning's commands below, and the task commands "
            + ", ".join(TASK_COMMANDS)
            + " (kd-lightning COMMAND --help).",
        },
        args=space_separated_lists(args, {IMPORTS_FLAG}),
        run=run,
    )


def find_user_error(err: BaseException) -> KDLightningError | None:
    """The :class:`KDLightningError` behind ``err``, if any.

    jsonargparse re-raises errors of class instantiation as its own ``ValueError`` chained to
    the original, so the chain is searched rather than the outermost type alone.
    """
    return next((e for e in exception_chain(err) if isinstance(e, KDLightningError)), None)


def main(argv: list[str] | None = None) -> None:
    """Run a command; a user error prints ``error: ...`` and exits 2 instead of a traceback."""
    # Frozen teachers and backbones are in eval mode on purpose; Lightning's hint about it is noise.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
    argv = sys.argv[1:] if argv is None else list(argv)
    show_traceback = "--traceback" in argv or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--traceback"]
    use_bounded_yaml()
    try:
        if argv and not argv[0].startswith("-") and argv[0] not in (*LIGHTNING_COMMANDS, *TASK_COMMANDS):
            known = ", ".join((*LIGHTNING_COMMANDS, *TASK_COMMANDS))
            raise ConfigError(f"unknown command {argv[0]!r}: choose from {known}")
        if argv and argv[0] in TASK_COMMANDS:
            import_user_modules(requested_imports(argv))
            run_typed_command(argv[0], TASK_COMMANDS[argv[0]], strip_option(argv[1:], IMPORTS_FLAG))
        else:
            lightning_main(argv)
    except RunInterrupted as err:
        print(f"interrupted: {err.message}", file=sys.stderr)
        raise SystemExit(err.exit_status) from None
    except KeyboardInterrupt:  # Ctrl+C outside a trainer's run (building it, preparing data)
        print(f"interrupted: {argv[0] if argv else 'the command'} stopped by SIGINT", file=sys.stderr)
        raise SystemExit(128 + signal.SIGINT) from None
    except ArgumentError as err:  # an argument a command's parser rejected
        _exit_with_error(ConfigError(" ".join(str(err).split())), err, show_traceback)
    except Exception as err:
        user_error = find_user_error(err) or refused_value(err)
        if user_error is None:
            raise
        _exit_with_error(user_error, err, show_traceback)


def one_line(message: str) -> str:
    """A user error's message on one line, also when a DataLoader worker raised it: PyTorch then
    re-raises it in this process with the worker's whole traceback as its message."""
    if "Original Traceback" in message:
        last = message.rstrip().splitlines()[-1]
        message = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(message.split())


def _exit_with_error(user_error: BaseException, raised: BaseException, show_traceback: bool) -> None:
    if show_traceback:
        raise raised
    print(f"error: {one_line(str(user_error))}", file=sys.stderr)
    print(f"(run with --traceback or {TRACEBACK_ENV}=1 for the full traceback)", file=sys.stderr)
    raise SystemExit(2) from None


if __name__ == "__main__":
    main()
