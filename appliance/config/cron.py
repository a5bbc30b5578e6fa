"""Cron expressions for scheduled joins (``federation.schedule``), with ``croniter``:
the config's validation and the scheduler's next fire time are the same library.

Only the standard 5 fields (minute hour day-of-month month day-of-week) are accepted;
times are the appliance's local time (time-zone aware, so daylight-saving changes are
croniter's business, not ours)."""

from __future__ import annotations

from datetime import datetime

from croniter import CroniterError, croniter


def valid_cron(expression: str) -> bool:
    """Whether ``expression`` is a 5-field cron expression croniter can schedule."""
    if len(expression.split()) != 5:
        return False
    try:
        return bool(croniter.is_valid(expression))
    except (CroniterError, ValueError, TypeError):
        return False


def next_fire(expression: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` (time-zone aware) that ``expression`` names."""
    if after.tzinfo is None:
        raise ValueError("next_fire needs a time-zone aware datetime")
    fire: datetime = croniter(expression, after).get_next(datetime)
    return fire
