"""What JSON logs (``gateway/json_log.py``) would write of captured records."""

from __future__ import annotations

import json

import pytest

from gateway.json_log import JsonFormatter

_OWN = ("time", "level", "logger", "message")


def fields(caplog: pytest.LogCaptureFixture, logger: str) -> list[dict[str, object]]:
    """The fields of each record of ``logger``, as a JSON line holds them beside its own."""
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == logger]
    return [{k: v for k, v in line.items() if k not in _OWN} for line in lines]
