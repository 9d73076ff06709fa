"""Calendar arithmetic shared by the retention job and the pages that
announce its dates, so both agree to the day."""
from __future__ import annotations

import calendar
from datetime import date


def add_months(day: date, months: int) -> date:
    """The same day `months` later (or earlier, if negative), clamped to the
    end of a shorter month: Aug 31 + 6 months = Feb 28 (or 29)."""
    month0 = day.month - 1 + months
    year, month = day.year + month0 // 12, month0 % 12 + 1
    return day.replace(year=year, month=month, day=min(day.day, calendar.monthrange(year, month)[1]))
