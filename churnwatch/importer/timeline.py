"""The synthetic timeline: calendar months up to ``as_of``, activation from tenure.

Tables have no time except tenure and, for ``per_period`` tables, the period
column; these helpers lay a subscriber's periods on a timeline that ends at
``as_of`` and place events on it (docs/import.md, "timeline").
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from churnwatch.importer.model import Anchor, Periods
from churnwatch.importer.values import _Ctx, _RowError, _Slot, _text

DAYS_PER_MONTH = Decimal("30.436875")  # the mean Gregorian month, for fractional months


def _month_start(year: int, month: int) -> datetime:
    return datetime(year, month, 1, tzinfo=UTC)


def _add_months(start: datetime, months: int) -> datetime:
    """The first of the month ``months`` after ``start``'s month."""
    index = start.year * 12 + start.month - 1 + months
    return _month_start(index // 12, index % 12 + 1)


def _slot(year: int, month: int, as_of: datetime) -> _Slot:
    start = _month_start(year, month)
    return _Slot(f"{year:04d}-{month:02d}", start, min(_add_months(start, 1), as_of))


def _minus_tenure(as_of: datetime, tenure: Decimal, unit: str) -> datetime:
    if tenure < 0:
        raise _RowError(f"tenure {_text(tenure)} is negative", "negative:timeline.tenure")
    if unit == "days":
        return as_of - timedelta(days=float(tenure))
    whole = int(tenure)
    index = as_of.year * 12 + as_of.month - 1 - whole
    year, month = index // 12, index % 12 + 1
    day = as_of.day
    while True:  # the same day of the month, or the month's last day
        try:
            moved = as_of.replace(year=year, month=month, day=day)
            break
        except ValueError:
            day -= 1
    return moved - timedelta(days=float((tenure - whole) * DAYS_PER_MONTH))


def _window(
    slots: list[_Slot], activation: datetime | None, as_of: datetime, before: str
) -> tuple[list[_Slot], datetime]:
    """The subscriber's periods (clipped to activation with ``drop``) and the window start."""
    if before == "drop" and activation is not None:
        kept = []
        for s in slots:
            if s.end > activation:
                kept.append(_Slot(s.period, max(s.start, activation), s.end))
        start = kept[0].start if kept else min(activation, as_of)
        return kept, start
    return slots, slots[0].start if slots else as_of


def _select(selection: Periods | list[int], slots: list[_Slot]) -> list[_Slot | None]:
    if selection == "once":
        return [None]
    chosen: list[_Slot]
    if selection == "all":
        chosen = slots
    elif selection == "first":
        chosen = slots[:1]
    elif selection == "last":
        chosen = slots[-1:]
    elif selection == "earlier":
        chosen = slots[:-1]
    else:
        # Counted back from the last period (0); the listed order does not matter.
        wanted = {len(slots) - 1 - n for n in selection}
        chosen = [s for i, s in enumerate(slots) if i in wanted]
    return list(chosen)


def _spread(anchor: Anchor, shift: timedelta, n: int, ctx: _Ctx) -> list[datetime]:
    """The times of ``n`` events placed at ``anchor`` (spread evenly over a period)."""
    slot = ctx.slot
    if anchor == "period":
        assert slot is not None  # checked when the mapping loads
        span = (slot.end - slot.start).total_seconds()
        return [slot.start + timedelta(seconds=int((j + 0.5) * span / n)) + shift for j in range(n)]
    if anchor == "period_start":
        assert slot is not None
        at = slot.start
    elif anchor == "period_end":
        assert slot is not None
        at = slot.end
    elif anchor == "window_start":
        at = ctx.window_start
    elif anchor == "activation":
        if ctx.activation is None:
            raise _RowError("at: activation, but there is no tenure", "no_value:activation")
        at = ctx.activation
    else:
        at = ctx.as_of
    return [at + shift] * n
