"""The ``cordon`` command. Each area registers its sub-commands from :mod:`commands`."""

from __future__ import annotations

import typer

from commands import register

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Cordon: dispatch guidance for a CSU.")
register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
