"""Text from outside (a client's tenant id, a model name an upstream answered with) made safe for
the two places where a line break would be an injection: a response header and a log line.

Both keep an ordinary value as it is (one C-level check), so the documented formats stay:
``x-llm-model: gpt-4o``, ``Cost | tenant=tenant_123 provider=openai model=gpt-4 cost=$0.000150``.
"""

from __future__ import annotations

import json

#: longest header value the gateway sends from text it did not write itself
MAX_HEADER_TEXT = 256


def header_value(text: str) -> str:
    """``text`` for a response header: every non-printable character (line breaks, NUL, ...)
    replaced by ``?``, at most :data:`MAX_HEADER_TEXT` characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= MAX_HEADER_TEXT else text[:MAX_HEADER_TEXT]


def log_value(text: str) -> str:
    """``text`` as one ``key=value`` field of a log line: as it is when it is one printable word
    without ``=`` or ``"``, else JSON-quoted (``tenant="acme corp"``, ``model="a\\nb"``), so no
    value can end the line or pass for another field."""
    if text and text.isprintable() and " " not in text and "=" not in text and '"' not in text:
        return text
    return json.dumps(text, ensure_ascii=False) if text.isprintable() else json.dumps(text)
