"""Hugging Face transformer encoders as kd_lightning backbones: ``hf/<folder or Hub name>``,
a small BERT, and a DistilBERT-style student cut from its teacher's layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from kd_lightning.errors import ConfigError
from kd_lightning.models._registry import NetworkParts, register_backbone
from kd_lightning.text.inputs import TEXT_INPUT, TextInputConfig, attention_mask
from kd_lightning.text.tokenizer import load_tokenizer

Pooling = Literal["mean", "cls"]


class EncoderTrunk(nn.Module):
    """A transformer encoder pooled to one vector per text, its attention mask derived from the ids.

    ``mean`` averages the real tokens' last hidden states (how sentence encoders such as
    all-MiniLM-L6-v2 were trained); ``cls`` takes the first token's (BERT's classification token).
    """

    def __init__(self, model: nn.Module, pad_id: int, pooling: Pooling = "mean") -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ConfigError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.model = model
        self.pad_id = pad_id
        self.pooling = pooling

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = attention_mask(ids, self.pad_id)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def encoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The name and list of an encoder's transformer blocks (``encoder.layer`` in BERT)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layer", "layers"):
            return name, module
    raise ConfigError(f"{type(model).__name__} has no list of transformer layers to tap or cut")


def _backbone(model: Any, pad_id: int, pooling: Pooling, max_length: int, vocab: str | None) -> NetworkParts:
    trunk = EncoderTrunk(model, pad_id, pooling)
    name, layers = encoder_layers(model)
    config = model.config
    max_length = min(max_length, getattr(config, "max_position_embeddings", max_length))
    text = TextInputConfig(pad_id=pad_id, max_length=max_length, vocab_size=config.vocab_size, vocab=vocab)
    stages = tuple(f"model.{name}.{i}" for i in range(len(layers)))
    return NetworkParts(trunk, config.hidden_size, input_config=text, stages=stages)


def _vocabulary(source: str) -> str | None:
    """The fingerprint of the tokenizer shipped beside a model, if there is one to read offline."""
    path = Path(source)
    if not (path / "tokenizer.json").is_file():
        return None
    return load_tokenizer(source).fingerprint()


def load_encoder(source: str, pretrained: bool | str) -> Any:
    """``AutoModel`` from a local folder (never the network) or a Hub name; random weights unless ``pretrained``.

    Returned in train mode: ``from_pretrained`` hands it out in eval mode, and Lightning keeps the
    mode a module starts ``fit`` in, which would silently switch dropout off while fine-tuning.
    """
    from transformers import AutoConfig, AutoModel

    local = Path(source).is_dir()
    try:
        if pretrained:
            model = AutoModel.from_pretrained(source, local_files_only=local)
        else:
            model = AutoModel.from_config(AutoConfig.from_pretrained(source, local_files_only=local))
    except OSError as err:
        raise ConfigError(f"cannot load encoder {source!r} ({str(err).splitlines()[0]}): check the path") from err
    if getattr(model, "pooler", None) is not None:
        # The trunk pools the hidden states itself; an unused pooler would only add weights to checkpoints.
        model.pooler = None
    return model.train()


def build_hf(
    source: str, pretrained: bool | str = False, pooling: Pooling = "mean", max_length: int = 128
) -> NetworkParts:
    """Any Hugging Face encoder by local folder or Hub name, pooled for classification."""
    model = load_encoder(source, pretrained)
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    return _backbone(model, pad_id, pooling, max_length, _vocabulary(source))


@register_backbone("distil_hf", input_config=TEXT_INPUT)
def distil_hf(
    pretrained: bool | str = False,
    source: str = "",
    keep_layers: list[int] | None = None,
    pooling: Pooling = "mean",
    max_length: int = 128,
) -> NetworkParts:
    """A DistilBERT-style student: the teacher's encoder with only every other layer kept.

    Sanh et al. (2019) initialise DistilBERT from BERT by taking one layer out of two, which
    starts the student far closer to its teacher than random weights. ``keep_layers`` picks
    other layers (e.g. ``[0, 5]``); the embeddings are the teacher's too.
    """
    if not source:
        raise ConfigError("distil_hf needs kwargs.source: the teacher's model folder or Hub name")
    model = load_encoder(source, pretrained)
    _, layers = encoder_layers(model)
    keep = list(range(0, len(layers), 2)) if keep_layers is None else list(keep_layers)
    if not keep or any(not 0 <= i < len(layers) for i in keep):
        raise ConfigError(f"keep_layers {keep_layers} must name layers of the {len(layers)}-layer teacher")
    kept = nn.ModuleList([layers[i] for i in keep])
    layers.__init__(kept)  # type: ignore[misc]  # refill in place, so the encoder keeps its reference
    model.config.num_hidden_layers = len(keep)
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    return _backbone(model, pad_id, pooling, max_length, _vocabulary(source))


@register_backbone("small_bert", input_config=TEXT_INPUT)
def small_bert(
    pretrained: bool | str = False,
    tokenizer: str | None = None,
    vocab_size: int = 30522,
    pad_id: int = 0,
    layers: int = 2,
    hidden: int = 128,
    heads: int = 2,
    max_length: int = 128,
    pooling: Pooling = "mean",
) -> NetworkParts:
    """A randomly initialised BERT of ``layers`` × ``hidden`` (intermediate 4 × hidden) over a tokenizer's vocab."""
    if pretrained:
        raise ValueError("small_bert has no pretrained weights; use hf/<folder> or distil_hf")
    from transformers import BertConfig, BertModel

    vocab = None
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
        vocab_size, pad_id, vocab = tok.vocab_size, tok.pad_id, tok.fingerprint()
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=max_length,
        pad_token_id=pad_id,
    )
    return _backbone(BertModel(config, add_pooling_layer=False), pad_id, pooling, max_length, vocab)
