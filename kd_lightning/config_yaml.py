"""YAML as kd_lightning reads it: PyYAML's safe loader, with aliases bounded.

An alias is a reference, so a 1 KB file of nested aliases ("billion laughs") describes a
document of 10^7 strings or more; PyYAML builds it as shared objects, but everything that then
walks the config (jsonargparse's parsing and validation, a dump) expands it, and never finishes.
The composed node graph is measured first, counting every alias as the size of what it stands
for, and a document larger than :data:`MAX_NODES` is refused before it is built.
"""

from __future__ import annotations

from typing import Any

import yaml
from jsonargparse import set_loader
from jsonargparse._loaders_dumpers import yaml_load

from kd_lightning.errors import ConfigError

# Far above any real config (the largest shipped one has a few hundred nodes).
MAX_NODES = 100_000
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def check_expanded_size(text: str) -> None:
    """Refuse a YAML document whose aliases expand to more than :data:`MAX_NODES` nodes."""
    if "*" not in text:  # no alias: the size is the text's own
        return
    for root in yaml.compose_all(text, Loader=_Loader):
        if root is not None and expanded_size(root) > MAX_NODES:
            raise ConfigError(
                f"a YAML document expands to more than {MAX_NODES:,} values through its aliases (*name): "
                "refused, as it would never finish loading; write the values out or use fewer nested aliases"
            )


def expanded_size(root: yaml.Node) -> int:
    """Nodes of the document once every alias is replaced by what it names (each shared node counted once)."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # iterative, post-order: a deeply nested document must not exhaust Python's stack
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if not children_done:
            stack.append((node, True))
            stack += [(child, False) for child in children if id(child) not in sizes]
            continue
        sizes[id(node)] = min(1 + sum(sizes[id(child)] for child in children), MAX_NODES + 1)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def bounded_yaml_load(stream: str) -> Any:
    """jsonargparse's YAML loader behind :func:`check_expanded_size` (for ``--config`` files and values)."""
    if isinstance(stream, str):
        check_expanded_size(stream)
    return yaml_load(stream)


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with the alias bound."""
    check_expanded_size(text)
    return yaml.safe_load(text)


def use_bounded_yaml() -> None:
    """Make every jsonargparse parser (LightningCLI's, the task commands') read YAML through the bound."""
    set_loader("yaml", bounded_yaml_load, exceptions=(yaml.YAMLError,))
