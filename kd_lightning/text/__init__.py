"""Text classification pieces: tokenizers and token-id inputs."""

from kd_lightning.text.inputs import TextInputConfig
from kd_lightning.text.tokenizer import TextTokenizer, load_tokenizer

__all__ = ["TextInputConfig", "TextTokenizer", "load_tokenizer"]
