"""Small recurrent and convolutional text students over their teacher's vocabulary."""

from __future__ import annotations

import torch
from torch import nn

from kd_lightning.models._registry import NetworkParts, register_backbone
from kd_lightning.text.inputs import TEXT_INPUT, TextInputConfig, attention_mask
from kd_lightning.text.tokenizer import load_tokenizer


def vocabulary(tokenizer: str | None, vocab_size: int, pad_id: int, max_length: int) -> TextInputConfig:
    """The input config of a student embedding over ``tokenizer``'s vocabulary (or the given size and pad id)."""
    if tokenizer is None:
        return TextInputConfig(pad_id=pad_id, max_length=max_length, vocab_size=vocab_size)
    tok = load_tokenizer(tokenizer)
    return TextInputConfig(pad_id=tok.pad_id, max_length=max_length, vocab_size=tok.vocab_size, vocab=tok.fingerprint())


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each row's first ``lengths`` positions of ``[B, L, D]``, padding left in place (its own inverse)."""
    position = torch.arange(x.shape[1], device=x.device)
    index = torch.where(position < lengths[:, None], lengths[:, None] - 1 - position, position)
    return x.gather(1, index[:, :, None].expand_as(x))


class BiLSTMTrunk(nn.Module):
    """Embedding → bidirectional LSTM over each text's real tokens → max over time.

    The backward direction reads each text reversed within its own length, so padding never
    enters the recurrence of a real token: a text gets the same features alone or padded in a
    batch. Written with a gather instead of packed sequences, which ``torch.export`` (and so
    ONNX export with a dynamic sequence axis) cannot trace.
    """

    def __init__(self, vocab_size: int, pad_id: int, embed_dim: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        widths = [embed_dim] + [2 * hidden] * (layers - 1)
        self.forward_lstms = nn.ModuleList(nn.LSTM(w, hidden, batch_first=True) for w in widths)
        self.backward_lstms = nn.ModuleList(nn.LSTM(w, hidden, batch_first=True) for w in widths)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = attention_mask(ids, self.pad_id)
        lengths = mask.sum(1)
        x = self.dropout(self.embed(ids))
        for index, (forward, backward) in enumerate(zip(self.forward_lstms, self.backward_lstms, strict=True)):
            if index:
                x = self.dropout(x)
            reverse = reverse_within_length(backward(reverse_within_length(x, lengths))[0], lengths)
            x = torch.cat([forward(x)[0], reverse], dim=-1)
        x = x.masked_fill(mask[:, :, None] == 0, float("-inf"))
        return self.dropout(x.amax(dim=1))


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


@register_backbone("bilstm", input_config=TEXT_INPUT)
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
) -> NetworkParts:
    """Bidirectional LSTM over the teacher's vocabulary (``tokenizer``: the teacher's folder)."""
    if pretrained:
        raise ValueError("bilstm has no pretrained weights; train it or pass weights_path")
    text = vocabulary(tokenizer, vocab_size, pad_id, max_length)
    trunk = BiLSTMTrunk(text.vocab_size, text.pad_id, embed_dim, hidden, layers, dropout)
    return NetworkParts(trunk, 2 * hidden, input_config=text, stages=tuple(f"forward_lstms.{i}" for i in range(layers)))


@register_backbone("textcnn", input_config=TEXT_INPUT)
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
) -> NetworkParts:
    """Kim's TextCNN over the teacher's vocabulary (``tokenizer``: the teacher's folder)."""
    if pretrained:
        raise ValueError("textcnn has no pretrained weights; train it or pass weights_path")
    text = vocabulary(tokenizer, vocab_size, pad_id, max_length)
    trunk = TextCNNTrunk(text.vocab_size, text.pad_id, embed_dim, channels, tuple(kernels), dropout)
    return NetworkParts(trunk, channels * len(kernels), input_config=text, stages=("embed",))
