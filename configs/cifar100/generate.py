"""Write the CIFAR-100 recipes (RepDistiller/mdistiller protocol) as LightningCLI YAML files.

The YAML files and the recipe table of README.md are the product and are committed; this script
only keeps the files and the table consistent (a test checks that they are up to date). Run
from the repository root: ``python configs/cifar100/generate.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml


class _NoAliases(yaml.SafeDumper):
    """Write repeated lists out in full: YAML anchors would make the recipes harder to read."""

    def ignore_aliases(self, data) -> bool:
        return True


HERE = Path(__file__).resolve().parent
METHODS = ("kd", "dkd", "fitnet", "at", "crd")

# (teacher, student, layers tapped by FitNets (hint), layers of AT, DKD's β from the DKD authors' configs).
# The layers are RepDistiller's feature indices (hint_layer 2; AT on feat[1:-1]) by module name. Stage
# references (``stage:N``) would not say it more uniformly: RepDistiller counts VGG's block0 as its stem
# feature, so its feat[2] is stage:1 (layer2) of a ResNet/WRN but stage:2 (block2) of a VGG.
PAIRS = [
    ("resnet32x4", "resnet8x4", ["layer2"], ["layer1", "layer2", "layer3"], 8.0),
    ("wrn_40_2", "wrn_16_2", ["block2"], ["block1", "block2", "block3"], 6.0),
    ("resnet56", "resnet20", ["layer2"], ["layer1", "layer2", "layer3"], 2.0),
    ("vgg13", "vgg8", ["block2"], ["block1", "block2", "block3", "block4"], 6.0),
]

# Published CIFAR-100 test accuracy (%). Teachers, KD, FitNets, AT and CRD: Tian et al., "Contrastive
# Representation Distillation", ICLR 2020, Table 1 (same-architecture pairs; the same table is in
# RepDistiller's README). DKD: Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022, Table 1,
# as listed in mdistiller's README.
CRD_TABLE = "CRD paper, Table 1"
DKD_TABLE = "DKD paper, Table 1"
TEACHER_TARGETS = {"resnet32x4": 79.42, "wrn_40_2": 75.61, "resnet56": 72.34, "vgg13": 74.64}
STUDENT_BASELINES = {"resnet8x4": 72.50, "wrn_16_2": 73.26, "resnet20": 69.06, "vgg8": 70.36}
TARGETS = {
    "resnet32x4_resnet8x4": {"kd": 73.33, "dkd": 76.32, "fitnet": 73.50, "at": 73.44, "crd": 75.51},
    "wrn_40_2_wrn_16_2": {"kd": 74.92, "dkd": 76.23, "fitnet": 73.58, "at": 74.08, "crd": 75.48},
    "resnet56_resnet20": {"kd": 70.66, "dkd": 71.97, "fitnet": 69.21, "at": 70.55, "crd": 71.16},
    "vgg13_vgg8": {"kd": 72.98, "dkd": 74.68, "fitnet": 71.02, "at": 71.43, "crd": 73.94},
}

# Newer logit methods, on resnet32x4 -> resnet8x4 and one other pair their references report, with the
# published CIFAR-100 top-1 (%). The LS-KD authors' README lists KD+LS and DKD+LS (Sun et al., "Logit
# Standardization in Knowledge Distillation", CVPR 2024, Table 1) and CTKD (Li et al., "Curriculum
# Temperature for Knowledge Distillation", AAAI 2023) for the same teachers and protocol.
LS_TABLE = "LS-KD paper, Table 1"
CTKD_TABLE = "CTKD paper, as listed by LS-KD"
LOGIT_TARGETS = {
    "resnet32x4_resnet8x4": {"kd_ls": 76.62, "dkd_ls": 77.01, "ctkd": 73.39},
    "wrn_40_2_wrn_16_2": {"kd_ls": 76.11, "dkd_ls": 76.39, "ctkd": 75.45},
}
LOGIT_SOURCES = {"kd_ls": LS_TABLE, "dkd_ls": LS_TABLE, "ctkd": CTKD_TABLE}

OPTIMIZER = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4}}
SCHEDULER = {
    "class_path": "torch.optim.lr_scheduler.MultiStepLR",
    "init_args": {"milestones": [150, 180, 210], "gamma": 0.1},
}
COMMAND = "python -m kd_lightning.cli fit --config configs/cifar100/{}"


def trainer(run_dir: str) -> dict:
    """One device (the references' single GPU: global batch 64), 240 epochs, last and best checkpoints."""
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {
            "dirpath": run_dir,
            "filename": "best",
            "monitor": "val/acc",
            "mode": "max",
            "save_last": True,
            "enable_version_counter": False,
        },
    }
    report = {"class_path": "kd_lightning.callbacks.LastAndBestAccuracy", "init_args": {"monitor": "val/acc"}}
    return {
        "accelerator": "auto",
        "devices": 1,
        "max_epochs": 240,
        "default_root_dir": run_dir,
        "callbacks": [checkpoint, report],
    }


