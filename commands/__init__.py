"""Sub-commands of ``cordon``, one module per area; each module has ``register(app)``."""

from __future__ import annotations

import importlib

import typer

_AREAS = ("commands.map", "commands.sim", "commands.serve", "commands.audit")


def register(app: typer.Typer) -> None:
    """Add every area's sub-commands to ``app``."""
    for name in _AREAS:
        importlib.import_module(name).register(app)
