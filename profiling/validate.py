"""Checks of a configuration's values, run when the configuration is built (before any work).

Every stage's configuration dataclass validates itself in `__post_init__` with these helpers,
so a wrong value fails at once with a message that names the parameter, never after a long
training or search. The parameter is the library's name (`latency_budget_ms`, `out`); only
the command-line layer knows which flag it came from and says so (`scripts/cli.py` maps
`ConfigError.param` to the flag and exits with status 2). A message that names another
parameter puts it in backticks (`overwrite`), which the command line shows as its flag.

    check_range("min_accuracy", 150, 0, 100)   # ConfigError: min_accuracy: 150 is out of range [0, 100]
    check_output_dir("out", "runs/x", overwrite=False, results=("report.md",))

This module is at the bottom layer (profiling) so that every stage can use it.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

from profiling.errors import HwnasError


class ConfigError(HwnasError, ValueError):
    """A configuration value is wrong: `param` names it, the message says what is wrong and how
    to fix it. Raised before any work, so it is a usage error (the CLI exits with status 2)."""

    def __init__(self, param: str, problem: str):
        super().__init__(f"{param}: {problem}")
        self.param = param
        self.problem = problem


def check_range(param: str, value: float | int | None, low: float | None = None, high: float | None = None,
                *, low_open: bool = False, optional: bool = True) -> None:
    """`value` within [low, high] (`low_open`: strictly above `low`); None passes when `optional`."""
    if value is None:
        if optional:
            return
        raise ConfigError(param, "a value is required")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(param, f"{value!r} is not a number") from None
    if v != v:  # NaN
        raise ConfigError(param, "NaN is not a value")
    too_low = low is not None and (v <= low if low_open else v < low)
    too_high = high is not None and v > high
    if too_low or too_high:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ConfigError(param, f"{value:g} is out of range {'(' if low_open else '['}{lo}, {hi}]")


def check_choice(param: str, value: Any, known: Iterable[Any], what: str = "value") -> None:
    """`value` one of `known` (a registry's names): "unknown target 'nope'; valid targets: a, b"."""
    known = list(known)
    if value not in known:
        raise ConfigError(param, f"unknown {what} {value!r}; valid {what}s: {', '.join(map(str, known))}")


def check_input_file(param: str, path: str | os.PathLike | None, what: str = "file") -> Path | None:
    """An existing, readable regular file (a directory is refused with its own message)."""
    if path is None:
        return None
    p = Path(path)
    if not p.exists():
        raise ConfigError(param, f"{p} does not exist (expected a {what})")
    if p.is_dir():
        raise ConfigError(param, f"{p} is a directory, not a {what}")
    if not os.access(p, os.R_OK):
        raise ConfigError(param, f"{p} cannot be read (permission denied)")
    return p


def check_input_path(param: str, path: str | os.PathLike, what: str = "file or directory") -> Path:
    """An existing, readable file or directory."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(param, f"{p} does not exist (expected: {what})")
    if not os.access(p, os.R_OK):
        raise ConfigError(param, f"{p} cannot be read (permission denied)")
    return p


_HOST = re.compile(r"(?:([A-Za-z0-9._-]+)@)?([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
                   r"(?::(\d{1,5}))?")


def check_host(param: str, text: str | None) -> None:
    """`[user@]host[:port]` with nothing a shell would read (no spaces, quotes, ; $ ...), a port in
    1-65535. Checked before any work: a typo must not surface after an hour of training."""
    if text is None:
        return
    m = _HOST.fullmatch(text)
    if not m:
        raise ConfigError(param, f"{text!r} is not USER@HOST[:PORT] (letters, digits, '.', '-', '_'; IPv6 in "
                                 f"brackets)")
    if m.group(3) and not 1 <= int(m.group(3)) <= 65535:
        raise ConfigError(param, f"{text!r}: port {m.group(3)} is out of range [1, 65535]")


def _writable_parent(param: str, p: Path) -> None:
    """The nearest existing ancestor of `p` is a writable directory (so `p` can be created)."""
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(param, f"{p} cannot be created: {parent} is a file, not a directory")
    if not _can_write_in(parent):
        raise ConfigError(param, f"{p} cannot be created: {parent} is not writable")


def _can_write_in(directory: Path) -> bool:
    """Whether a file can be created in `directory`: tried, since permission bits say nothing
    for root, a read-only mount or a full quota."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            return True
    except OSError:
        return False


def check_output_file(param: str, path: str | os.PathLike, overwrite: bool = False,
                      overwrite_param: str = "`overwrite`") -> Path:
    """A file that can be written: not a directory, in a writable place, and not an earlier
    result unless `overwrite` (the message names `overwrite_param`, the way to allow it)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(param, f"{p} is a directory; give a file name")
    if p.exists():
        if not overwrite:
            raise ConfigError(param, f"{p} already exists; choose another name, or set {overwrite_param} "
                                     f"to replace it")
        if not os.access(p, os.W_OK):
            raise ConfigError(param, f"{p} exists and is not writable")
        return p
    _writable_parent(param, p)
    return p


def check_output_dir(param: str, path: str | os.PathLike, overwrite: bool = False,
                     results: Iterable[str] = (), overwrite_param: str = "`overwrite`") -> Path:
    """A directory that can hold the outputs: not a file, writable (or creatable), and holding
    none of `results` (an earlier run's files) unless `overwrite`."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(param, f"{p} is a file; give a directory")
    if p.is_dir():
        if not _can_write_in(p):
            raise ConfigError(param, f"{p} is not writable")
        earlier = [r for r in results if (p / r).exists()]
        if earlier and not overwrite:
            raise ConfigError(param, f"{p} holds an earlier run's results ({', '.join(earlier)}); give a new "
                                     f"directory, or use {overwrite_param} to replace them")
        return p
    _writable_parent(param, p)
    return p


__all__ = ["ConfigError", "check_choice", "check_host", "check_input_file", "check_input_path", "check_output_dir",
           "check_output_file", "check_range"]
