"""Loading one Hugging Face tokenizer for data and models alike, offline."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_lightning.errors import ConfigError

PAD_TOKENS = ("[PAD]", "<pad>", "<PAD>")


@dataclass
class TextTokenizer:
    """A fast ``tokenizers.Tokenizer`` with what kd_lightning needs from it: ids, pad id, vocabulary."""

    tokenizer: Any
    name: str

    @property
    def pad_id(self) -> int:
        padding = self.tokenizer.padding
        if padding is not None:
            return int(padding["pad_id"])
        for token in PAD_TOKENS:
            found = self.tokenizer.token_to_id(token)
            if found is not None:
                return int(found)
        raise ConfigError(f"tokenizer {self.name!r} has no padding token ({', '.join(PAD_TOKENS)}): add one")

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def fingerprint(self) -> str:
        """A short hash of the vocabulary: two tokenizers agree on ids exactly when it matches."""
        vocab = sorted(self.tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
        return hashlib.sha256(repr(vocab).encode()).hexdigest()[:16]

    def encode(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Token ids of each text, special tokens included, truncated to ``max_length``; no padding."""
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        return [encoding.ids for encoding in self.tokenizer.encode_batch(texts)]


def load_tokenizer(source: str) -> TextTokenizer:
    """A tokenizer from a ``tokenizer.json`` file, a model folder holding one, or a Hub name.

    A local file or folder is read with ``tokenizers`` alone; a Hub name goes through
    ``transformers`` (which needs the network, or a filled cache with ``HF_HUB_OFFLINE=1``).
    """
    from tokenizers import Tokenizer

    path = Path(source)
    file = path / "tokenizer.json" if path.is_dir() else path
    if file.is_file():
        return TextTokenizer(Tokenizer.from_file(str(file)), source)
    if path.is_dir() or source.startswith((".", "/")) or path.suffix:
        raise ConfigError(f"no tokenizer.json at {source!r}: point to a model folder that holds one, or to the file")
    from transformers import AutoTokenizer

    try:
        hub = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise ConfigError(
            f"cannot load tokenizer {source!r} ({str(err).splitlines()[0]}): check the name or path"
        ) from err
    if not getattr(hub, "is_fast", False):
        raise ConfigError(f"tokenizer {source!r} has no fast (tokenizers) version; kd_lightning needs one")
    return TextTokenizer(hub.backend_tokenizer, source)
