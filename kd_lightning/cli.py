"""The ``kd-lightning`` command: LightningCLI's fit/validate/test/predict plus a few task commands."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.cli import LightningCLI

from kd_lightning.checkpointing import SafeCheckpointIO
from kd_lightning.data import ImageClassificationDataModule
from kd_lightning.errors import KDLightningError
from kd_lightning.models.weights import CheckpointError
from kd_lightning.modules import SupervisedModule

# Set to 1 to see the full traceback of a user error (or pass --traceback).
TRACEBACK_ENV = "KD_LIGHTNING_TRACEBACK"


class KDLightningCLI(LightningCLI):
    """LightningCLI with the data set's class count linked into the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

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


def use_safe_checkpoint_io(trainer: L.Trainer) -> None:
    """Swap Lightning's default checkpoint writer/reader for :class:`SafeCheckpointIO`.

    A ``CheckpointIO`` plugin the user configured is kept as it is.
    """
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = SafeCheckpointIO()


def lightning_main(args: list[str] | None = None, run: bool = True) -> KDLightningCLI:
    """``kd-lightning {fit,validate,test,predict} --config FILE``: any kd_lightning module and data set."""
    return KDLightningCLI(
        SupervisedModule,
        ImageClassificationDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def _quickstart(args: list[str]) -> None:
    from kd_lightning.quickstart import main

    main(args)


# Commands beyond Lightning's own, each a function of the remaining arguments.
COMMANDS: dict[str, Callable[[list[str]], None]] = {"quickstart": _quickstart}


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
