"""Commands that use a trained run: interpolate, sample, reconstruct, energy, evaluate."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
