"""A battery of bad inputs across every entry point: each ends in exit status 2 and one ``error:`` line
naming the cause, with no traceback, and leaves the outputs of an earlier run untouched.

Most cases run the CLI in-process (``main(argv)``); ``test_bad_input_in_a_real_process`` runs a few
as real subprocesses. Every case writes (or would write) into the folder of the earlier run.
"""

from __future__ import annotations

import copy
import gzip
import io
import pickle
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kd_lightning.cli import main
from kd_lightning.errors import KDLightningError
from tests._bad_input_helpers import (
    cifar_folder,
    malicious_pickle,
    malicious_torch_file,
    mnist_folder,
    snapshot,
    user_error_line,
    write_yaml,
)

REPO = Path(__file__).resolve().parents[1]
QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False}
SCRATCH = {
    "class_path": "kd_lightning.modules.FrozenBackboneFinetuner",
    "init_args": {"network": {"name": "small_cnn", "kwargs": {"width": 4}}, "strategy": "full"},
}
DIGITS = {"class_path": "kd_lightning.data.DigitsDataModule", "init_args": {"batch_size": 64}}


def _config(run: Path, model: dict | None = None, data: dict | None = None, **extra) -> dict:
    checkpoint = {"dirpath": str(run), "filename": "best", "monitor": "val/acc", "mode": "max"}
    checkpoint["enable_version_counter"] = False
    trainer = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "limit_test_batches": 1}
    trainer |= {**QUIET, "default_root_dir": str(run), "deterministic": True}
    trainer["callbacks"] = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": checkpoint}]
    return {"trainer": trainer, "model": model or SCRATCH, "data": data or DIGITS, **extra}


@dataclass
class Earlier:
    """The folder of an earlier successful run, and the files a case can point at."""

    root: Path
    run: Path
    config: Path
    best: Path
    files: Path

    def distill_config(self) -> Path:
        teacher = {"name": "small_cnn", "kwargs": {"width": 4}, "weights_path": str(self.best)}
        model = {
            "class_path": "kd_lightning.modules.DistillationModule",
            "init_args": {"student": {"name": "small_cnn", "kwargs": {"width": 2}}, "teacher": teacher},
        }
        return write_yaml(self.files / "distill.yaml", _config(self.run, model))

    def data_config(self, name: str, data: dict) -> Path:
        return write_yaml(self.files / f"{name}.yaml", {"data": data})

    def fit_with_data(self, name: str, data: dict) -> list[str]:
        return ["fit", "--config", str(write_yaml(self.files / f"{name}.yaml", _config(self.run, data=data)))]


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory) -> Earlier:
    root = tmp_path_factory.mktemp("earlier")
    run, files = root / "run", root / "files"
    files.mkdir()
    config = write_yaml(root / "config.yaml", _config(run))
    main(["fit", "--config", str(config)])
    return Earlier(root, run, config, run / "best.ckpt", files)


def _damaged(earlier: Earlier, name: str, how: str) -> Path:
    path = earlier.files / name
    good = earlier.best.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif how == "foreign":
        buffer = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buffer, format="PNG")
        path.write_bytes(buffer.getvalue())
    elif how == "plain_state_dict":
        torch.save({"weight": torch.zeros(2)}, path)
    elif how == "nan":
        checkpoint = torch.load(earlier.best, weights_only=True)
        next(v for k, v in checkpoint["state_dict"].items() if k.endswith("head.weight")).fill_(float("nan"))
        torch.save(checkpoint, path)
    elif how == "malicious":
        malicious_torch_file(path, earlier.files / "payload_ran", torch.load(earlier.best, weights_only=True))
    return path


def _image_folder(root: Path, odd: dict[str, Callable[[Path], None]] | None = None, classes: int = 2) -> Path:
    """``root/<class>/<i>.png`` of 8×8 grayscale images; ``odd`` adds files by name to class ``c0``."""
    if root.exists():
        return root
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i + c, np.uint8)).save(root / f"c{c}" / f"{i}.png")
    for name, write in (odd or {}).items():
        write(root / "c0" / name)
    return root


