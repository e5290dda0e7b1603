"""The `progressive train` command.

Configuration, lowest precedence first: the preset (or the sizing rule), --config FILE, the
options below, then --set section.field=value (any field; docs/configuration.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import yaml

from progressive.config import presets
from progressive.config.keys import option_key, parse_value, where_now
from progressive.config.migrate import RETIRED, migrate
from progressive.config.sections import PRECISIONS, TRACKERS, every_res
from progressive.core.errors import UserError
from progressive.train import data as datasets
from progressive.train import loop as training
from progressive.train.plan import dry_run_summary
from progressive.train.tracking import check_tracker

KIMG = click.FloatRange(min=0)
COUNT = click.IntRange(min=1)


class MaxRes(click.ParamType):
    """A power of two from 4 to 1024."""

    name = "RES"

    def convert(self, value, param, ctx):
        try:
            res = int(value)
        except (TypeError, ValueError):
            res = None
        if res is None or res < 4 or res > 1024 or res & (res - 1):
            raise click.UsageError(f"--max-res {value}: a power of two from 4 to 1024", ctx)
        return res


class Rates(click.ParamType):
    """A learning rate, with others at some resolutions: `2e-3` or `16e-3,64:2e-3`."""

    name = "RATE[,RES:RATE...]"

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        try:
            return parse_value("optim.lr_generator", str(value))
        except UserError as e:
            self.fail(str(e).removeprefix("optim.lr_generator"), param, ctx)


class Setting(click.ParamType):
    """`section.field=value`, parsed against the field's type."""

    name = "SECTION.FIELD=VALUE"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        key, sep, text = str(value).partition("=")
        if not sep:
            self.fail(f"{value!r}: write section.field=value, e.g. loss.energy_r1=0.1",
                      param, ctx)
        try:
            return key.strip(), parse_value(key.strip(), text)
        except UserError as e:
            self.fail(str(e), param, ctx)


# Each option: its `section.field` (None: not a configuration field); --lr sets all three rates.
_FIELDS = {
    "data": "data.path", "max_res": "schedule.max_res", "fade_kimg": "schedule.fade_kimg",
    "stable_kimg": "schedule.stable_kimg", "total_kimg": "schedule.total_kimg",
    "latent": "networks.latent", "fmap_base": "networks.fmap_base",
    "fmap_max": "networks.fmap_max", "seed": "run.seed", "mixed_precision": "run.mixed_precision",
    "workers": "data.workers", "snapshot_kimg": "run.snapshot_kimg",
    "log_with": "run.log_with",
}


def _option(*names: str, **kw: Any):
    return click.option(*names, show_default=True, **kw)


