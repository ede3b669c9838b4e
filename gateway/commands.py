"""Operator commands beyond serve/simulate (costs, consume, replay, sql) plug in here."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.settings import Settings


def register_commands(sub: Any) -> None:
    """Add the operator sub-commands to the CLI parser."""
    return None


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    raise SystemExit(f"unknown command {args.command!r}")
