"""Prompt-cache breakpoints (``cache_control``), as clients written for Anthropic send them in
OpenAI's format: on a content part, on a message, or on a tool.

``{"type": "ephemeral"}`` marks the end of a prefix for Anthropic to cache (5 minutes), with
``"ttl": "1h"`` for an hour (cache writes at 2x the input rate instead of 1.25x, reads at 0.1x
either way). Only Anthropic takes them; the other vendors cache prompts by themselves, so a mark
asks nothing of them and they get the request as without it (a hint never changes an answer).
What Anthropic would refuse without falling back is refused here first, with a 400: a mark of
another shape, more than 4 of them, or an hour's mark after a 5 minutes' one (Anthropic reads
tools, then system messages, then the conversation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gateway.errors import InvalidRequest

if TYPE_CHECKING:
    from gateway.tool_calls import Tool
    from gateway.types import Message

#: Anthropic's limit of blocks with ``cache_control`` in one request
MAX_MARKS = 4
TTLS = ("5m", "1h")
#: a message's mark on its whole content: its last block
WHOLE = -1


def parse_mark(value: Any, param: str) -> str | None:
    """The ttl of a ``cache_control`` value (None: the default 5 minutes, as sent)."""
    if not isinstance(value, dict) or value.get("type") != "ephemeral" or set(value) - {"type", "ttl"}:
        raise InvalidRequest(
            f'\'{param}\' must be {{"type": "ephemeral"}}, with an optional "ttl" of "5m" or "1h"',
            param=param,
            code="invalid_value",
        )
    ttl = value.get("ttl")
    if ttl is not None and ttl not in TTLS:
        raise InvalidRequest(f'\'{param}.ttl\' must be "5m" or "1h", got {ttl!r}', param=f"{param}.ttl")
    return ttl


def check_marks(tools: Sequence[Tool], messages: Sequence[Message]) -> None:
    """Anthropic's rules over a request's marks, in its order: tools, system messages, the
    conversation."""
    system = ("system", "developer")
    seen = [
        *(ttl for tool in tools for ttl in tool.cache),
        *(ttl for m in messages if m.role in system for _, ttl in m.cache),
        *(ttl for m in messages if m.role not in system for _, ttl in m.cache),
    ]
    if len(seen) > MAX_MARKS:
        raise InvalidRequest(
            f"At most {MAX_MARKS} 'cache_control' breakpoints may be given (Anthropic's limit), got {len(seen)}",
            param="messages",
        )
    short = False
    for ttl in seen:
        if ttl == "1h" and short:
            raise InvalidRequest(
                "A 'cache_control' with ttl \"1h\" must come before those of 5 minutes (in the order tools, "
                "system messages, then the conversation: Anthropic's rule)",
                param="messages",
            )
        short = short or ttl != "1h"


def control(ttl: str | None) -> dict[str, str]:
    """Anthropic's ``cache_control`` for a mark."""
    return {"type": "ephemeral"} if ttl is None else {"type": "ephemeral", "ttl": ttl}