def _animated_gif(path: Path) -> None:
    frames = [Image.new("L", (8, 8), value) for value in (60, 120, 180)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def _float_tiff(path: Path) -> None:
    Image.fromarray(np.ones((8, 8), np.float32)).save(path)


def _truncated_png(path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[:30])


def _image_data(earlier: Earlier, name: str, odd: dict) -> dict:
    folder = str(_image_folder(earlier.files / name, odd))
    return {
        "class_path": "kd_lightning.data.ImageFolderDataModule",
        "init_args": {"data_dir": folder, "test_dir": folder},
    }


def _mnist(earlier: Earlier, name: str, **files: bytes) -> dict:
    folder = earlier.files / name
    if not folder.exists():
        mnist_folder(folder, **files)
    return {"class_path": "kd_lightning.data.MNISTDataModule", "init_args": {"data_dir": str(folder)}}


def _cifar(earlier: Earlier, name: str, content: object) -> dict:
    folder = earlier.files / name
    if not folder.exists():
        cifar_folder(folder, {"data_batch_1": content})
    return {"class_path": "kd_lightning.data.CIFAR10DataModule", "init_args": {"data_dir": str(folder)}}


def _distill(earlier: Earlier, *args: str) -> list[str]:
    return ["fit", "--config", str(earlier.distill_config()), *args]


def _five_class_teacher(earlier: Earlier) -> Path:
    from kd_lightning.models import create_model

    path = earlier.files / "teacher5.pt"
    torch.save(create_model("small_cnn", 5, width=4).state_dict(), path)
    return path


def _truncated_idx_gz() -> bytes:
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (12, 28, 28))
    whole = gzip.compress(header + bytes(12 * 28 * 28))
    return whole[: len(whole) // 2]


def _malicious_batch(earlier: Earlier) -> bytes:
    return malicious_pickle(earlier.files / "evil.pkl", earlier.files / "cifar_ran").read_bytes()


def _pickled_module(earlier: Earlier) -> Path:
    """What ``torch.save(model)`` writes: the module object, not its state dict."""
    from kd_lightning.models import create_model

    path = earlier.files / "whole_model.pt"
    torch.save(create_model("small_cnn", 10, width=4), path)
    return path


def _fit(earlier: Earlier, *args: str) -> list[str]:
    return ["fit", "--config", str(earlier.config), *args]


def _report(earlier: Earlier, *args: str) -> list[str]:
    output = str(earlier.run / "report")
    return ["report", "--teacher", str(earlier.best), "--students", str(earlier.best), "--output", output, *args]


def _export(earlier: Earlier, *args: str, checkpoint: Path | None = None) -> list[str]:
    return ["export", str(checkpoint or earlier.best), "--output", str(earlier.run / "export"), *args]


def _config_with(earlier: Earlier, name: str, **changes) -> Path:
    config = copy.deepcopy(_config(earlier.run))
    config.update(changes)
    return write_yaml(earlier.files / f"{name}.yaml", config)


# (case id, argv from the earlier run, text the error line must contain)
CASES: list[tuple[str, Callable[[Earlier], list[str]], str]] = [
    # --- data arguments, checked where they enter ---
    ("batch_size_0", lambda e: _fit(e, "--data.init_args.batch_size", "0"), "data.batch_size must be >= 1, got 0"),
    ("batch_size_negative", lambda e: _fit(e, "--data.init_args.batch_size", "-8"), "data.batch_size must be >= 1"),
    ("eval_batch_size_0", lambda e: _fit(e, "--data.init_args.eval_batch_size", "0"), "data.eval_batch_size"),
    ("image_size_0", lambda e: _fit(e, "--data.init_args.image_size", "0"), "data.image_size must be >= 1, got 0"),
    ("image_size_negative", lambda e: _fit(e, "--data.init_args.image_size", "-1"), "data.image_size must be >= 1"),
    ("samples_per_class_0", lambda e: _fit(e, "--data.init_args.samples_per_class", "0"), "data.samples_per_class"),
    (
        "samples_per_class_impossible",
        lambda e: _fit(e, "--data.init_args.samples_per_class", "1000"),
        "data.samples_per_class=1000 exceeds the images of classes",
    ),
    ("val_fraction_1", lambda e: _fit(e, "--data.init_args.val_fraction", "1.0"), "data.val_fraction must be in"),
    ("crop_padding_negative", lambda e: _fit(e, "--data.init_args.crop_padding", "-2"), "data.crop_padding"),
    # --- names in the config ---
    ("unknown_backbone", lambda e: _fit(e, "--model.init_args.network.name", "resnet9"), "unknown backbone 'resnet9'"),
    ("unknown_import", lambda e: _fit(e, "--imports", "no_such_user_module"), "cannot import 'no_such_user_module'"),
    ("missing_import_file", lambda e: _fit(e, "--imports", "missing_losses.py"), "no such file"),
    ("imports_not_a_list", lambda e: ["fit", "--config", str(_config_with(e, "imp", imports=5))], "must be a list"),
    # --- --ckpt_path: missing, damaged, foreign, malicious, another config or class ---
    ("ckpt_missing", lambda e: _fit(e, "--ckpt_path", str(e.files / "nope.ckpt")), "checkpoint not found"),
    ("ckpt_last_absent", lambda e: _fit(e, "--ckpt_path", "last"), "--ckpt_path last: no last checkpoint"),
    ("ckpt_empty", lambda e: _fit(e, "--ckpt_path", str(_damaged(e, "empty.ckpt", "empty"))), "empty (0 bytes)"),
    (
        "ckpt_truncated",
        lambda e: _fit(e, "--ckpt_path", str(_damaged(e, "half.ckpt", "truncated"))),
        "truncated, corrupt",
    ),
    ("ckpt_foreign", lambda e: _fit(e, "--ckpt_path", str(_damaged(e, "image.ckpt", "foreign"))), "truncated, corrupt"),
    (
        "ckpt_plain_state_dict",
        lambda e: _fit(e, "--ckpt_path", str(_damaged(e, "plain.ckpt", "plain_state_dict"))),
        "not a Lightning checkpoint",
    ),
    (
        "ckpt_malicious",
        lambda e: _fit(e, "--ckpt_path", str(_damaged(e, "evil.ckpt", "malicious"))),
        "refused unread (unpickling an object could run code)",
    ),
    (
        "ckpt_nan_weights_test",
        lambda e: ["test", "--config", str(e.config), "--ckpt_path", str(_damaged(e, "nan.ckpt", "nan"))],
        "non-finite weights",
    ),
    (
        "validate_nan_weights",
        lambda e: ["validate", "--config", str(e.config), "--ckpt_path", str(_damaged(e, "nan_v.ckpt", "nan"))],
        "non-finite weights",
    ),
    (
        "predict_other_model_setting",
        lambda e: (
            ["predict", "--config", str(e.config), "--model.init_args.strategy", "linear_probe"]
            + ["--ckpt_path", str(e.best)]
        ),
        "model.strategy: checkpoint 'full', config 'linear_probe'",
    ),
    (
        "resume_other_model_setting",
        lambda e: _fit(e, "--model.init_args.label_smoothing", "0.1", "--ckpt_path", str(e.best)),
        "model.label_smoothing: checkpoint 0.0, config 0.1",
    ),
    (
        "resume_other_data_setting",
        lambda e: _fit(e, "--data.init_args.batch_size", "16", "--ckpt_path", str(e.best)),
        "data.batch_size: checkpoint 64, config 16",
    ),
    (
        "test_other_architecture",
        lambda e: (
            ["test", "--config", str(e.config), "--model.init_args.network.kwargs", "{width: 8}"]
            + ["--ckpt_path", str(e.best)]
        ),
        "model.network: checkpoint",
    ),
    (
        "distill_config_given_a_teacher_checkpoint",
        lambda e: ["fit", "--config", str(e.distill_config()), "--ckpt_path", str(e.best)],
        "is a checkpoint of kd_lightning.modules.FrozenBackboneFinetuner, but the config builds",
    ),
    (
        "checkpoint_config_without_checkpoint",
        lambda e: _fit(e, "--use_checkpoint_config", "true"),
        "--use_checkpoint_config needs --ckpt_path",
    ),
    (
        "checkpoint_config_with_last",
        lambda e: _fit(e, "--use_checkpoint_config", "true", "--ckpt_path", "last"),
        "needs --ckpt_path to name a checkpoint file",
    ),
    # --- files the data is read from ---
    (
        "teacher_weights_empty",
        lambda e: (
            ["fit", "--config", str(e.distill_config())]
            + ["--model.init_args.teacher.weights_path", str(_damaged(e, "empty_teacher.pt", "empty"))]
        ),
        "empty (0 bytes)",
    ),
    (
        "animated_gif",
        lambda e: e.fit_with_data("gif", _image_data(e, "gif", {"anim.gif": _animated_gif})),
        "anim.gif is an animated image with 3 frames",
    ),
    (
        "float_tiff",
        lambda e: e.fit_with_data("tiff", _image_data(e, "tiff", {"float.tif": _float_tiff})),
        "float.tif is a floating-point image",
    ),
    (
        "empty_image",
        lambda e: e.fit_with_data("empty_png", _image_data(e, "empty_png", {"zero.png": lambda p: p.write_bytes(b"")})),
        "cannot decode image",
    ),
    (
        "truncated_image",
        lambda e: e.fit_with_data("cut_png", _image_data(e, "cut_png", {"cut.png": _truncated_png})),
        "cut.png",
    ),
    (
        "foreign_file_as_image",
        lambda e: e.fit_with_data("text", _image_data(e, "text", {"notes.jpg": lambda p: p.write_text("hello")})),
        "notes.jpg",
    ),
    ("idx_empty", lambda e: e.fit_with_data("mnist0", _mnist(e, "mnist0", images=b"")), "not an IDX file"),
    (
        "idx_truncated_gzip",
        lambda e: e.fit_with_data("mnist_cut", _mnist(e, "mnist_cut", images=_truncated_idx_gz())),
        "mnist_cut/train-images-idx3-ubyte.gz",
    ),
    (
        "idx_labels_mismatch",
        lambda e: e.fit_with_data(
            "mnist_lab", _mnist(e, "mnist_lab", labels=gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2])))
        ),
        "labels for the 12 images",
    ),
    (
        "cifar_malicious_batch",
        lambda e: e.fit_with_data(
            "cifar_evil",
            _cifar(e, "cifar_evil", malicious_pickle(e.files / "evil.pkl", e.files / "cifar_ran").read_bytes()),
        ),
        "crafted to run code (refused unread)",
    ),
    (
        "cifar_truncated_batch",
        lambda e: e.fit_with_data(
            "cifar_cut", _cifar(e, "cifar_cut", pickle.dumps({"data": np.zeros((9, 3072))})[:99])
        ),
        "data_batch_1",
    ),
    ("cifar_foreign_batch", lambda e: e.fit_with_data("cifar_list", _cifar(e, "cifar_list", [1, 2, 3])), "not a CIFAR"),
    (
        "unknown_loss",
        lambda e: _distill(e, "--model.init_args.losses", "[{name: kdd}]"),
        "unknown distillation loss 'kdd'",
    ),
    (
        "loss_kwarg_misspelt",
        lambda e: _distill(e, "--model.init_args.losses", "[{name: kd, kwargs: {temp: 4}}]"),
        "distillation loss 'kd': got an unexpected keyword argument 'temp'; it takes temperature",
    ),
    (
        "backbone_kwarg_misspelt",
        lambda e: _fit(e, "--model.init_args.network.kwargs", "{widht: 4}"),
        "backbone 'small_cnn': got an unexpected keyword argument 'widht'; it takes pretrained, in_chans, width, depth",
    ),
    (
        "pretrained_for_a_net_without_weights",
        lambda e: _fit(e, "--model.init_args.network.pretrained", "DEFAULT"),
        "small_cnn has no pretrained weights",
    ),
    (
        "test_on_another_image_size",
        lambda e: ["test", "--config", str(e.config), "--ckpt_path", str(e.best), "--data.init_args.image_size", "16"],
        "was trained on 1×8×8 images but the data gives 16×16",
    ),
    (
        "num_classes_against_the_data",
        lambda e: _fit(e, "--model.init_args.num_classes", "5"),
        "model.num_classes is 5 but DigitsDataModule has 10 classes",
    ),
    ("alpha_out_of_range", lambda e: _distill(e, "--model.init_args.alpha", "1.5"), "alpha must be in [0, 1]"),
    ("temperature_0", lambda e: _distill(e, "--model.init_args.temperature", "0"), "temperature must be > 0"),
    (
        "temperature_next_to_losses",
        lambda e: _distill(e, "--model.init_args.temperature", "2", "--model.init_args.losses", "[{name: kd}]"),
        "temperature: 2.0 would be ignored next to losses",
    ),
    (
        "teacher_weights_missing",
        lambda e: _distill(e, "--model.init_args.teacher.weights_path", str(e.files / "gone.pt")),
        "weights file not found",
    ),
    (
        "teacher_saved_as_a_whole_module",
        lambda e: _distill(e, "--model.init_args.teacher.weights_path", str(_pickled_module(e))),
        "holds a pickled kd_lightning.models.classifier.Classifier, refused unread",
    ),
    (
        "ckpt_saved_as_a_whole_module",
        lambda e: _fit(e, "--ckpt_path", str(_pickled_module(e))),
        "holds a pickled kd_lightning.models.classifier.Classifier, refused unread",
    ),
    (
        "teacher_of_another_class_count",
        lambda e: _distill(e, "--model.init_args.teacher.weights_path", str(_five_class_teacher(e))),
        "was trained for 5 classes but this model has 10",
    ),
    (
        "teacher_of_another_architecture",
        lambda e: _distill(e, "--model.init_args.teacher.kwargs", "{width: 8}"),
        "(0 missing, 21 with another shape)",
    ),
    (
        "data_set_not_there",
        lambda e: e.fit_with_data("no_mnist", {**_mnist(e, "m"), "init_args": {"data_dir": str(e.files / "none")}}),
        "MNIST not found under",
    ),
    (
        "rgb_data_for_a_grayscale_model",
        lambda e: e.fit_with_data("rgb_fit", _rgb_ten_classes(e)),
        "input has 3 channels but the backbone expects 1",
    ),
    ("unknown_option", lambda e: _fit(e, "--trainer.speed", "2"), "unrecognized arguments: --trainer.speed"),
    ("wrong_type", lambda e: _fit(e, "--trainer.max_epochs", "many"), 'Parser key "trainer.max_epochs"'),
    ("unknown_command", lambda e: ["fitt", "--config", str(e.config)], "unknown command 'fitt'"),
    # --- report / export: arguments, files, and checkpoints that do not fit the data ---
    ("report_unknown_data", lambda e: _report(e, "--data", "imagenet"), "unknown data set 'imagenet'"),
    ("report_wrong_names_count", lambda e: _report(e, "--names", "a", "b", "c"), "--names gives 3 names for 2 models"),
    ("report_duplicate_names", lambda e: _report(e, "--names", "a", "a"), "--names must differ"),
    ("report_latency_repeats_0", lambda e: _report(e, "--latency_repeats", "0"), "--latency_repeats must be >= 1"),
    ("report_threads_0", lambda e: _report(e, "--threads", "0"), "--threads must be >= 1"),
    (
        "report_missing_student",
        lambda e: ["report", "--teacher", str(e.best), "--students", str(e.files / "gone.ckpt")],
        "checkpoint not found",
    ),
    (
        "report_malicious_student",
        lambda e: ["report", "--teacher", str(e.best), "--students", str(_damaged(e, "evil_s.ckpt", "malicious"))],
        "refused unread (unpickling an object could run code)",
    ),
    (
        "report_class_count_mismatch",
        lambda e: _report(e, "--data", str(e.data_config("two", _image_data(e, "two_classes", {})))),
        "predicts 10 classes but ImageFolderDataModule has 2",
    ),
    (
        "report_image_size_mismatch",
        lambda e: _report(e, "--data", str(e.data_config("big", {**DIGITS, "init_args": {"image_size": 16}}))),
        "was trained on 1×8×8 images but DigitsDataModule gives 1×16×16",
    ),
    ("report_data_config_missing", lambda e: _report(e, "--data", "nowhere.yaml"), "data config not found"),
    (
        "report_data_config_without_data",
        lambda e: _report(e, "--data", str(write_yaml(e.files / "nodata.yaml", {"model": {}}))),
        "has no 'data:' section",
    ),
    (
        "export_channel_mismatch",
        lambda e: _export(e, "--data", str(e.data_config("rgb", _rgb_ten_classes(e)))),
        "was trained on 1×8×8 images but ImageFolderDataModule gives 3×8×8",
    ),
    ("export_unknown_format", lambda e: _export(e, "--formats", "tflite"), "formats"),
    (
        "export_plain_state_dict",
        lambda e: _export(e, checkpoint=_damaged(e, "plain_export.pt", "plain_state_dict")),
        "not a Lightning checkpoint",
    ),
    ("export_truncated", lambda e: _export(e, checkpoint=_damaged(e, "cut.ckpt", "truncated")), "truncated, corrupt"),
    ("export_missing_argument", lambda e: ["export", "--output", str(e.run / "export")], "checkpoint"),
    ("quickstart_no_seeds", lambda e: ["quickstart", "--output", str(e.run), "--seeds", "[]"], "at least one seed"),
    (
        "quickstart_zero_epochs",
        lambda e: ["quickstart", "--output", str(e.run), "--student_epochs", "0"],
        "--student_epochs must be >= 1",
    ),
]


