"""Text classification DataModules: a local CSV/TSV/JSONL file or a Hugging Face data set, tokenized once."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Literal

import torch

from kd_lightning.data.base import ImageClassificationDataModule
from kd_lightning.data.batch import Batch
from kd_lightning.data.text_dataset import TokenizedTextDataset
from kd_lightning.errors import ConfigError, DataError, InvalidDataError
from kd_lightning.models.text_classifier import TextClassifier
from kd_lightning.text.tokenizer import TextTokenizer, load_tokenizer

Rows = list[tuple[str, str]]


class TextClassificationDataModule(ImageClassificationDataModule):
    """Texts and labels, tokenized once into integer tensors, batched with dynamic padding.

    The train/val split, ``samples_per_class``, ``unlabeled: rest``, ``validate_on_test``,
    ``return_indices`` and the resumable sampler are the image DataModule's, unchanged; batches
    carry ``tokens`` (``[B, L]`` ids padded with the tokenizer's pad id) instead of images.
    Teacher and student read the same ids: the models check at ``fit`` that they embed over
    this tokenizer's vocabulary.

    Args:
        tokenizer: a ``tokenizer.json``, a model folder holding one (the teacher's), or a Hub name.
        train_file, test_file: files under ``data_dir`` (``.csv``, ``.tsv``, ``.jsonl``) with a
            text and a label column; a header row names the columns of CSV/TSV files.
        text_field, label_field: the column (JSONL key) names.
        labels: the class names in label-index order; read from the training file (sorted) when omitted.
        hf_dataset: a Hugging Face ``datasets`` name read instead of the files (needs ``datasets``
            installed and the network, or its cache); its ``train`` and ``test`` splits are used.
        max_length: texts are truncated to this many tokens (special tokens included).
        data_dir, batch_size, eval_batch_size, num_workers, val_fraction, validate_on_test, seed,
        samples_per_class, unlabeled, return_indices: see :class:`ImageClassificationDataModule`.
    """

    reads_tokens = True

    def __init__(
        self,
        tokenizer: str,
        train_file: str = "train.tsv",
        test_file: str = "test.tsv",
        text_field: str = "text",
        label_field: str = "label",
        labels: list[str] | None = None,
        hf_dataset: str | None = None,
        max_length: int = 128,
        data_dir: str = "data",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        validate_on_test: bool = False,
        seed: int = 0,
        samples_per_class: int | None = None,
        unlabeled: Literal["rest"] | None = None,
        return_indices: bool = False,
    ) -> None:
        super().__init__(
            data_dir=data_dir,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            val_fraction=val_fraction,
            validate_on_test=validate_on_test,
            seed=seed,
            samples_per_class=samples_per_class,
            unlabeled=unlabeled,
            return_indices=return_indices,
        )
        if max_length < 2:
            raise ConfigError(f"data.max_length must be >= 2 tokens, got {max_length}")
        self.tokenizer_source = tokenizer
        self.files = {"train": train_file, "test": test_file}
        self.text_field, self.label_field = text_field, label_field
        self.hf_dataset = hf_dataset
        self.max_length = max_length
        self._tokenizer: TextTokenizer | None = None
        self._rows: dict[str, Rows] = {}
        self.class_names = list(labels) if labels is not None else sorted({label for _, label in self.rows("train")})

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_source)
        return self._tokenizer

    def rows(self, split: str) -> Rows:
        """``(text, label)`` pairs of ``split``, read once."""
        if split not in self._rows:
            self._rows[split] = self._read_hf(split) if self.hf_dataset else self._read_file(split)
        return self._rows[split]

    def _read_file(self, split: str) -> Rows:
        path = Path(self.data_dir) / self.files[split]
        if not path.is_file():
            raise DataError(
                f"no {split} file at {path}: set data.data_dir/data.{split}_file (or run the preparation step)"
            )
        with path.open(encoding="utf-8", newline="") as f:
            if path.suffix == ".jsonl":
                records: list[dict[str, Any]] = [json.loads(line) for line in f if line.strip()]
            elif path.suffix in (".csv", ".tsv"):
                records = list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))
            else:
                raise ConfigError(f"{path}: read .csv, .tsv or .jsonl files, got {path.suffix!r}")
        missing = {self.text_field, self.label_field} - set(records[0] if records else ())
        if missing:
            raise InvalidDataError(f"{path} has no column {sorted(missing)}: set data.text_field/data.label_field")
        return [(str(r[self.text_field]), str(r[self.label_field])) for r in records]

    def _read_hf(self, split: str) -> Rows:
        try:
            import datasets  # type: ignore[import-not-found]  # optional: only this path needs it
        except ImportError as err:
            raise ConfigError("data.hf_dataset needs the `datasets` package: pip install datasets") from err
        data = datasets.load_dataset(self.hf_dataset, split=split)
        feature = data.features[self.label_field]
        names = getattr(feature, "names", None)
        return [
            (str(r[self.text_field]), names[r[self.label_field]] if names else str(r[self.label_field])) for r in data
        ]

    def load_split(self, split: str) -> TokenizedTextDataset:  # type: ignore[override]  # the text counterpart
        rows = self.rows(split)
        index = {name: i for i, name in enumerate(self.class_names)}
        unknown = sorted({label for _, label in rows} - index.keys())
        if unknown:
            raise InvalidDataError(f"{split} labels {unknown[:5]} are not among data.labels {self.class_names}")
        ids = self.tokenizer.encode([text for text, _ in rows], self.max_length)
        labels = torch.tensor([index[label] for _, label in rows], dtype=torch.long)
        return TokenizedTextDataset.from_lists(ids, labels, self.tokenizer.pad_id)

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is not None:
            self.check_models(module)

    def check_models(self, module: torch.nn.Module) -> None:
        """Refuse a network of ``module`` that embeds over another vocabulary than this tokenizer's."""
        tok = self.tokenizer
        for network in module.modules():
            if isinstance(network, TextClassifier):
                network.text_input.check_tokenizer(network.name, tok.vocab_size, tok.pad_id, tok.fingerprint())

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Token ids need nothing on the device; a batch source (a cache) still finishes its own batches."""
        trainer = self.trainer
        if trainer is not None and (trainer.training or trainer.validating or trainer.sanity_checking):
            source = self._sources.get("train" if trainer.training else "val")
            if source is not None:
                return source.finish(batch, trainer.current_epoch)
        return batch
