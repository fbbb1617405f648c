"""LitData, an optional extra (``kd-lightning[streaming]``): imported in one place, refused in one line when missing."""

from kd_lightning.errors import ConfigError

try:
    from litdata import StreamingDataLoader, StreamingDataset
    from litdata.streaming.writer import BinaryWriter
except ImportError as err:
    raise ConfigError("streaming data sets need LitData: pip install 'kd-lightning[streaming]'") from err

__all__ = ["BinaryWriter", "StreamingDataLoader", "StreamingDataset"]