def _rgb_ten_classes(earlier: Earlier) -> dict:
    folder = earlier.files / "rgb10"
    if not folder.exists():
        for c in range(10):
            (folder / f"c{c}").mkdir(parents=True)
            Image.new("RGB", (8, 8), (c, 2 * c, 3 * c)).save(folder / f"c{c}" / "0.png")
    init_args = {"data_dir": str(folder), "test_dir": str(folder), "image_size": 8}
    return {"class_path": "kd_lightning.data.ImageFolderDataModule", "init_args": init_args}


def test_the_battery_covers_every_entry_point(earlier: Earlier, monkeypatch) -> None:
    monkeypatch.chdir(earlier.root)
    assert len(CASES) >= 40
    commands = {"fit", "validate", "test", "predict", "report", "export", "quickstart"}
    assert {argv(earlier)[0] for _, argv, _ in CASES} >= commands


# Every error line the battery printed, for the README check at the end.
PRINTED: dict[str, str] = {}


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(earlier: Earlier, capsys, monkeypatch, argv, expected) -> None:
    monkeypatch.chdir(earlier.root)
    before = snapshot(earlier.run)
    args = argv(earlier)
    capsys.readouterr()
    line = user_error_line(capsys, args)
    PRINTED[" ".join(args)] = line
    assert expected in line, line
    assert snapshot(earlier.run) == before, "an output of the earlier run was modified"
    assert not any(earlier.files.glob("*_ran")), "a payload ran"


