"""Exponential backoff that stays finite however long an outage lasts."""

from __future__ import annotations

#: 2**60 times any sane initial wait is past every cap; beyond it the float would overflow
_MAX_DOUBLINGS = 60


def doubling(initial: float, attempt: int, cap: float) -> float:
    """``initial * 2**(attempt - 1)``, at most ``cap``.

    ``attempt`` counts from 1. A plain ``initial * 2 ** (attempt - 1)`` raises OverflowError
    from attempt 1025 on: a projector paused on a database down for hours (1,024 retries at
    30 s is 8.5 hours) would crash instead of waiting.
    """
    return min(cap, initial * 2.0 ** min(max(attempt - 1, 0), _MAX_DOUBLINGS))
