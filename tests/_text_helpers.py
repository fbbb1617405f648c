"""Tiny offline text fixtures: a WordPiece tokenizer, a random 4-layer BERT folder, toy labelled files."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

WORDS = [
    "what", "who", "where", "when", "how", "many", "is", "the", "a", "of", "city", "river", "person",
    "year", "born", "capital", "long", "good", "bad", "film", "great", "awful", "movie", "plot", "?",
]  # fmt: skip
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Two classes a small model separates from one word: location questions vs person questions.
TEXTS = {
    "LOC": ["where is the city", "where is the river", "what is the capital city", "where is the capital"],
    "HUM": ["who is the person", "who was born", "who is the great person", "who is a good person"],
}


def write_tokenizer(path: Path) -> Path:
    """A lower-casing WordPiece tokenizer over :data:`WORDS` that adds ``[CLS]``/``[SEP]``, saved as JSON."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path / "tokenizer.json"))
    return path


def write_tiny_bert(path: Path, layers: int = 4, seed: int = 0, hidden: int = 16, heads: int = 2) -> Path:
    """A randomly initialised BERT over the tiny vocabulary, saved as a Hugging Face folder."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(SPECIALS) + len(WORDS),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=32,
        max_position_embeddings=32,
        pad_token_id=0,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    return write_tokenizer(path)


def write_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def toy_rows(repeat: int = 3) -> list[tuple[str, str]]:
    return [(text, label) for _ in range(repeat) for label, texts in TEXTS.items() for text in texts]
