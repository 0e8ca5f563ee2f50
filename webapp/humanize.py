"""Times for people: shared by the pages and the terminal, free of web imports."""

from __future__ import annotations

import time


def format_utc(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))


def format_time_left(seconds: int) -> str:
    """'3 h 12 min left', 'expired 5 min ago', 'less than a minute left', 'expired over 56 years ago'.

    static/status.js says the same in the browser (tests/test_humanize.py holds them together).
    """
    span = abs(int(seconds))
    days, rest = divmod(span, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days >= 365:
        years = days // 365
        text = f"over {years} year{'s' if years > 1 else ''}"
    else:
        parts = [f"{n} {unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "min")) if n]
        text = " ".join(parts) if parts else "less than a minute"
    return f"{text} left" if seconds > 0 else f"expired {text} ago"


def format_iso(timestamp: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
