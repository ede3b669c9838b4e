"""YAML as the operator's files are read: safe, and a key given twice in one mapping is an error
(PyYAML keeps the last one silently, so `priority:` written twice, or a price file's `version:`,
would be half ignored)."""

from __future__ import annotations

import re
from typing import Any

import yaml

#: how a key of an operator's file may be named in an error: a setting's name is a short
#: identifier; anything else (``sk-live-...``: an API key written as a mapping's key) may be a
#: secret, and error messages reach stderr and the logs
_SHOWN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")


def shown_key(key: object) -> str:
    """``key`` as an error message may name it: as it is when it looks like a setting's name,
    else a placeholder (a review saw API keys written as mapping keys echoed on stderr)."""
    text = str(key)
    return text if _SHOWN_KEY.fullmatch(text) else "<a key not shown: it may be a secret>"


class StrictLoader(yaml.SafeLoader):  # type: ignore[misc]
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if any(key_node.tag == "tag:yaml.org,2002:merge" for key_node, _ in node.value):
            merged: dict[Any, Any] = super().construct_mapping(node, deep=deep)
            return merged  # `<<: *defaults` then explicit keys: overriding is the point there
        seen: set[Any] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool):
                continue  # a complex key: no duplicate check (operators' files have none)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"the key {shown_key(key)!r} is given twice",
                    key_node.start_mark,
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def load(text: str, name: str | None = None) -> Any:
    """``text`` as YAML, refusing a key given twice in one mapping; ``name``: the file it came from,
    which errors name (PyYAML says ``"<unicode string>"``)."""
    loader = StrictLoader(text)
    if name is not None:
        loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
