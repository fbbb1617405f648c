"""Files a hostile or careless user might hand kd_lightning: damaged, foreign, or crafted to run code."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from kd_lightning.cli import main


class Payload:
    """Unpickling this calls ``os.mkdir(marker)``: a stand-in for any code an attacker wants run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def malicious_pickle(path: Path, marker: Path, content: object = None) -> Path:
    """A pickle that runs ``os.mkdir(marker)`` when loaded unsafely (checked: it really does)."""
    path.write_bytes(pickle.dumps({"data": content, "payload": Payload(marker)}, protocol=2))
    pickle.loads(path.read_bytes())
    assert marker.is_dir()
    marker.rmdir()
    return path


def malicious_torch_file(path: Path, marker: Path, content: dict) -> Path:
    """A ``torch.save`` file with a payload next to real ``content`` (checked: an unsafe load runs it)."""
    torch.save({**content, "payload": Payload(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.is_dir()
    marker.rmdir()
    return path


def cifar_folder(root: Path, batches: dict[str, object] | None = None) -> Path:
    """A CIFAR-10 ``cifar-10-batches-py`` folder of tiny valid batches; ``batches`` replaces files by name."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(20)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    for name, content in (batches or {}).items():
        path = folder / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_bytes(pickle.dumps(content))
    return root


def mnist_folder(root: Path, images: bytes | None = None, labels: bytes | None = None) -> Path:
    """MNIST's four IDX files (gzipped) of 12 tiny images; ``images``/``labels`` replace the training files."""
    root.mkdir(parents=True, exist_ok=True)

    def idx(array: np.ndarray) -> bytes:
        header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
        return header + array.astype(np.uint8).tobytes()

    for prefix in ("train", "t10k"):
        pixels = np.random.default_rng(0).integers(0, 256, (12, 28, 28))
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(pixels)))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx(np.arange(12) % 10)))
    if images is not None:
        (root / "train-images-idx3-ubyte.gz").write_bytes(images)
    if labels is not None:
        (root / "train-labels-idx1-ubyte.gz").write_bytes(labels)
    return root


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_yaml(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content))
    return path


def user_error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI in-process; assert exit status 2, no traceback, exactly one ``error:`` line; return it."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]
