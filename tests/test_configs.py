"""Every shipped YAML config parses and instantiates, so no config can rot silently."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from kd_lightning.cli import lightning_main
from kd_lightning.models import ModelSpec
from tests._extras import require_extra

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# The ImageNet recipes ask for 8 GPUs and a prepared data set: tests/test_imagenet_configs.py runs them on a
# synthetic folder instead; the text recipes read a prepared teacher folder: tests/test_text_configs.py.
ON_PREPARED_DATA = {"imagenet", "trec", "rotten_tomatoes"}
ALL_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if not ON_PREPARED_DATA & set(p.relative_to(CONFIGS).parts))
# Fragments (a logger, a scaling strategy) are used as a second --config on top of a full one.
BASE_CONFIG = CONFIGS / "digits" / "student_scratch.yaml"


def _num_classes(data: dict[str, Any]) -> int:
    module_name, _, class_name = data["class_path"].rpartition(".")
    return len(getattr(importlib.import_module(module_name), class_name).class_names)


def _specs_with_weights(init_args: dict[str, Any]) -> list[dict[str, Any]]:
    """Every spec that names a weights file, a list of several teachers included."""
    specs = [s for v in init_args.values() for s in (v if isinstance(v, list) else [v])]
    return [s for s in specs if isinstance(s, dict) and s.get("weights_path")]


def _write_stand_in_weights(config: dict[str, Any]) -> None:
    """Teachers and pretrained backbones named by path get random weights of the right shape."""
    num_classes = _num_classes(config["data"])
    for spec in _specs_with_weights(config["model"].get("init_args", {})):
        path = Path(spec["weights_path"])
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            shape_options = {k: v for k, v in spec.items() if k not in ("weights_path", "pretrained")}
            model = ModelSpec(**shape_options).build(num_classes)
            torch.save(model.state_dict(), path)


def test_configs_exist() -> None:
    assert (CONFIGS / "digits" / "teacher.yaml") in ALL_CONFIGS


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_parses_and_instantiates(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    if "efficientnet_lite0" in path.read_text():
        require_extra("efficientnet-lite0")
    config = yaml.safe_load(path.read_text())
    args = ["--config", str(path)]
    if "model" not in config:
        args = ["--config", str(BASE_CONFIG), *args]
        config = {**yaml.safe_load(BASE_CONFIG.read_text()), **config}
    _write_stand_in_weights(config)
    cli = lightning_main(args, run=False)
    assert cli.model.num_classes == cli.datamodule.num_classes
