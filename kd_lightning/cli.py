"""The ``kd-lightning`` command: LightningCLI's fit/validate/test/predict plus a few task commands."""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable

import lightning as L
from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.cli import LightningCLI

from kd_lightning.callbacks.confusion import ConfusionMatrixLogger
from kd_lightning.callbacks.save_config import LoggerSaveConfigCallback
from kd_lightning.checkpointing import use_safe_checkpoint_io
from kd_lightning.data import ImageClassificationDataModule
from kd_lightning.errors import KDLightningError
from kd_lightning.models.weights import CheckpointError
from kd_lightning.modules import SupervisedModule

# ``--wandb`` stands for this logger; configs/logger/wandb.yaml is the same as a config fragment.
WANDB_FLAG = "--wandb"
WANDB_LOGGER = {
    "class_path": "lightning.pytorch.loggers.WandbLogger",
    "init_args": {"project": "kd-lightning", "log_model": True},
}

# Set to 1 to see the full traceback of a user error (or pass --traceback).
TRACEBACK_ENV = "KD_LIGHTNING_TRACEBACK"


class KDLightningCLI(LightningCLI):
    """LightningCLI with the data set's class count linked into the model, a rich progress bar and
    the confusion-matrix callback on by default."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        trainer = self.config[self.subcommand].trainer if self.subcommand else self.config.trainer
        self.trainer_defaults["callbacks"] = default_callbacks(trainer.enable_progress_bar, trainer.callbacks or [])

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path itself (weights_only=True) to take the model's
        # hyper-parameters from it, before the Trainer does: report a damaged file as such.
        try:
            super()._parse_ckpt_path()
        except KDLightningError:
            raise
        except Exception as err:
            path = self.config[self.config.subcommand].get("ckpt_path")
            raise CheckpointError(
                f"cannot read checkpoint {path}: {str(err).strip().splitlines()[0]}. The file is truncated, "
                "corrupt, or holds pickled objects other than tensors and plain values (refused: they could run code)."
            ) from err

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        use_safe_checkpoint_io(trainer)
        return trainer


def default_callbacks(enable_progress_bar: bool | None, configured: list) -> list[Callback]:
    """What every CLI run gets unless the config already has its own (or turns the bar off)."""
    class_paths = " ".join(str(getattr(c, "class_path", type(c).__name__)) for c in configured)
    callbacks: list[Callback] = []
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
    """``kd-lightning {fit,validate,test,predict} --config FILE [--wandb]``: any kd_lightning module and
    data set; ``--wandb`` logs to Weights & Biases (``WANDB_MODE=offline`` works without an account)."""
    args = expand_wandb_flag(sys.argv[1:] if args is None else args)
    return KDLightningCLI(
        SupervisedModule,
        ImageClassificationDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_callback=LoggerSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def _quickstart(args: list[str]) -> None:
    from kd_lightning.quickstart import main

    main(args)


def _report(args: list[str]) -> None:
    from kd_lightning.report import main

    main(args)


def _export(args: list[str]) -> None:
    from kd_lightning.export import main

    main(args)


def _prepare(args: list[str]) -> None:
    from kd_lightning.data.prepare import main

    main(args)


# Commands beyond Lightning's own, each a function of the remaining arguments.
COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "quickstart": _quickstart,
    "report": _report,
    "export": _export,
    "prepare": _prepare,
}


def find_user_error(err: BaseException) -> KDLightningError | None:
    """The :class:`KDLightningError` behind ``err``, if any.

    jsonargparse re-raises errors of class instantiation as its own ``ValueError`` chained to
    the original, so the chain is searched rather than the outermost type alone.
    """
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, KDLightningError):
            return current
        stack += [current.__cause__, current.__context__]
    return None


def main(argv: list[str] | None = None) -> None:
    """Run a command; a user error prints ``error: ...`` and exits 2 instead of a traceback."""
    # Frozen teachers and backbones are in eval mode on purpose; Lightning's hint about it is noise.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
    from_command_line = argv is None
    argv = sys.argv[1:] if from_command_line else list(argv)
    show_traceback = "--traceback" in argv or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--traceback"]
    if from_command_line:
        sys.argv[1:] = argv  # LightningCLI reads sys.argv itself and warns when also given args
    try:
        if argv and argv[0] in COMMANDS:
            COMMANDS[argv[0]](argv[1:])
        else:
            lightning_main(None if from_command_line else argv)
    except Exception as err:
        user_error = find_user_error(err)
        if user_error is None or show_traceback:
            raise
        print(f"error: {user_error}", file=sys.stderr)
        print(f"(run with --traceback or {TRACEBACK_ENV}=1 for the full traceback)", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
