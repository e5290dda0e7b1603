"""The `progressive` command: parses options and calls into the package, nothing more."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from progressive import __version__
from progressive.cli import train as cli_train
from progressive.cli import use as cli_use
from progressive.core.errors import UserError, one_line
from progressive.data.format import META_NAME
from progressive.data.reader import verify_dataset
from progressive.use.info import checkpoint_summary, dataset_summary, shard_problems
from progressive.use.plot import plot_run


class _Group(click.Group):
    """A group that turns `UserError` into a one-line message and exit status 1, and a bad
    option of a command (click's range and choice checks) into one line and exit status 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """`train` first, the main job; the rest alphabetically."""
        names = super().list_commands(ctx)
        return sorted(names, key=lambda name: (name != "train", name))

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"Error: {one_line(e)}", err=True)
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
@click.option("--verify", is_flag=True, help="Dataset: read and check every record.")
@click.option("--plot", help="Run: draw SWD, losses and energies against images shown (PNG).",
              type=click.Path(dir_okay=False, path_type=str))
def info(path: str, verify: bool, plot: str | None) -> None:
    """Summarise a dataset directory or a checkpoint (run folder or snapshot)."""
    p = Path(path)
    if p.is_dir() and (p / META_NAME).exists() or (p.is_dir() and any(p.glob("shard-*.lmdb"))):
        if plot:
            raise UserError(f"--plot draws a run's progress; {p} is a dataset")
        click.echo(dataset_summary(p))
        problems = shard_problems(p)
        if not verify and not problems:
            click.echo("  checked      shard sizes and headers (--verify reads every record)")
        if verify and not problems:
            result = verify_dataset(p)
            problems = result["problems"]
            if not problems:
                click.echo(f"  verified     {result['records']:,} records, all intact")
        for line in problems[1:20]:
            click.echo(f"damaged: {line}", err=True)
        if problems:
            first = problems[0].split("; ")[0]
            more = f" (and {len(problems) - 1} more, up to 19 listed above)" if problems[1:] else ""
            raise UserError(
                f"{first}{more}; re-create the dataset with tools/make_lmdb.py or restore the "
                "damaged shards from a copy"
            )
    elif verify:
        raise UserError(f"--verify checks datasets; {p} is not one (no {META_NAME})")
    else:
        click.echo(checkpoint_summary(p))
        if plot:
            click.echo(f"plot: {plot_run(p, plot)}")


def _register() -> None:
    for command in (*cli_train.COMMANDS, *cli_use.COMMANDS):
        main.add_command(command)


_register()
