"""The nightly labelling run: one date's frames, found and written by date-templated prefixes.

A fleet uploads each day's footage under a prefix that names the date; the nightly job labels the
date's prefix into an output prefix that names the same date. Rerunning a date labels only frames
that have no stats row from the same model yet (``segray.labelling.job`` skips them), so a scheduler
can rerun a night after late uploads or a failure without duplicating anything.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone


def parse_date(text: str | None) -> date:
    """``YYYY-MM-DD``; none means yesterday (UTC): a nightly run labels the day that just ended."""
    if not text:
        return datetime.now(timezone.utc).date() - timedelta(days=1)
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--date {text!r}: expected YYYY-MM-DD") from None


def expand(template: str, day: date, what: str) -> str:
    """Fill ``{date}`` (ISO ``2026-11-21``) or ``{date:%Y/%m/%d}`` (any strftime format) in a prefix."""
    if "{date" not in template:
        raise ValueError(
            f"--{what} {template!r} has no {{date}} placeholder: each night needs its own prefix "
            "(e.g. s3://fleet/frames/{date}/ or s3://fleet/frames/{date:%Y/%m/%d}/)"
        )
    try:
        return template.format(date=day)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"--{what} {template!r}: bad template ({e}); only {{date}} may be used") from None
