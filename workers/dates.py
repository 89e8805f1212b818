"""`--since` values, one format for every command: an ISO 8601 date or time (UTC unless
it has an offset) or an age such as `90m`, `12h`, `7d`, `2w`."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

AGE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """The UTC time `text` names; ValueError when it is neither an ISO date nor an age."""
    age = AGE.match(text)
    if age:
        now = now or datetime.now(UTC)
        return now - timedelta(**{UNITS[age.group(2)]: int(age.group(1))})
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not an ISO date (2026-11-01, 2026-11-01T12:00) or an age (90m, 12h, 7d, 2w)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
