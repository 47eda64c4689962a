"""Checks on the paths a command will write, made before any work starts, so a typo in an
output path is a one-line error at once rather than a traceback after the work is done."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError


def check_output(path: str | os.PathLike[str], option: str, suffixes: tuple[str, ...] = ()) -> Path:
    """The path of an output file, or ConfigError naming `option` and what is wrong with it."""
    p = Path(path)
    if suffixes and p.suffix.lower() not in suffixes:
        raise ConfigError(f"{option} {path}: not a {'/'.join(suffixes)} file name", hint=f"end it in {suffixes[0]}")
    if p.is_dir():
        raise ConfigError(f"{option} {path} is a directory", hint="give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: directory {parent} does not exist", hint="create it, or choose another")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{option} {path}: directory {parent} is not writable", hint="choose another path")
    return p
