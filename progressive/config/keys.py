"""Configuration fields named `section.field`: looked up, set on a configuration, and read
from text as `--set section.field=value` gives them (checked like the field itself).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from progressive.config.sections import SECTIONS, Config, Section, coerce
from progressive.core.errors import UserError
from progressive.core.resolutions import ALL_RES


def field_of(key: str) -> tuple[type[Section], dataclasses.Field]:
    """The section class and field of `section.field`, or a one-line error."""
    section, _, name = key.partition(".")
    cls = SECTIONS.get(section)
    found = [f for f in dataclasses.fields(cls) if f.name == name] if cls else []
    if not found:
        raise UserError(f"{key} is not a configuration field (section.field, e.g. "
                        "loss.energy_r1; see docs/configuration.md)")
    return cls, found[0]


def replace(cfg: Config, values: dict[str, Any]) -> Config:
    """`cfg` with `section.field` values set (typed values; `parse_value` reads strings)."""
    sections: dict[str, dict] = {}
    for key, value in values.items():
        cls, f = field_of(key)
        sections.setdefault(cls.NAME, {})[f.name] = value
    changed = {name: dataclasses.replace(getattr(cfg, name), **fields)
               for name, fields in sections.items()}
    return dataclasses.replace(cfg, **changed)


def parse_value(key: str, text: str) -> Any:
    """The typed value of `section.field=text` (as --set gives it), or a one-line error:
    numbers, true/false, null for optional fields, `a,b` for betas, and per-resolution tables
    as one value or one with others at some resolutions (`16e-3,64:2e-3`)."""
    cls, f = field_of(key)
    hint = typing.get_type_hints(cls)[f.name]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() in ("null", "none"):
            return None
        (hint,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    try:
        if origin is dict:
            base, *pairs = text.split(",")
            value = {r: _scalar(args[1], base) for r in ALL_RES}
            for pair in pairs:
                res, v = pair.split(":")
                if int(res) not in value:
                    raise UserError(f"{key}={text}: no resolution {res}; use one of "
                                    f"{', '.join(map(str, ALL_RES))}")
                value[int(res)] = _scalar(args[1], v)
        elif origin is tuple:
            value = tuple(_scalar(a, v) for a, v in zip(args, text.split(","), strict=True))
        else:
            value = _scalar(hint, text)
    except ValueError:
        raise UserError(f"{key}={text}: not a value of this field ({_describe(hint)})") from None
    coerce(key, hint, value, f)  # bounds and choices, named in one line
    return value


def _scalar(hint: Any, text: str) -> Any:
    text = text.strip()
    if hint is bool:
        if text.lower() in ("true", "1", "yes", "on"):
            return True
        if text.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError(text)
    if hint is int:
        return int(text)
    if hint is float:
        return float(text)
    return text


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict:
        return f"a {args[1].__name__} or one with others at some resolutions, e.g. 16e-3,64:2e-3"
    if origin is tuple:
        return "two numbers, e.g. 0.5,0.99"
    return {bool: "true or false", int: "a whole number", float: "a number"}.get(hint, "text")


# Options of `progressive train` in release 0.1.0 whose field has another name.
_RENAMED = {"out": "--outdir", "generator_lr": "optim.lr_generator",
            "energy_lr": "optim.lr_energy", "inference_lr": "optim.lr_inference",
            "energy_langevin": "loss.langevin_steps",
            "energy_langevin_step": "loss.langevin_step_size",
            "energy_langevin_noise": "loss.langevin_noise"}


def option_key(option: str) -> str:
    """The configuration's spelling of a command-line option: `--energy-r1` -> `energy_r1`."""
    return option.lstrip("-").replace("-", "_")


def where_now(option: str) -> str | None:
    """Where a train option that no longer exists went: a field (`section.field`) or an option;
    None for an option that never was one."""
    key = option_key(option)
    if key in _RENAMED:
        return _RENAMED[key]
    for name, cls in SECTIONS.items():
        if any(f.name == key for f in dataclasses.fields(cls)):
            return f"{name}.{key}"
    return None
