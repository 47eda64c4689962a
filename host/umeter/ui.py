"""Terminal output shared by the CLI: results on stdout, diagnostics on stderr, NO_COLOR,
progress bars on a terminal and plain lines elsewhere."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from rich.console import Console


@dataclass
class _State:
    verbose: int = 0


state = _State()


def _color() -> bool:
    return "NO_COLOR" not in os.environ


out = Console(file=sys.stdout, no_color=not _color(), highlight=False, soft_wrap=True)
err = Console(file=sys.stderr, no_color=not _color(), highlight=False, soft_wrap=True)


def is_tty() -> bool:
    return sys.stdout.isatty()


def info(msg: str) -> None:
    """A diagnostic line on stderr (hidden with -q)."""
    if state.verbose >= 0:
        err.print(msg, markup=False)


def debug(msg: str) -> None:
    if state.verbose > 0:
        err.print(msg, markup=False, style="dim")


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 node', '3 nodes', '1 point', '0 points' ('many' for irregular plurals)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"
