"""Times and durations as people type them on the command line (`umeter policy`, `umeter
export`, `umeter ota`)."""

from __future__ import annotations

import re
import time
from datetime import datetime

from .errors import ConfigError


def parse_duration(s: str) -> int:
    """'90s' / '15m' / '12h' / '7d' / '3600' -> seconds."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", s)
    if not m:
        raise ConfigError(f"bad duration {s!r}", hint="e.g. 90s, 15m, 12h or 7d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_when(s: str, now: float | None = None) -> int:
    """`now`, `+90s` / `+15m` / `+2h`, UNIX seconds, or an ISO 8601 time (without an offset it is
    this host's local time) -> UNIX seconds."""
    now = time.time() if now is None else now
    s = s.strip()
    if s == "now":
        return int(now)
    if s.startswith("+"):
        return int(now) + parse_duration(s[1:])
    if s.isdigit():
        return int(s)
    try:
        return int(datetime.fromisoformat(s).astimezone().timestamp())
    except ValueError:
        raise ConfigError(
            f"bad time {s!r}", hint="now, +15m, UNIX seconds or an ISO time such as 2026-12-08T17:00+01:00"
        ) from None


def tz_name(offset_min: int) -> str:
    """A fixed offset from UTC as people read it: 'UTC', 'UTC+05:30', 'UTC-10:00'."""
    if not offset_min:
        return "UTC"
    a = abs(offset_min)
    return f"UTC{'+' if offset_min > 0 else '-'}{a // 60:02d}:{a % 60:02d}"
