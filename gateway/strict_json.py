"""JSON as the operator's settings are read: a key given twice in one object is an error
(``json`` keeps the last one silently, as PyYAML does: a budget's ``{"team": "a", "team": "b"}``
became ``team=b``, a price file's second ``input_per_1k`` its price). See ``strict_yaml``."""

from __future__ import annotations

import json
from typing import Any


class DuplicateKey(ValueError):
    """A key given twice in one object."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json``'s ``object_pairs_hook`` refusing a key given twice."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise DuplicateKey(f"the key {key[:80]!r} is given twice in one object")
        found[key] = value
    return found


def loads(text: str, **options: Any) -> Any:
    """``text`` as JSON (``json.loads`` with ``options``), refusing a key given twice."""
    return json.loads(text, object_pairs_hook=_no_duplicates, **options)
