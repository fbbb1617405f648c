"""Small recurrent and convolutional text students over their teacher's vocabulary."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from kd_lightning.models._registry import Backbone, register_backbone
from kd_lightning.text.inputs import TextInputConfig, attention_mask
from kd_lightning.text.tokenizer import load_tokenizer


def vocabulary(tokenizer: str | None, vocab_size: int, pad_id: int, max_length: int) -> TextInputConfig:
    """The input config of a student embedding over ``tokenizer``'s vocabulary (or the given size and pad id)."""
    if tokenizer is None:
        return TextInputConfig(pad_id=pad_id, max_length=max_length, vocab_size=vocab_size)
    tok = load_tokenizer(tokenizer)
    return TextInputConfig(pad_id=tok.pad_id, max_length=max_length, vocab_size=tok.vocab_size, vocab=tok.fingerprint())


class BiLSTMTrunk(nn.Module):
    """Embedding → bidirectional LSTM over each text's real tokens → max over time.

    The sequences are packed, so padding never enters the recurrence: a text gets the same
    features alone or in a batch padded to a longer one.
    """

    def __init__(self, vocab_size: int, pad_id: int, embed_dim: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.lstm = nn.LSTM(
            embed_dim,
            hidden,
            num_layers=layers,
            bidirectional=True,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = attention_mask(ids, self.pad_id)
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(self.dropout(self.embed(ids)), lengths, batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=ids.shape[1])
        out = out.masked_fill(mask[:, :, None] == 0, float("-inf"))
        return self.dropout(out.amax(dim=1))


class TextCNNTrunk(nn.Module):
    """Embedding → 1-d convolutions of several widths → max over the real positions (Kim, 2014)."""

    def __init__(
        self, vocab_size: int, pad_id: int, embed_dim: int, channels: int, kernels: tuple[int, ...], dropout: float
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, channels, k, padding=k // 2) for k in kernels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = attention_mask(ids, self.pad_id)[:, None, :] == 0
        x = self.embed(ids).transpose(1, 2)
        pooled = [
            torch.relu(conv(x))[..., : ids.shape[1]].masked_fill(mask, float("-inf")).amax(-1) for conv in self.convs
        ]
        return self.dropout(torch.cat(pooled, dim=1))


@register_backbone("bilstm")
def bilstm(
    pretrained: bool | str = False,
    tokenizer: str | None = None,
    vocab_size: int = 30522,
    pad_id: int = 0,
    embed_dim: int = 128,
    hidden: int = 128,
    layers: int = 1,
    dropout: float = 0.2,
    max_length: int = 128,
) -> Backbone:
    """Bidirectional LSTM over the teacher's vocabulary (``tokenizer``: the teacher's folder)."""
    if pretrained:
        raise ValueError("bilstm has no pretrained weights; train it or pass weights_path")
    text = vocabulary(tokenizer, vocab_size, pad_id, max_length)
    trunk = BiLSTMTrunk(text.vocab_size, text.pad_id, embed_dim, hidden, layers, dropout)
    return Backbone(trunk, 2 * hidden, input_config=text, stages=("lstm",))


@register_backbone("textcnn")
def textcnn(
    pretrained: bool | str = False,
    tokenizer: str | None = None,
    vocab_size: int = 30522,
    pad_id: int = 0,
    embed_dim: int = 128,
    channels: int = 100,
    kernels: tuple[int, ...] = (3, 4, 5),
    dropout: float = 0.2,
    max_length: int = 128,
) -> Backbone:
    """Kim's TextCNN over the teacher's vocabulary (``tokenizer``: the teacher's folder)."""
    if pretrained:
        raise ValueError("textcnn has no pretrained weights; train it or pass weights_path")
    text = vocabulary(tokenizer, vocab_size, pad_id, max_length)
    trunk = TextCNNTrunk(text.vocab_size, text.pad_id, embed_dim, channels, tuple(kernels), dropout)
    return Backbone(trunk, channels * len(kernels), input_config=text, stages=("embed",))
