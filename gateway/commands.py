"""Operator sub-commands, each owned by the package it belongs to.

Every module listed here has ``register(subparsers)``, which adds its parser(s) and sets
``run=<callable(args, settings) -> int>`` as the parser default.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from gateway.settings import Settings

COMMAND_MODULES = (
    "consumers.consume_command",
    "consumers.replay_command",
    "consumers.export_command",
    "analytics.costs_command",
    "analytics.sql_command",
    "analytics.parquet_command",
)


def register_commands(sub: Any) -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a command not built yet
        module.register(sub)


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    run = getattr(args, "run", None)
    if run is None:
        raise SystemExit(f"unknown command {args.command!r}")
    return int(run(args, settings))
