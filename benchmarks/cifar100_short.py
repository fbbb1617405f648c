"""Run a CIFAR-100 recipe on a short schedule (or its full one) and print its test-accuracy curve.

    python -m benchmarks.cifar100_short resnet56_resnet20/kd --epochs 10        # first check on a GPU
    python -m benchmarks.cifar100_short resnet32x4_resnet8x4/crd --epochs 240   # the full reproduction
    python -m benchmarks.cifar100_short resnet56_resnet20/crd --smoke           # CPU, random tensors

The recipe (a path under ``configs/cifar100/``, with or without ``.yaml``) is run through the
``kd-lightning fit`` CLI unchanged but for its schedule and output folder: ``max_epochs`` becomes
``--epochs`` and the learning-rate milestones (150/180/210 of 240) are scaled to it; outputs go
to ``runs/cifar100_e<epochs>/`` (``runs/cifar100/``, the recipes' own folder, at 240 epochs, so the
full run is exactly the two documented commands). A student recipe needs its teacher's
``last.ckpt`` (each teacher's, for several): when one is missing, the teacher recipe that writes it
runs first on the same schedule.

Every recipe validates on the test split, so the curve is test accuracy per epoch (0-based);
the last line gives the last and the best epoch side by side, the last being the honest number.
The curve is also written to ``curve.json`` in the run's folder, with the command. ``--smoke``
swaps the data for random CIFAR-shaped tensors on the CPU (2 epochs), to test this path.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
from pathlib import Path

import torch
import yaml

from benchmarks._common import quiet
from kd_lightning.callbacks import LastAndBestAccuracy
from kd_lightning.cli import KDLightningCLI, lightning_main
from kd_lightning.data import CIFAR100DataModule, TensorImageDataset

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "cifar100"
RECIPE_EPOCHS = 240
RECIPE_ROOT = "runs/cifar100"


class RandomCIFAR100(CIFAR100DataModule):
    """Random 32×32 RGB ``uint8`` images with random labels of 100 classes: the ``--smoke`` data."""

    sizes = {"train": 128, "test": 64}

    def prepare_data(self) -> None:
        """Nothing to download."""

    def load_split(self, split: str) -> TensorImageDataset:
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        n = self.sizes[split]
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        return TensorImageDataset(images, torch.randint(0, 100, (n,), generator=g))


def recipe_path(name: str) -> Path:
    path = RECIPES / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file():
        known = sorted(str(p.relative_to(RECIPES).with_suffix("")) for p in RECIPES.rglob("*.yaml"))
        raise SystemExit(f"error: no recipe {name!r}; the recipes are: {', '.join(known)}")
    return path


def scaled_milestones(milestones: list[int], epochs: int) -> list[int]:
    """The recipe's milestones at the same fractions of a schedule of ``epochs`` epochs."""
    return [max(1, round(m * epochs / RECIPE_EPOCHS)) for m in milestones]


def init_stage(model: dict) -> tuple[dict, int] | None:
    """The loss term's kwargs that hold an initialisation stage (AB, FSP, FT) and its epochs, if any."""
    for term in model.get("losses") or []:
        kwargs = term.get("kwargs", {})
        if "init_epochs" in kwargs:
            return kwargs, int(kwargs["init_epochs"])
    return None


def teacher_specs(model: dict) -> list[dict]:
    """The recipe's teacher specs: none, one, or the list of several teachers."""
    teacher = model.get("teacher")
    return [] if teacher is None else teacher if isinstance(teacher, list) else [teacher]


def teacher_recipe(weights_path: str) -> str:
    """The teacher recipe that writes ``weights_path``: each writes ``runs/cifar100/<its name>/last.ckpt``."""
    return f"teachers/{Path(weights_path).parent.name}"


