"""The `progressive` command: parses options and calls into the package, nothing more."""

from __future__ import annotations

import sys

import click

from progressive import __version__
from progressive.errors import UserError


class _Group(click.Group):
    """A group that turns `UserError` into a one-line message and exit status 1, and a bad
    option of a command (click's range and choice checks) into one line and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)
        except click.UsageError as e:
            click.echo(f"Error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.version_option(__version__, prog_name="progressive")
def main() -> None:
    """Train and use generator, energy and inference models with the divergence triangle."""


@main.command()
@click.argument("path", type=click.Path(path_type=str))
def info(path: str) -> None:
    """Summarise a dataset directory or a checkpoint (run folder or snapshot)."""
    from pathlib import Path

    from progressive.dataset_format import META_NAME

    p = Path(path)
    if p.is_dir() and (p / META_NAME).exists() or (p.is_dir() and any(p.glob("shard-*.lmdb"))):
        from progressive.info import dataset_summary

        click.echo(dataset_summary(p))
    else:
        from progressive.info import checkpoint_summary

        click.echo(checkpoint_summary(p))


def _register() -> None:
    from progressive import cli_train, cli_use

    for command in (*cli_train.COMMANDS, *cli_use.COMMANDS):
        main.add_command(command)


_register()
