"""Text classification pieces: tokenizers, token-id inputs and the transformer feature losses."""

from kd_lightning.text.inputs import TextInputConfig
from kd_lightning.text.tokenizer import TextTokenizer, load_tokenizer

__all__ = ["TextInputConfig", "TextTokenizer", "load_tokenizer"]
