"""Command-line options built from configuration dataclasses, so the two cannot drift.

A field with `search.config.option(...)` metadata becomes a click option: its flag (`--` + the
field's `SearchConfig` name with dashes, `search.config.FLAT_FIELDS`, unless `FLAG_SPELLINGS`
spells it otherwise; a bool that defaults to true is a `--x/--no-x` switch), its help (the
settings it names in backticks shown as their flags), metavar and default (shown), and a type
read from the annotation (bool: a flag; int, float; a tuple: comma-separated; else text).
The click parameter is named `<part>__<field>`, and `build_part` turns the parsed values back
into the dataclass, whose `__post_init__` validates them; a `ConfigError` then names the field,
which `flags_of` maps back to the flag the user typed (scripts/cli.py's `cli_errors`), and a
library message naming a `SearchConfig` setting is shown with its flag (`search_flags`).

To add a search option: add the field, with `option(...)` metadata, to its part in
search/config.py (and its `SearchConfig` name to FLAT_FIELDS). Nothing here or in
scripts/search_cli.py changes. A registry's names (spaces, algorithms) are listed in the help
from the registry itself (`registry=` in the metadata).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import click

from scripts.cli import flags_in
from search.config import FLAT_FIELDS, PARTS, cli_fields, flat_name

#: the search flags not spelled `--` + the SearchConfig name with dashes (the command line's choice)
FLAG_SPELLINGS = {"latency_budget_ms": "--latency-budget", "data_image_size": "--image-size",
                  "verify_rounds": "--rounds", "ray_address": "--ray"}


def search_flag(flat: str) -> str:
    """The flag of the setting that `search.run.SearchConfig` names `flat`."""
    return FLAG_SPELLINGS.get(flat) or "--" + flat.replace("_", "-")


def flag_of(part: str, f: dataclasses.Field) -> str:
    """The flag of field `f` of part `part` (`--x/--no-x` for a bool that defaults to true)."""
    flag = search_flag(flat_name(part, f.name))
    if str(f.type).startswith("bool") and _default(f) is True:
        return f"{flag}/--no-{flag[2:]}"
    return flag


def flags_of(part: str, cls) -> dict[str, str]:
    """{field name: its flag} for the fields of part `cls` on the command line (the positive form
    of a --x/--no-x switch)."""
    return {f.name: flag_of(part, f).split("/")[0] for f in cli_fields(cls)}


def search_flags() -> dict[str, str]:
    """{SearchConfig name: its flag} for every setting on the command line: how a library message
    that names a setting (`force`) is shown to the user (`--force`)."""
    return {flat: search_flag(flat) for flat, (part, name) in FLAT_FIELDS.items()
            if name in {f.name for f in cli_fields(PARTS[part])}}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _click_type(annotation: str, f: dataclasses.Field):
    a = str(annotation).replace(" ", "")
    if a.startswith("bool"):
        return None
    if a.startswith("int"):
        return int
    if a.startswith("float"):
        return float
    return str


def options_for(part: str, cls) -> Callable:
    """A decorator adding the options of dataclass `cls` (its fields with `option` metadata),
    their click names prefixed by `part`."""
    def decorate(fn):
        for f in reversed(cli_fields(cls)):
            md = dict(f.metadata)
            kw: dict[str, Any] = dict(md.get("click") or {})
            choices = kw.pop("choices", None)
            registry = kw.pop("registry", None)
            default = _default(f)
            help_text = flags_in(md["help"], search_flags())
            names = registry() if registry else choices
            if names:
                help_text += f" One of: {', '.join(names)}."
            flag = flag_of(part, f)
            if str(f.type).startswith("tuple") and isinstance(default, tuple):
                default = ",".join(default)
            if kw.pop("is_flag", False):
                kw["is_flag"] = True
            elif "/" not in flag:
                kw["type"] = _click_type(f.type, f)
            fn = click.option(flag, f"{part}__{f.name}", default=default, show_default=default not in (None, False),
                              metavar=md.get("metavar"), help=help_text, **kw)(fn)
        return fn
    return decorate


def build_part(part: str, cls, values: dict[str, Any], **extra: Any):
    """The dataclass `cls` from the parsed options named `<part>__<field>` (and `extra` fields);
    its `__post_init__` validates them (a ConfigError names the field)."""
    kw: dict[str, Any] = {}
    for f in cli_fields(cls):
        v = values.pop(f"{part}__{f.name}")
        if str(f.type).startswith("tuple") and isinstance(v, str):
            v = tuple(x.strip() for x in v.split(",") if x.strip())
        kw[f.name] = v
    kw.update(extra)
    return cls(**kw)


__all__ = ["FLAG_SPELLINGS", "build_part", "flag_of", "flags_of", "options_for", "search_flag", "search_flags"]
