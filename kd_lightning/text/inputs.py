"""How a text model reads its input: token ids of one tokenizer, with a declared pad id."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kd_lightning.errors import ConfigError

# A few tokens: enough for every layer to show its width.
PROBE_LENGTH = 8


@dataclass(frozen=True)
class TextInputConfig:
    """The text counterpart of :class:`~kd_lightning.models.classifier.InputConfig`.

    A text model takes one ``[B, L]`` integer tensor and derives its attention mask as
    ``ids != pad_id``, so every module that calls ``network(batch.inputs)`` serves text unchanged.

    Args:
        pad_id: the id that pads a batch's shorter texts.
        max_length: the longest sequence the model reads (position embeddings, export).
        vocab_size: rows of the model's token embedding.
        vocab: a fingerprint of the tokenizer's vocabulary (:meth:`TextTokenizer.fingerprint`),
            when the model knows its tokenizer; data tokenized otherwise is refused.
    """

    pad_id: int = 0
    max_length: int = 128
    vocab_size: int = 30522
    vocab: str | None = None

    def check_tokenizer(self, name: str, vocab_size: int, pad_id: int, vocab: str) -> None:
        """Refuse a tokenizer other than the one this model embeds over (one line, cause and fix)."""
        if (self.vocab is not None and self.vocab != vocab) or vocab_size > self.vocab_size or pad_id != self.pad_id:
            raise ConfigError(
                f"model {name!r} reads ids of another tokenizer than the data's (vocabulary {self.vocab} of "
                f"{self.vocab_size}, pad {self.pad_id}; data: {vocab} of {vocab_size}, pad {pad_id}): teacher, student "
                "and data must share one tokenizer (two-tokenizer distillation is not supported yet)"
            )

    def probe_batch(self, batch_size: int = 2) -> torch.Tensor:
        """Random ``[B, L]`` token ids, none of them padding, for probing layer shapes.

        Short (:data:`PROBE_LENGTH` tokens at most): a layer's width does not depend on the
        length, and a short probe keeps building a distiller cheap.
        """
        ids = torch.randint(0, self.vocab_size, (batch_size, min(PROBE_LENGTH, self.max_length)))
        return ids.masked_fill(ids == self.pad_id, (self.pad_id + 1) % self.vocab_size)

    def token_mask(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """``[B, L]`` 1 at the real tokens of ``inputs``, 0 at padding (what losses over tokens average over).

        Cut to ``max_length`` as :class:`TokenIds` cuts the ids, so it lines up with the model's per-token states.
        """
        return attention_mask(inputs[:, : self.max_length], self.pad_id)


# What a registered text backbone declares before it is built (the build reads the tokenizer's real values).
TEXT_INPUT = TextInputConfig()


class TokenIds(nn.Module):
    """The input adapter of a text model: checks that token ids, not images, arrive."""

    def __init__(self, config: TextInputConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2 or ids.is_floating_point():
            raise ValueError(
                f"a text model takes [B, L] integer token ids, got a {ids.dtype} tensor {tuple(ids.shape)}"
            )
        return ids[:, : self.config.max_length]


def attention_mask(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """``[B, L]`` 1 for real tokens, 0 for padding."""
    return (ids != pad_id).long()