class _TrainCommand(click.Command):
    """`train`, saying where an option of the configuration went when one is used as a flag."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            if option_key(e.option_name) in RETIRED:
                raise click.UsageError(f"{e.option_name} was retired: tried and not kept "
                                       "(docs/experiments.md)", ctx) from None
            now = where_now(e.option_name)
            if now is None:
                raise
            hint = now if now.startswith("--") else f"--set {now}=VALUE"
            raise click.UsageError(f"{e.option_name} is not an option of train: use {hint} "
                                   "(docs/configuration.md)", ctx) from None


@click.command(cls=_TrainCommand)
# Data, configuration and where the run goes.
@_option("--data", help="Dataset directory (make-lmdb). Default: built-in synthetic data.")
@_option("--preset", help="Experiment preset. Default: sizes from --max-res and the device.",
         type=click.Choice(presets.names()))
@_option("--config", "config_file", help="JSON or YAML file of configuration sections (a run's "
         "config.json reproduces it).", type=click.Path(exists=True, dir_okay=False))
@_option("--set", "settings", help="Any field, over everything else; repeatable.",
         type=Setting(), multiple=True)
@_option("--outdir", help="Folder of run folders.", type=click.Path(file_okay=False),
         default="checkpoints")
@_option("--name", help="Run folder name. Default: preset[-dataset].")
@_option("--resume", help="'auto' (this run's newest snapshot) or a run folder or snapshot.")
# Growth schedule.
@_option("--max-res", help="Final resolution (power of two). Default: the preset's, or the "
         "data's.", type=MaxRes())
@_option("--fade-kimg", help="Thousands of real images per fade-in.", type=KIMG)
@_option("--stable-kimg", help="Thousands of real images per stable phase.", type=KIMG)
@_option("--total-kimg", help="Stop here. Default: the end of the last stage.", type=KIMG)
@_option("--batch", help="Global batch size at every resolution.", type=COUNT)
# Networks and optimisation.
@_option("--lr", help="Learning rate of all three networks (16e-3,64:2e-3: 2e-3 at 64 px).",
         type=Rates())
@_option("--latent", help="Latent dimension.", type=COUNT)
@_option("--fmap-base", help="Channels at res: clamp(fmap_base / res, fmap_min, fmap_max).",
         type=COUNT)
@_option("--fmap-max", help="Widest layer.", type=COUNT)
@_option("--seed", help="Random seed.", type=click.IntRange(min=0))
# Speed.
@_option("--mixed-precision", help="auto: bf16 where native, else fp32.",
         type=click.Choice(PRECISIONS))
@_option("--workers", help="Data loader processes per rank.", type=click.IntRange(min=0))
# Bookkeeping and evaluation at every stage end, on the held-out end of the dataset.
@_option("--snapshot-kimg", help="Snapshot interval, thousands of images.", type=KIMG)
@_option("--log-with", help="Tracker for losses, evaluations and grids, beside stats.jsonl "
         "(pip install the package of the same name). Default: none.",
         type=click.Choice(TRACKERS))
@_option("--dry-run", help="Print the plan (JSON: stages, time, memory, data) and stop.",
         is_flag=True)
@_option("--calibration-seconds", help="With --dry-run: time spent measuring steps.",
         type=click.FloatRange(min=0), default=20.0)
def train(preset, config_file, settings, outdir, name, resume, batch, lr, dry_run,
          calibration_seconds, **options) -> None:
    """Train generator, energy and inference models, growing them from 4x4 to --max-res."""
    file_preset, values = read_config_file(config_file) if config_file else (None, {})
    values |= {_FIELDS[k]: v for k, v in options.items() if v is not None}
    if batch is not None:
        values["schedule.batch"] = every_res(batch)
    if lr is not None:
        table = lr if isinstance(lr, dict) else every_res(lr)
        values |= {f: table for f in ("optim.lr_generator", "optim.lr_energy",
                                      "optim.lr_inference")}
    values |= dict(settings)
    preset = preset or file_preset
    if (preset in (None, presets.AUTO) and "schedule.max_res" not in values
            and values.get("data.path") and resume is None):  # a resumed run keeps its max_res
        values["schedule.max_res"] = datasets.dataset_max_res(values["data.path"])
    cfg = presets.make_config(preset, values)
    check_tracker(cfg.run.log_with)  # before anything is written
    if dry_run:
        click.echo(json.dumps(dry_run_summary(cfg, Path(outdir), calibration_seconds), indent=2))
        return
    cfg, run_dir, snapshot = training.resolve_run(
        cfg, values, Path(outdir), name, resume, notify=lambda m: click.echo(m, err=True)
    )
    final = training.train(cfg, run_dir, snapshot)
    click.echo(f"final snapshot: {final}")


def read_config_file(path: str) -> tuple[str | None, dict[str, Any]]:
    """The preset a JSON or YAML configuration file names and its `section.field` values; a
    flat config.json of release 0.1.0 is read through `migrate`."""
    try:
        text = Path(path).read_text()
        d = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise UserError(f"--config {path} is unreadable ({str(e).splitlines()[0]})") from None
    if not isinstance(d, dict):
        raise UserError(f"--config {path}: expected a mapping of sections")
    if "max_res" in d:  # release 0.1.0's flat configuration
        d = migrate(d).to_dict()
    values = {}
    for section, fields in d.items():
        if section == "preset":
            continue
        if not isinstance(fields, dict):
            raise UserError(f"--config {path}: {section} must be a mapping of its fields")
        for field, value in fields.items():
            values[f"{section}.{field}"] = value
    return d.get("preset"), values


COMMANDS = [train]
