"""The lock that keeps one gateway process on one Kafka spool file (no Kafka client needed)."""

from __future__ import annotations

import os
from pathlib import Path


def lock_file(path: Path, held: str) -> int | None:
    """An exclusive lock on ``path`` for as long as the descriptor it returns is open (None where
    the system has no ``flock``); ``OSError(held)`` when another process holds it."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError(held) from None
    return fd


def lock_spool(path: Path) -> int | None:
    """An exclusive lock on ``<spool>.lock`` for as long as this process uses the spool (its
    descriptor; closing it releases the lock, and so does the process's end). Two gateways on
    one spool (one data dir, no instance ids) both forwarded it: each sent the other's records,
    and one stopped saying it left records it had not (an upgrade review). None where the system
    has no ``flock``."""
    return lock_file(
        Path(f"{path}.lock"),
        f"another gateway process uses the usage event spool {path}: give each gateway its own "
        "LLM_GATEWAY_DATA_DIR or LLM_GATEWAY_INSTANCE_ID",
    )
