"""The ``kd-lightning`` command: LightningCLI's fit/validate/test/predict plus a few task commands."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable

from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.cli import LightningCLI

from kd_lightning.callbacks.confusion import ConfusionMatrixLogger
from kd_lightning.callbacks.save_config import LoggerSaveConfigCallback
from kd_lightning.data import ImageClassificationDataModule
from kd_lightning.modules import SupervisedModule

# ``--wandb`` stands for this logger; configs/logger/wandb.yaml is the same as a config fragment.
WANDB_FLAG = "--wandb"
WANDB_LOGGER = {
    "class_path": "lightning.pytorch.loggers.WandbLogger",
    "init_args": {"project": "kd-lightning", "log_model": True},
}


class KDLightningCLI(LightningCLI):
    """LightningCLI with the data set's class count linked into the model, a rich progress bar and
    the confusion-matrix callback on by default."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        trainer = self.config[self.subcommand].trainer if self.subcommand else self.config.trainer
        self.trainer_defaults["callbacks"] = default_callbacks(trainer.enable_progress_bar, trainer.callbacks or [])


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


# Commands beyond Lightning's own, each a function of the remaining arguments.
COMMANDS: dict[str, Callable[[list[str]], None]] = {"quickstart": _quickstart, "report": _report, "export": _export}


def main(argv: list[str] | None = None) -> None:
    # Frozen teachers and backbones are in eval mode on purpose; Lightning's hint about it is noise.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        COMMANDS[argv[0]](argv[1:])
    else:
        lightning_main(argv)


if __name__ == "__main__":
    main()