def scheduled(config: dict, epochs: int, root: str, smoke: bool) -> dict:
    """The recipe with ``epochs`` epochs, scaled milestones and its outputs under ``root``.

    A recipe with an initialisation stage runs that stage before its 240 epochs: the stage is scaled
    by the same ratio, and the milestones stay counted from its end.
    """
    config = copy.deepcopy(config)
    move = lambda path: root + path.removeprefix(RECIPE_ROOT)  # noqa: E731
    trainer = config["trainer"]
    model = config["model"]["init_args"]
    stage = init_stage(model)
    recipe_init = init = 0
    if stage is not None:
        kwargs, recipe_init = stage
        init = max(1, round(recipe_init * epochs / RECIPE_EPOCHS))
        kwargs["init_epochs"] = init
    trainer["max_epochs"] = init + epochs
    trainer["default_root_dir"] = move(trainer["default_root_dir"])
    for callback in trainer["callbacks"]:
        if "dirpath" in callback["init_args"]:
            callback["init_args"]["dirpath"] = move(callback["init_args"]["dirpath"])
    scheduler = model["lr_scheduler"]["init_args"]
    main_milestones = [m - recipe_init for m in scheduler["milestones"]]
    scheduler["milestones"] = [init + m for m in scaled_milestones(main_milestones, epochs)]
    for spec in teacher_specs(model):
        spec["weights_path"] = move(spec["weights_path"])
    if smoke:
        trainer.update(accelerator="cpu", enable_progress_bar=False)
        config["data"]["class_path"] = f"{__name__}.RandomCIFAR100"
        config["data"]["init_args"].pop("download", None)
    return config


def run_recipe(name: str, epochs: int, root: str, smoke: bool = False) -> KDLightningCLI:
    """Fit one recipe on the given schedule through the CLI; returns the CLI (trainer, model, data)."""
    config = scheduled(yaml.safe_load(recipe_path(name).read_text()), epochs, root, smoke)
    written = Path(root) / "recipes" / recipe_path(name).relative_to(RECIPES)
    written.parent.mkdir(parents=True, exist_ok=True)
    written.write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"== {name}: {epochs} epochs, milestones {config['model']['init_args']['lr_scheduler']['init_args']}")
    cli = lightning_main(["fit", "--config", str(written)])
    report = next(cb for cb in cli.trainer.callbacks if isinstance(cb, LastAndBestAccuracy))
    print_curve(name, report)
    run_dir = Path(config["trainer"]["default_root_dir"])
    command = " ".join(["python -m benchmarks.cifar100_short", *map(shlex.quote, sys.argv[1:])])
    curve = {"recipe": name, "epochs": epochs, "command": command, "curve": report.history, **report.summary}
    (run_dir / "curve.json").write_text(json.dumps(curve, indent=2))
    return cli


def print_curve(name: str, report: LastAndBestAccuracy) -> None:
    print(f"{name}: test-split accuracy per epoch")
    for epoch, value in sorted(report.history.items()):
        print(f"  epoch {epoch:3d}  {value:.4f}")
    print(f"  {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in report.summary.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="e.g. resnet56_resnet20/kd or teachers/resnet56")
    parser.add_argument("--epochs", type=int, default=10, help=f"schedule length ({RECIPE_EPOCHS}: the full recipe)")
    parser.add_argument("--out", help="output folder (default runs/cifar100_e<epochs>; runs/cifar100 at 240)")
    parser.add_argument("--smoke", action="store_true", help="random CIFAR-shaped tensors on the CPU, 2 epochs")
    args = parser.parse_args(argv)
    quiet()
    epochs = 2 if args.smoke else args.epochs
    root = args.out or (RECIPE_ROOT if epochs == RECIPE_EPOCHS and not args.smoke else f"runs/cifar100_e{epochs}")
    recipe = yaml.safe_load(recipe_path(args.recipe).read_text())
    for teacher in teacher_specs(recipe["model"]["init_args"]):
        weights = Path(root + teacher["weights_path"].removeprefix(RECIPE_ROOT))
        if weights.is_file():
            print(f"== teacher: {weights} exists, not retrained")
        else:
            run_recipe(teacher_recipe(teacher["weights_path"]), epochs, root, args.smoke)
    run_recipe(args.recipe, epochs, root, args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())