def data(return_indices: bool = False) -> dict:
    """All 50,000 training images, validation on the 10,000 test images, batch 64 (the references' protocol)."""
    args: dict = {"data_dir": "data", "download": True, "batch_size": 64, "validate_on_test": True}
    if return_indices:
        args["return_indices"] = True
    return {"class_path": "kd_lightning.data.CIFAR100DataModule", "init_args": args}


def teacher_config(name: str) -> dict:
    model = {
        "class_path": "kd_lightning.modules.FrozenBackboneFinetuner",
        "init_args": {
            "network": {"name": name},
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
        kwargs = {"student_layers": hint, "teacher_layers": hint, "final_relu": True}
        return [ce, {"name": "fitnet", "weight": 100.0, "kwargs": kwargs}]
    if method == "at":
        kwargs = {"student_layers": at_layers, "teacher_layers": at_layers, "p": 2.0}
        return [ce, {"name": "at", "weight": 1000.0, "kwargs": kwargs}]
    if method == "crd":
        # No num_samples: the memory takes the training set's size (50,000) when the fit starts.
        kwargs = {
            "feat_dim": 128,
            "num_negatives": 16384,
            "temperature": 0.07,
            "momentum": 0.5,
            "negative_sampling": "other_classes",
        }
        return [ce, {"name": "crd", "weight": 0.8, "kwargs": kwargs}]
    return logit_method_losses(method)


def logit_method_losses(method: str) -> list[dict]:
    """The newer logit methods' objectives, with the hyper-parameters their authors' runs used."""
    if method == "kd_ls":
        # LS-KD's command line (--logit-stand --base-temp 2 --kd-weight 9) on mdistiller's CE weight 0.1.
        kwargs = {"temperature": 2.0, "standardize": True}
        return [{"name": "ce", "weight": 0.1}, {"name": "kd", "weight": 9.0, "kwargs": kwargs}]
    if method == "dkd_ls":
        # LS-KD's script sets alpha = 1 x 9 and then beta = alpha x 9 = 81 for every pair, and its
        # --base-temp never reaches DKD, which keeps T = 4.
        kwargs = {"alpha": 9.0, "beta": 81.0, "temperature": 4.0, "warmup_epochs": 20, "standardize": True}
        return [{"name": "ce", "weight": 1.0}, {"name": "dkd", "weight": 1.0, "kwargs": kwargs}]
    if method == "ctkd":
        # CTKD's scripts: -r 0.1 -a 0.9, global temperature in [1, 21], reversal ramp over 10 epochs.
        kwargs = {"t_start": 1.0, "t_end": 20.0, "ramp_epochs": 10, "max_strength": 1.0}
        return [{"name": "ce", "weight": 0.1}, {"name": "ctkd", "weight": 0.9, "kwargs": kwargs}]
    raise ValueError(method)


def distill_config(teacher: str, student: str, method: str, hint, at_layers, beta) -> dict:
    run_dir = f"runs/cifar100/{teacher}_{student}/{method}"
    model = {
        "class_path": "kd_lightning.modules.DistillationModule",
        "init_args": {
            "student": {"name": student},
            # The teacher's last epoch, as both references distil from.
            "teacher": {"name": teacher, "weights_path": f"runs/cifar100/{teacher}/last.ckpt"},
            "losses": method_losses(method, hint, at_layers, beta),
            "optimizer": OPTIMIZER,
            "lr_scheduler": SCHEDULER,
        },
    }
    return {"seed_everything": 0, "trainer": trainer(run_dir), "model": model, "data": data(method == "crd")}


# Feature methods beyond FitNets/AT/CRD, each on resnet32x4 -> resnet8x4 and resnet56 -> resnet20: RepDistiller's
# with the CRD paper's Table 1 numbers, OFD and ReviewKD with the DKD paper's; KDSVD only where mdistiller ships
# a config, for which no number is published.
FEATURE_PAIRS = [("resnet32x4", "resnet8x4", 5, 1), ("resnet56", "resnet20", 9, 3)]  # blocks per stage
FEATURE_TARGETS: dict[str, dict[str, float | None]] = {
    "nst": {"resnet32x4_resnet8x4": 73.30, "resnet56_resnet20": 69.60},
    "cc": {"resnet32x4_resnet8x4": 72.97, "resnet56_resnet20": 69.63},
    "vid": {"resnet32x4_resnet8x4": 73.09, "resnet56_resnet20": 70.38},
    "fsp": {"resnet32x4_resnet8x4": 72.62, "resnet56_resnet20": 69.95},
    "kdsvd": {"resnet32x4_resnet8x4": None},
    "ab": {"resnet32x4_resnet8x4": 73.17, "resnet56_resnet20": 69.47},
    "ft": {"resnet32x4_resnet8x4": 72.86, "resnet56_resnet20": 69.84},
    "ofd": {"resnet32x4_resnet8x4": 74.95, "resnet56_resnet20": 70.98},
    "reviewkd": {"resnet32x4_resnet8x4": 75.63, "resnet56_resnet20": 71.89},
}
FEATURE_SOURCES = {"kdsvd": "none published (mdistiller's config)", "ofd": DKD_TABLE, "reviewkd": DKD_TABLE}
# ReviewKD's weight: mdistiller's config (resnet32x4) and the authors' script (resnet56, --kd-loss-weight 0.6).
REVIEWKD_WEIGHTS = {"resnet8x4": 5.0, "resnet20": 0.6}
# RepDistiller's --init_epochs: AB, FSP and FT first train alone for 30 epochs, then the 240 epochs follow.
INIT_EPOCHS = 30
STAGED = ("ab", "fsp", "ft")
STAGES = ["layer1", "layer2", "layer3"]


def preact(blocks: int) -> list[str]:
    """Each stage's output before its last ReLU (RepDistiller's ``preact`` features of a CIFAR ResNet)."""
    return [f"{stage}.{blocks - 1}.relu@input" for stage in STAGES]


def feature_losses(method: str, student: str, teacher_blocks: int, student_blocks: int) -> list[dict]:
    """RepDistiller's ``-r 1 -a 0 -b <weight>`` for each method (mdistiller's for KDSVD, OFD and ReviewKD)."""
    ce = {"name": "ce", "weight": 1.0}
    both = {"student_layers": STAGES, "teacher_layers": STAGES}
    if method == "nst":
        return [ce, {"name": "nst", "weight": 50.0, "kwargs": both}]
    if method == "cc":
        kwargs = {"student_layers": ["backbone"], "teacher_layers": ["backbone"], "embed_dim": 128}
        return [ce, {"name": "cc", "weight": 0.02, "kwargs": kwargs}]
    if method == "vid":
        kwargs = {**both, "init_variance": 5.0, "eps": 1.0e-5, "learn_variance": True}
        return [ce, {"name": "vid", "weight": 1.0, "kwargs": kwargs}]
    if method == "kdsvd":
        return [ce, {"name": "kdsvd", "weight": 1.0, "kwargs": {**both, "k": 1, "matrix": "ch_by_w"}}]
    if method == "fsp":
        layers = ["relu", *STAGES]  # the stem, then the three stages
        kwargs = {"student_layers": layers, "teacher_layers": layers, "init_epochs": INIT_EPOCHS}
        return [ce, {"name": "fsp", "weight": 1.0, "kwargs": kwargs}]
    if method == "ab":
        kwargs = {
            "student_layers": preact(student_blocks),
            "teacher_layers": preact(teacher_blocks),
            "margin": 1.0,
            "init_epochs": INIT_EPOCHS,
        }
        return [ce, {"name": "ab", "weight": 1.0, "kwargs": kwargs}]
    if method == "ft":
        kwargs = {
            "student_layers": ["layer3"],
            "teacher_layers": ["layer3"],
            "rate": 0.5,
            "init_epochs": INIT_EPOCHS,
            "reconstruction_weight": 1 / 200,
        }
        return [ce, {"name": "ft", "weight": 200.0, "kwargs": kwargs}]
    if method == "ofd":
        kwargs = {
            "student_layers": preact(student_blocks),
            "teacher_layers": preact(teacher_blocks),
            "teacher_batchnorms": [f"{stage}.{teacher_blocks - 1}.bn2" for stage in STAGES],
        }
        return [ce, {"name": "ofd", "weight": 0.001, "kwargs": kwargs}]
    if method == "reviewkd":
        kwargs = {
            "student_layers": [*STAGES, "backbone"],
            "teacher_layers": [*preact(teacher_blocks), "backbone"],
            "warmup_epochs": 20,
        }
        return [ce, {"name": "reviewkd", "weight": REVIEWKD_WEIGHTS[student], "kwargs": kwargs}]
    raise ValueError(method)


def feature_config(teacher: str, student: str, method: str, teacher_blocks: int, student_blocks: int) -> dict:
    """A distillation recipe; the staged methods run their 30 initialisation epochs before the 240."""
    run_dir = f"runs/cifar100/{teacher}_{student}/{method}"
    scheduler = {**SCHEDULER, "init_args": {**SCHEDULER["init_args"]}}
    config = {"seed_everything": 0, "trainer": trainer(run_dir)}
    if method in STAGED:
        config["trainer"]["max_epochs"] = 240 + INIT_EPOCHS
        scheduler["init_args"]["milestones"] = [m + INIT_EPOCHS for m in SCHEDULER["init_args"]["milestones"]]
    config["model"] = {
        "class_path": "kd_lightning.modules.DistillationModule",
        "init_args": {
            "student": {"name": student},
            "teacher": {"name": teacher, "weights_path": f"runs/cifar100/{teacher}/last.ckpt"},
            "losses": feature_losses(method, student, teacher_blocks, student_blocks),
            "optimizer": OPTIMIZER,
            "lr_scheduler": scheduler,
        },
    }
    config["data"] = data()
    return config


FEATURE_HEADERS = {
    "nst": "NST: CE + 50 x NST (polynomial-kernel MMD) on {stages}.",
    "cc": "CC: CE + 0.02 x correlation congruence of 128-d linear embeddings of the pooled features.",
    "vid": "VID: CE + 1 x VID on {stages} (initial variance 5, learned, as RepDistiller).",
    "kdsvd": "KDSVD: CE + 1 x KDSVD (k = 1) on {stages}, mdistiller's (C*H) x W factorisation.",
    "fsp": "FSP: 30 epochs of FSP alone on the stem and {stages}, then 240 epochs of CE.",
    "ab": "AB: 30 epochs of AB alone (margin 1) on the stages' pre-activations, then 240 epochs of CE.",
    "ft": "FT: 30 epochs training the paraphraser (rate 0.5) on layer3, then CE + 200 x FT.",
    "ofd": "OFD: CE + 0.001 x OFD on the stages' pre-activations, margins from each stage's last bn2.",
    "reviewkd": "ReviewKD: CE + {weight} x review of the stages and pooled features (20 warm-up epochs).",
}


def write_feature_recipes(out: Path) -> None:
    for teacher, student, teacher_blocks, student_blocks in FEATURE_PAIRS:
        pair = f"{teacher}_{student}"
        for method, targets in FEATURE_TARGETS.items():
            if pair not in targets:
                continue
            target = targets[pair]
            source = FEATURE_SOURCES.get(method, CRD_TABLE)
            stated = f"{target:.2f} % ({source})" if target is not None else source
            schedule = (
                SCHEDULE
                if method not in STAGED
                else SCHEDULE.replace("240 epochs", "30 + 240 epochs").replace("150/180/210", "180/210/240")
            )
            write(
                out / pair / f"{method}.yaml",
                f"# CIFAR-100 {teacher} -> {student}. "
                f"{FEATURE_HEADERS[method].format(stages=STAGES, weight=REVIEWKD_WEIGHTS.get(student))}\n# {schedule}\n"
                f"# Target: {stated}. Train the teacher first.\n"
                f"#   {COMMAND.format(f'{pair}/{method}.yaml')}\n",
                feature_config(teacher, student, method, teacher_blocks, student_blocks),
            )


def feature_recipe_rows() -> list[str]:
    rows = []
    for teacher, student, *_ in FEATURE_PAIRS:
        pair = f"{teacher}_{student}"
        for method, targets in FEATURE_TARGETS.items():
            if pair in targets:
                name, target = f"{pair}/{method}.yaml", targets[pair]
                shown = "—" if target is None else f"{target:.2f}"
                source = FEATURE_SOURCES.get(method, CRD_TABLE)
                rows.append(f"| `{name}` | {shown} | {source} | `{COMMAND.format(name)}` |")
    return rows


# MLKD, NKD and WKD-L on resnet32x4 -> resnet8x4 (MLKD also on wrn_40_2 -> wrn_16_2, WKD-L also on its paper's second
# CIFAR-100 pair, wrn_40_2 -> shufflev1), and CA-MKD's multi-teacher setting, each with its reference's
# hyper-parameters. Where the library cannot express a reference's setting the recipe runs on the protocol above and
# its header and the README say what differs. A target of None: no published number was found for that recipe.
MLKD_TABLE = "MLKD paper, as listed by LS-KD"
WKD_TABLE = "WKD-L, the WKD authors' README as first read; unverified (see WKD-L above)"
NOT_FOUND = "none found"
REFERENCE_PAIRS = [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "shufflev1")]
REFERENCE_TARGETS: dict[str, dict[str, float | None]] = {
    "resnet32x4_resnet8x4": {"mlkd": 77.08, "nkd": None, "wkd": 76.53},
    "wrn_40_2_wrn_16_2": {"mlkd": 76.63},
    "wrn_40_2_shufflev1": {"wkd": None},
}
REFERENCE_SOURCES = {"mlkd": MLKD_TABLE, "nkd": NOT_FOUND, "wkd": WKD_TABLE}
# The MLKD authors' configs (configs/cifar100/ours/*.yaml) set LR 0.025 for every pair.
MLKD_LR = 0.025
# RepDistiller and mdistiller train ShuffleNet students at lr 0.01, and so does the WKD authors' config for this pair.
STUDENT_LR = {"shufflev1": 0.01}
# WKD-L's temperature and weight per pair, from the configs/cifar100/wkd_l/ files named in the headers below.
WKD_SETTINGS = {"resnet8x4": {"temperature": 8.0, "gamma": 600.0}, "shufflev1": {"temperature": 6.0, "gamma": 200.0}}
REFERENCE_HEADERS = {
    "mlkd": (
        "MLKD: 0.2 CE + 0.9 x MLKD (T = 4, 3, 5, 2, 6) at lr 0.025, the authors' configs.\n"
        "# Differs from the reference: one pad-and-flip view stands for both of its views (its second view adds\n"
        "# RandAugment and Cutout), so its CE on two views (0.1 each) is 0.2 CE on the one."
    ),
    "nkd": (
        "NKD: CE + NKD (T = 3, gamma 3.5), the authors' CIFAR-100 config (res34_distill_res18_cifar.py).\n"
        "# Differs from the reference: its only CIFAR-100 run is ResNet34 -> ResNet18 on mmcls's schedule (200\n"
        "# epochs, batch 128, lr 0.1, x0.2 at 60/120/160); here its loss runs on the protocol below."
    ),
}
WKD_HEADERS = {
    "resnet32x4_resnet8x4": (
        "WKD-L: CE + target term + 600 x Sinkhorn WD (T = 8, lambda 0.05, 10 iterations,\n"
        "# cost sharpened with kappa 1, weight on a cosine decay from epoch 150), as in configs/cifar100/wkd_l/\n"
        "# res32x4_res8x4.yaml of forks of JiamingLv/WKD (hainn2803/WKD, Changhy26/WKL; the upstream file was not\n"
        "# available to check, one fork's later commit has 800). Differs from the reference: its cost is a\n"
        "# precomputed CKA-based class-to-class file (COST_MATRIX 'cka', linear_cka.pth), sharpened; here it is\n"
        "# 1 - exp(-(1 - cos)) of the teacher's classifier rows (its COST_MATRIX 'fc' option)."
    ),
    "wrn_40_2_shufflev1": (
        "WKD-L: CE + target term + 200 x Sinkhorn WD (T = 6, lambda 0.05, 10 iterations,\n"
        "# cost sharpened with kappa 1, weight on a cosine decay from epoch 150) at lr 0.01, as in configs/cifar100/\n"
        "# wkd_l/wrn40_2_shuv1.yaml of Changhy26/WKL, a fork of JiamingLv/WKD (hainn2803/WKD's run_cifar100.sh runs a\n"
        "# file of that name; the upstream file was not available to check). Differs from the reference: its cost is\n"
        "# a precomputed CKA-based class-to-class file of WRN-40-2 (COST_MATRIX 'cka', linear_cka.pth), sharpened;\n"
        "# here it is 1 - exp(-(1 - cos)) of the teacher's classifier rows (its COST_MATRIX 'fc' option)."
    ),
}
# CA-MKD (Zhang et al., ICASSP 2022; Rorozhl/CA-MKD scripts/run.sh and setting.py): three resnet32x4 teachers trained
# with different seeds, vgg8 student, -r 1 -a 1, T = 4, Nesterov momentum, and its --distill inter -b 50
# intermediate-feature term (camkd_feature on vgg8's block4 and each resnet32x4's layer3, from the second epoch).
# The same script's AEKD baseline (--distill kd --ensemble_method AEKD -b 0, -C 0.6 by default) is the aekd recipe
# of the same setting.
CAMKD_SEEDS = (0, 1, 2)
CAMKD_PAIR = "resnet32x4x3_vgg8"
MULTI_TEACHER = ("camkd", "aekd")
MULTI_TEACHER_OPTIONS = {
    "camkd": {"ensemble": "camkd"},
    "aekd": {"ensemble": "aekd", "aekd_max_weight": 0.6, "aekd_tolerance": 1.0e-6},
}
MULTI_TEACHER_HEADERS = {
    "camkd": (
        "CA-MKD: CE + KD (T = 4) per teacher, each sample\n"
        "# weighted by (1 - softmax_k(CE_k)) / (K - 1), + 50 x the feature term from the second epoch: vgg8's block4\n"
        "# embedded per teacher (1x1 conv + BN + ReLU) onto each resnet32x4's layer3, weighted alike by the CE of\n"
        "# that teacher's classifier on the embedded map; Nesterov momentum (Rorozhl/CA-MKD run.sh, --distill\n"
        "# inter). Differs from the reference: the teachers' last epochs, where the reference reads their best ones."
    ),
    "aekd": (
        "AEKD as CA-MKD's run.sh runs it: CE + sum_k w_k KD_k (T = 4),\n"
        "# w the least-norm point of the teachers' batch-mean logit gradients, each w_k <= C = 0.6, solved by the\n"
        "# reference's one-class SVM at its tolerance 1e-6 (which mostly leaves w at its start, 0.6 / 0.4 / 0: see\n"
        "# kd_lightning/modules/aekd.py), Nesterov momentum. Differs from the reference: the teachers' last epochs,\n"
        "# where the reference reads their best ones."
    ),
}


def teacher_run(name: str, seed: int) -> str:
    """Where a teacher recipe writes its checkpoints: seed 0 is the plain teacher recipe."""
    return f"runs/cifar100/{name}" if seed == 0 else f"runs/cifar100/{name}_seed{seed}"


def seeded_teacher_config(name: str, seed: int) -> dict:
    config = teacher_config(name)
    run_dir = teacher_run(name, seed)
    config["seed_everything"] = seed
    config["trainer"]["default_root_dir"] = run_dir
    config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = run_dir
    return config


def reference_losses(method: str, student: str) -> list[dict]:
    if method == "mlkd":
        kwargs = {"temperatures": [4.0, 3.0, 5.0, 2.0, 6.0]}
        return [{"name": "ce", "weight": 0.2}, {"name": "mlkd", "weight": 0.9, "kwargs": kwargs}]
    if method == "nkd":
        return [
            {"name": "ce", "weight": 1.0},
            {"name": "nkd", "weight": 1.0, "kwargs": {"temperature": 3.0, "gamma": 3.5}},
        ]
    if method == "wkd":
        kwargs = {
            **WKD_SETTINGS[student],
            "sinkhorn_reg": 0.05,
            "sinkhorn_iters": 10,
            "sharpen": 1.0,
            "decay_start_epoch": 150,
            "max_epochs": 240,
        }
        return [{"name": "ce", "weight": 1.0}, {"name": "wkd", "weight": 1.0, "kwargs": kwargs}]
    if method in MULTI_TEACHER:
        losses = [{"name": "ce", "weight": 1.0}, {"name": "kd", "weight": 1.0, "kwargs": {"temperature": 4.0}}]
        if method == "camkd":
            kwargs = {"student_layer": "block4", "teacher_layer": "layer3", "start_epoch": 1}
            losses.append({"name": "camkd_feature", "weight": 50.0, "kwargs": kwargs})
        return losses
    raise ValueError(method)


def reference_config(teacher: str, student: str, method: str) -> dict:
    pair = CAMKD_PAIR if method in MULTI_TEACHER else f"{teacher}_{student}"
    optimizer = {**OPTIMIZER, "init_args": {**OPTIMIZER["init_args"]}}
    if method == "mlkd":
        optimizer["init_args"]["lr"] = MLKD_LR
    if student in STUDENT_LR:
        optimizer["init_args"]["lr"] = STUDENT_LR[student]
    init_args: dict = {"student": {"name": student}}
    if method in MULTI_TEACHER:
        optimizer["init_args"]["nesterov"] = True
        init_args["teacher"] = [
            {"name": teacher, "weights_path": f"{teacher_run(teacher, seed)}/last.ckpt"} for seed in CAMKD_SEEDS
        ]
        init_args["teacher_options"] = MULTI_TEACHER_OPTIONS[method]
    else:
        init_args["teacher"] = {"name": teacher, "weights_path": f"runs/cifar100/{teacher}/last.ckpt"}
    init_args.update(losses=reference_losses(method, student), optimizer=optimizer, lr_scheduler=SCHEDULER)
    model = {"class_path": "kd_lightning.modules.DistillationModule", "init_args": init_args}
    return {"seed_everything": 0, "trainer": trainer(f"runs/cifar100/{pair}/{method}"), "model": model, "data": data()}


def stated_target(target: float | None, source: str) -> str:
    return f"{target:.2f} % ({source})" if target is not None else f"{NOT_FOUND} (no published number for this setting)"


def write_reference_recipes(out: Path) -> None:
    for teacher, student in REFERENCE_PAIRS:
        pair = f"{teacher}_{student}"
        for method, target in REFERENCE_TARGETS[pair].items():
            config = reference_config(teacher, student, method)
            lr = config["model"]["init_args"]["optimizer"]["init_args"]["lr"]
            header = WKD_HEADERS[pair] if method == "wkd" else REFERENCE_HEADERS[method]
            write(
                out / pair / f"{method}.yaml",
                f"# CIFAR-100 {teacher} -> {student}. {header}\n# {SCHEDULE.replace('lr 0.05', f'lr {lr}')}\n"
                f"# Target: {stated_target(target, REFERENCE_SOURCES[method])}. Train the teacher first.\n"
                f"#   {COMMAND.format(f'{pair}/{method}.yaml')}\n",
                config,
            )
    for seed in CAMKD_SEEDS[1:]:
        name = f"resnet32x4_seed{seed}"
        write(
            out / "teachers" / f"{name}.yaml",
            f"# CIFAR-100 teacher resnet32x4 from scratch with seed {seed}, for {CAMKD_PAIR}/camkd.yaml, aekd.yaml;\n"
            f"# {SCHEDULE}\n# Writes {teacher_run('resnet32x4', seed)}/last.ckpt.\n"
            f"#   {COMMAND.format(f'teachers/{name}.yaml')}\n",
            seeded_teacher_config("resnet32x4", seed),
        )
    for method in MULTI_TEACHER:
        write(
            out / CAMKD_PAIR / f"{method}.yaml",
            f"# CIFAR-100 3 x resnet32x4 (seeds 0, 1, 2) -> vgg8. {MULTI_TEACHER_HEADERS[method]}\n"
            f"# {SCHEDULE.replace('SGD', 'SGD (Nesterov)')}\n"
            f"# Target: {stated_target(None, NOT_FOUND)}. Train the three teachers first.\n"
            f"#   {COMMAND.format(f'{CAMKD_PAIR}/{method}.yaml')}\n",
            reference_config("resnet32x4", "vgg8", method),
        )


def reference_recipe_rows() -> list[str]:
    rows = []
    for seed in CAMKD_SEEDS[1:]:
        name = f"teachers/resnet32x4_seed{seed}.yaml"
        rows.append(f"| `{name}` | {TEACHER_TARGETS['resnet32x4']:.2f} | {CRD_TABLE} | `{COMMAND.format(name)}` |")
    for pair, targets in REFERENCE_TARGETS.items():
        for method, target in targets.items():
            name, shown = f"{pair}/{method}.yaml", "—" if target is None else f"{target:.2f}"
            source = NOT_FOUND if target is None else REFERENCE_SOURCES[method]
            rows.append(f"| `{name}` | {shown} | {source} | `{COMMAND.format(name)}` |")
    for method in MULTI_TEACHER:
        name = f"{CAMKD_PAIR}/{method}.yaml"
        rows.append(f"| `{name}` | — | {NOT_FOUND} | `{COMMAND.format(name)}` |")
    return rows


HEADERS = {
    "kd": "Hinton KD: 0.1 CE + 0.9 KD, T = 4.",
    "dkd": "Decoupled KD: CE + DKD (alpha 1, beta {beta}, T = 4, 20 warm-up epochs).",
    "fitnet": "FitNets: CE + 100 x hint loss on {hint} (1x1 conv + BN + ReLU regressor, as RepDistiller's ConvReg).",
    "at": "Attention Transfer: CE + 1000 x AT (p = 2) on {at_layers}.",
    "crd": "CRD: CE + 0.8 x CRD (128-d embeddings, 16384 negatives from other classes, tau 0.07, momentum 0.5).",
}
LOGIT_HEADERS = {
    "kd_ls": "KD with logit standardisation: 0.1 CE + 9 x KD on z-scored logits, T = 2.",
    "dkd_ls": "DKD with logit standardisation: CE + DKD on z-scored logits (alpha 9, beta 81, T = 4, 20 warm-up).",
    "ctkd": "CTKD: 0.1 CE + 0.9 x KD at a learnt global temperature in [1, 21], reversal ramp over 10 epochs.",
}
SCHEDULE = (
    "240 epochs, SGD lr 0.05 momentum 0.9 wd 5e-4, lr x0.1 at epochs 150/180/210, batch 64 on one device,\n"
    "# all 50,000 training images, validated on the test split (val/acc is test accuracy)."
)


def write(path: Path, header: str, config: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(config, Dumper=_NoAliases, sort_keys=False, default_flow_style=None, width=110)
    path.write_text(header + text)


def recipe_rows() -> list[str]:
    """The README's table: each recipe, the published number it targets and its command."""
    rows = ["| recipe | target top-1 (%) | source | command |", "| --- | --- | --- | --- |"]
    for teacher, _, *_ in PAIRS:
        name = f"teachers/{teacher}.yaml"
        rows.append(f"| `{name}` | {TEACHER_TARGETS[teacher]:.2f} | {CRD_TABLE} | `{COMMAND.format(name)}` |")
    for teacher, student, *_ in PAIRS:
        pair = f"{teacher}_{student}"
        for method in METHODS:
            name = f"{pair}/{method}.yaml"
            source = DKD_TABLE if method == "dkd" else CRD_TABLE
            rows.append(f"| `{name}` | {TARGETS[pair][method]:.2f} | {source} | `{COMMAND.format(name)}` |")
    for pair, targets in LOGIT_TARGETS.items():
        for method, target in targets.items():
            name = f"{pair}/{method}.yaml"
            rows.append(f"| `{name}` | {target:.2f} | {LOGIT_SOURCES[method]} | `{COMMAND.format(name)}` |")
    return rows + feature_recipe_rows() + reference_recipe_rows() + dot_recipe_rows()


# DOT (Zhao et al., "DOT: A Distillation-Oriented Trainer", ICCV 2023): the KD recipe trained by the DOT
# optimizer, as mdistiller's configs/cifar100/dot/ (delta 0.075), on the pairs we share with its README.
DOT_TABLE = "DOT paper, as listed in mdistiller's README"
DOT_TARGETS = {"resnet32x4_resnet8x4": 75.12, "vgg13_vgg8": 73.77}
DOT_OPTIMIZER = {
    "class_path": "kd_lightning.optim.DOT",
    "init_args": {"lr": 0.05, "momentum": 0.9, "delta": 0.075, "weight_decay": 5.0e-4},
}


def write_dot_recipes(out: Path) -> None:
    for teacher, student, hint, at_layers, beta in PAIRS:
        pair = f"{teacher}_{student}"
        if pair not in DOT_TARGETS:
            continue
        config = distill_config(teacher, student, "kd", hint, at_layers, beta)
        config["trainer"] = trainer(f"runs/cifar100/{pair}/kd_dot")
        config["model"]["init_args"]["optimizer"] = DOT_OPTIMIZER
        schedule = SCHEDULE.replace("SGD lr 0.05 momentum 0.9", "DOT lr 0.05 momentum 0.9 +- 0.075")
        write(
            out / pair / "kd_dot.yaml",
            f"# CIFAR-100 {teacher} -> {student}. {HEADERS['kd']} Trained by DOT: momentum 0.975 on the KD\n"
            f"# gradient, 0.825 on the CE gradient.\n# {schedule}\n"
            f"# Target: {DOT_TARGETS[pair]:.2f} % ({DOT_TABLE}). Train the teacher first.\n"
            f"#   {COMMAND.format(f'{pair}/kd_dot.yaml')}\n",
            config,
        )


def dot_recipe_rows() -> list[str]:
    rows = []
    for pair, target in DOT_TARGETS.items():
        name = f"{pair}/kd_dot.yaml"
        rows.append(f"| `{name}` | {target:.2f} | {DOT_TABLE} | `{COMMAND.format(name)}` |")
    return rows


TABLE_START = "<!-- recipe table: written by generate.py -->"
TABLE_END = "<!-- end of recipe table -->"


def readme_with_table(text: str) -> str:
    table = "\n".join([TABLE_START, *recipe_rows(), TABLE_END])
    pattern = re.compile(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"README.md has no {TABLE_START} ... {TABLE_END} block")
    return pattern.sub(lambda _: table, text)


def main(out: Path = HERE) -> None:
    for teacher, student, hint, at_layers, beta in PAIRS:
        write(
            out / "teachers" / f"{teacher}.yaml",
            f"# CIFAR-100 teacher {teacher} from scratch; {SCHEDULE}\n"
            f"# Target: {TEACHER_TARGETS[teacher]:.2f} % ({CRD_TABLE}). Writes runs/cifar100/{teacher}/last.ckpt,\n"
            f"# the last epoch, which the {teacher}_* distillation recipes read.\n"
            f"#   {COMMAND.format(f'teachers/{teacher}.yaml')}\n",
            teacher_config(teacher),
        )
        pair = f"{teacher}_{student}"
        for method, text in HEADERS.items():
            line = text.format(beta=beta, hint=hint, at_layers=at_layers)
            source = DKD_TABLE if method == "dkd" else CRD_TABLE
            write(
                out / pair / f"{method}.yaml",
                f"# CIFAR-100 {teacher} -> {student}. {line}\n# {SCHEDULE}\n"
                f"# Target: {TARGETS[pair][method]:.2f} % ({source}). Train the teacher first.\n"
                f"#   {COMMAND.format(f'{pair}/{method}.yaml')}\n",
                distill_config(teacher, student, method, hint, at_layers, beta),
            )
    for teacher, student, hint, at_layers, beta in PAIRS:
        pair = f"{teacher}_{student}"
        for method, target in LOGIT_TARGETS.get(pair, {}).items():
            write(
                out / pair / f"{method}.yaml",
                f"# CIFAR-100 {teacher} -> {student}. {LOGIT_HEADERS[method]}\n# {SCHEDULE}\n"
                f"# Target: {target:.2f} % ({LOGIT_SOURCES[method]}). Train the teacher first.\n"
                f"#   {COMMAND.format(f'{pair}/{method}.yaml')}\n",
                distill_config(teacher, student, method, hint, at_layers, beta),
            )
    write_feature_recipes(out)
    write_dot_recipes(out)
    write_reference_recipes(out)
    readme = HERE / "README.md"
    (out / "README.md").write_text(readme_with_table(readme.read_text()))


if __name__ == "__main__":
    main()
