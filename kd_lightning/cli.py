"""The ``kd-lightning`` command: LightningCLI's fit/validate/test/predict plus a few task commands."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

from lightning.pytorch.cli import LightningCLI

from kd_lightning.data import ImageClassificationDataModule
from kd_lightning.modules import SupervisedModule


class KDLightningCLI(LightningCLI):
    """LightningCLI with the data set's class count linked into the model."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")


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
