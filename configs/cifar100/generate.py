"""Write the CIFAR-100 recipes (RepDistiller/mdistiller settings) as LightningCLI YAML files.

The YAML files are the product and are committed; this script only keeps the 24 files
consistent. Run from the repository root: ``python configs/cifar100/generate.py``.
"""

from __future__ import annotations

from pathlib import Path

import yaml


class _NoAliases(yaml.SafeDumper):
    """Write repeated lists out in full: YAML anchors would make the recipes harder to read."""

    def ignore_aliases(self, data) -> bool:
        return True


HERE = Path(__file__).resolve().parent
TRAIN_SIZE = 45_000  # 50,000 CIFAR-100 training images less the 10% validation split

# (teacher, student, layers tapped by FitNets (hint), layers of AT, DKD's β from the DKD authors' configs)
PAIRS = [
    ("resnet32x4", "resnet8x4", ["layer2"], ["layer1", "layer2", "layer3"], 8.0),
    ("wrn_40_2", "wrn_16_2", ["block2"], ["block1", "block2", "block3"], 6.0),
    ("resnet56", "resnet20", ["layer2"], ["layer1", "layer2", "layer3"], 2.0),
    ("vgg13", "vgg8", ["block2"], ["block1", "block2", "block3", "block4"], 6.0),
]

OPTIMIZER = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4}}
SCHEDULER = {
    "class_path": "torch.optim.lr_scheduler.MultiStepLR",
    "init_args": {"milestones": [150, 180, 210], "gamma": 0.1},
}


def trainer(run_dir: str) -> dict:
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {
            "dirpath": run_dir,
            "filename": "best",
            "monitor": "val/acc",
            "mode": "max",
            "enable_version_counter": False,
        },
    }
    return {"max_epochs": 240, "default_root_dir": run_dir, "callbacks": [checkpoint]}


def data(return_indices: bool = False) -> dict:
    args: dict = {"data_dir": "data", "download": True, "batch_size": 64}
    if return_indices:
        args["return_indices"] = True
    return {"class_path": "kd_lightning.data.CIFAR100DataModule", "init_args": args}


def teacher_config(name: str) -> dict:
    model = {
        "class_path": "kd_lightning.modules.FrozenBackboneFinetuner",
        "init_args": {
            "backbone": {"name": name},
            "strategy": "full",
            "optimizer": OPTIMIZER,
            "lr_scheduler": SCHEDULER,
        },
    }
    config = {"seed_everything": 0, "trainer": trainer(f"runs/cifar100/{name}"), "model": model, "data": data()}
    # Precise BN before each validation: the checkpoint's BatchNorm statistics match its weights.
    precise_bn = {"class_path": "kd_lightning.callbacks.PreciseBatchNorm", "init_args": {"num_batches": 64}}
    config["trainer"]["callbacks"].append(precise_bn)
    return config


def method_losses(method: str, hint: list[str], at_layers: list[str], beta: float) -> list[dict]:
    ce = {"name": "ce", "weight": 1.0}
    if method == "kd":
        return [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 0.9, "kwargs": {"temperature": 4.0}}]
    if method == "dkd":
        kwargs = {"alpha": 1.0, "beta": beta, "temperature": 4.0, "warmup_epochs": 20}
        return [ce, {"name": "dkd", "weight": 1.0, "kwargs": kwargs}]
    if method == "fitnet":
        return [ce, {"name": "fitnet", "weight": 100.0, "kwargs": {"student_layers": hint, "teacher_layers": hint}}]
    if method == "at":
        kwargs = {"student_layers": at_layers, "teacher_layers": at_layers, "p": 2.0}
        return [ce, {"name": "at", "weight": 1000.0, "kwargs": kwargs}]
    if method == "crd":
        kwargs = {
            "num_samples": TRAIN_SIZE,
            "feat_dim": 128,
            "num_negatives": 16384,
            "temperature": 0.07,
            "momentum": 0.5,
        }
        return [ce, {"name": "crd", "weight": 0.8, "kwargs": kwargs}]
    raise ValueError(method)


def distill_config(teacher: str, student: str, method: str, hint, at_layers, beta) -> dict:
    run_dir = f"runs/cifar100/{teacher}_{student}/{method}"
    model = {
        "class_path": "kd_lightning.modules.DistillationModule",
        "init_args": {
            "student": {"name": student},
            "teacher": {"name": teacher, "weights_path": f"runs/cifar100/{teacher}/best.ckpt"},
            "losses": method_losses(method, hint, at_layers, beta),
            "optimizer": OPTIMIZER,
            "lr_scheduler": SCHEDULER,
        },
    }
    return {"seed_everything": 0, "trainer": trainer(run_dir), "model": model, "data": data(method == "crd")}


HEADERS = {
    "kd": "Hinton KD: 0.1 CE + 0.9 KD, T = 4.",
    "dkd": "Decoupled KD: CE + DKD (alpha 1, beta {beta}, T = 4, 20 warm-up epochs).",
    "fitnet": "FitNets: CE + 100 x hint loss on {hint} (1x1 conv + BN regressor).",
    "at": "Attention Transfer: CE + 1000 x AT (p = 2) on {at_layers}.",
    "crd": "CRD: CE + 0.8 x CRD (128-d embeddings, 16384 negatives, tau 0.07, momentum 0.5).",
}


def write(path: Path, header: str, config: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(config, Dumper=_NoAliases, sort_keys=False, default_flow_style=None, width=110)
    path.write_text(header + text)


def main() -> None:
    schedule = "240 epochs, SGD lr 0.05 momentum 0.9 wd 5e-4, lr x0.1 at epochs 150/180/210, batch 64."
    for teacher, student, hint, at_layers, beta in PAIRS:
        write(
            HERE / "teachers" / f"{teacher}.yaml",
            f"# CIFAR-100 teacher {teacher} from scratch; {schedule}\n"
            f"# Writes runs/cifar100/{teacher}/best.ckpt, which the {teacher}_* distillation recipes read.\n"
            f"#   python -m kd_lightning.cli fit --config configs/cifar100/teachers/{teacher}.yaml\n",
            teacher_config(teacher),
        )
        for method, text in HEADERS.items():
            line = text.format(beta=beta, hint=hint, at_layers=at_layers)
            write(
                HERE / f"{teacher}_{student}" / f"{method}.yaml",
                f"# CIFAR-100 {teacher} -> {student}. {line}\n# {schedule} Train the teacher first.\n"
                f"#   python -m kd_lightning.cli fit --config configs/cifar100/{teacher}_{student}/{method}.yaml\n",
                distill_config(teacher, student, method, hint, at_layers, beta),
            )


if __name__ == "__main__":
    main()
