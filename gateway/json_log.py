"""Logs as JSON lines (``--log-format json``, ``LLM_GATEWAY_LOG_FORMAT=json``), for a log
pipeline (Loki, Datadog, CloudWatch, Elasticsearch) that reads fields, not text::

    {"time":"2026-12-02T06:05:08.468Z","level":"INFO","logger":"gateway.cost",
     "message":"Cost | tenant=tenant_123 provider=openai model=gpt-4 cost=$0.000150",
     "tenantId":"tenant_123","provider":"openai","model":"gpt-4","costUsd":"0.000150",
     "requestId":"req_...","endpoint":"chat.completions"}

Every record is one line whatever it holds (a line break in a message or a traceback is
escaped), with the text line's message as ``message``. A record logged with
``extra={FIELDS: {...}}`` adds those fields (the cost line: its values as fields, and the
request id the text line has no room for); a field never replaces ``time``, ``level``,
``logger`` or ``message``.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import orjson

from gateway.runtime import SecondCachedFormatter

#: the ``extra`` key under which a record carries its fields
FIELDS = "fields"
FORMATS = ("text", "json")
LOG_FORMAT_ENV = "LLM_GATEWAY_LOG_FORMAT"
_OWN = frozenset({"time", "level", "logger", "message"})


class JsonFormatter(SecondCachedFormatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS, None)
        if isinstance(fields, dict):
            for name, value in fields.items():
                if name not in _OWN:
                    line[name] = value
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(line, default=str).decode()
        except (TypeError, orjson.JSONEncodeError):  # a lone surrogate, a key that is no string
            pass
        try:
            return json.dumps(line, default=str, skipkeys=True)
        except Exception:  # noqa: BLE001 - a field that refers to itself, a __str__ that raises: the line without it
            own = {name: line[name] for name in _OWN}
            own["fieldsError"] = "a field could not be written"
            return json.dumps(own, default=repr)


#: whether the logs are JSON: the cost line builds its fields only then (0.8 µs a call)
structured = False


def use_json(root: logging.Logger | None = None) -> None:
    """Format every handler of ``root`` (the root logger) as JSON lines."""
    global structured
    structured = True
    for handler in (root or logging.getLogger()).handlers:
        handler.setFormatter(JsonFormatter())


def say(line: str, level: int = logging.ERROR) -> None:
    """A service's one-line refusal to start (a bad configuration, a port in use): on stderr as
    it is, or as a JSON line of logger ``gateway`` when the logs are JSON (a log pipeline
    reading the service's stderr would otherwise get the one line that matters unparsed)."""
    if structured:
        logging.getLogger("gateway").log(level, "%s", line)
    else:
        print(line, file=sys.stderr, flush=True)