@pytest.mark.slow  # each starts a Python that imports torch and Lightning
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["fit", "--data.init_args.batch_size", "0"], "error: data.batch_size must be >= 1, got 0"),
        (["report", "--teacher", "t.ckpt", "--students", "s.ckpt", "--data", "imagenet"], "error: "),
        (["export", "missing.ckpt"], "error: checkpoint not found: missing.ckpt"),
    ],
    ids=["fit", "report", "export"],
)
def test_bad_input_in_a_real_process(earlier: Earlier, args, expected) -> None:
    if args[0] == "fit":
        args = [args[0], "--config", str(earlier.config), *args[1:]]
    before = snapshot(earlier.run)
    result = subprocess.run(
        [sys.executable, "-m", "kd_lightning", *args], capture_output=True, text=True, cwd=earlier.root
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert "not recommended to provide both args and command line arguments" not in result.stderr
    assert snapshot(earlier.run) == before


def _readme_patterns() -> list[str]:
    """The backticked messages of the first column of the README's error table."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("| the `error:` line contains |") :].split("\n\n")[0]
    rows = [line for line in table.splitlines()[2:] if line.startswith("| `")]
    return [pattern for row in rows for pattern in re.findall(r"`([^`]+)`", row.split(" | ")[0])]


def _messages_outside_the_battery(tmp_path: Path) -> list[str]:
    """Errors the battery does not reach through the CLI, raised by the code that prints them."""
    from types import SimpleNamespace

    from kd_lightning.callbacks.nonfinite import NonFiniteLossGuard
    from kd_lightning.checkpointing import check_finite_metrics
    from kd_lightning.models import create_model
    from kd_lightning.models.fingerprint import check_fingerprint
    from kd_lightning.modules.teacher import FrozenTeacher
    from kd_lightning.run_lock import RunFolderLock, lock_path

    raisers = [lambda: check_fingerprint({"sha256": "0" * 64, "spec": {}}, create_model("small_cnn", 10, width=4))]
    raisers.append(lambda: check_finite_metrics({"test/loss": float("nan")}, "test"))
    (tmp_path / "busy").mkdir()
    lock_path(tmp_path / "busy").write_text("1 another-host\n")
    raisers.append(lambda: RunFolderLock([tmp_path / "busy"]).__enter__())
    guard = NonFiniteLossGuard()
    guard._first_bad_step = torch.tensor(3)
    trainer = SimpleNamespace(callback_metrics={"train/kd": torch.tensor(float("nan"))}, current_epoch=0)
    raisers.append(lambda: guard._check(trainer, SimpleNamespace(step_values={}), 3))
    reordered = SimpleNamespace(class_names=["fresh", "rotten"], spec=SimpleNamespace(weights_path="teacher.ckpt"))
    raisers.append(lambda: FrozenTeacher.check_class_order(reordered, ["rotten", "fresh"]))  # type: ignore[arg-type]
    store_path = tmp_path / "entry.pt"
    store_path.write_bytes(b"")
    raisers.append(lambda: __import__("kd_lightning.cache.store", fromlist=["read_entry"]).read_entry(store_path))
    messages = []
    for raiser in raisers:
        with pytest.raises(KDLightningError) as info:
            raiser()
        messages.append(f"error: {info.value}")
    return messages


def test_the_readme_error_table_matches_what_the_program_prints(tmp_path) -> None:
    if len(PRINTED) < len(CASES):
        pytest.skip("needs the whole battery of this module to have run first")
    printed = [*PRINTED.values(), *_messages_outside_the_battery(tmp_path)]
    patterns = _readme_patterns()
    assert len(patterns) >= 30
    for pattern in patterns:
        regex = ".+?".join(re.escape(part) for part in re.split(r"<[^>]+>", pattern))
        assert any(re.search(regex, line) for line in printed), f"README row {pattern!r} matches no printed error"
