"""SVG geometry for the analytics charts, computed server-side (no chart
library, no script, nothing from another origin: P02).

Each chart is a list of bars in a fixed viewBox; the template draws them as
<rect> elements with a <title> (the browser's own tooltip) and puts the same
numbers in a data table, so nothing is only visible as a shape.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

WIDTH, HEIGHT = 720, 200
ROW_HEIGHT, LABEL_WIDTH, BAR_WIDTH = 26, 150, 240


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    title: str
    kind: str = "main"  # CSS class suffix: main, bad


@dataclass
class Chart:
    width: int
    height: int
    bars: list[Bar] = field(default_factory=list)
    labels: list[tuple[float, float, str]] = field(default_factory=list)  # x, y, text (horizontal charts)
    peak: str = ""  # the y axis' top value, formatted


def bucket_label(bucket: datetime, grain: str) -> str:
    return bucket.strftime("%Y-%m-%d %H:00" if grain == "h" else "%Y-%m-%d")


def _scale(values: Sequence[float]) -> float:
    top = max(values, default=0)
    return float(top) if top > 0 else 1.0


def columns(points: Sequence, grain: str, value: Callable[[object], float | Decimal],
            fmt: Callable[[object], str], bad: Callable[[object], float] | None = None) -> Chart:
    """Vertical bars over time; with `bad`, that part of each bar (errors) is
    stacked on top in the warning colour."""
    chart = Chart(WIDTH, HEIGHT)
    if not points:
        return chart
    top = _scale([float(value(p)) for p in points])
    slot = WIDTH / len(points)
    gap = min(2.0, slot * 0.2)
    for i, p in enumerate(points):
        total = float(value(p))
        x, w = i * slot + gap / 2, max(slot - gap, 0.5)
        when = bucket_label(p.bucket, grain)
        if total <= 0:
            continue
        h = total / top * (HEIGHT - 4)
        errors = float(bad(p)) if bad else 0.0
        ok_h = (total - errors) / top * (HEIGHT - 4)
        title = f"{when}: {fmt(p)}"
        if ok_h > 0:
            chart.bars.append(Bar(round(x, 2), round(HEIGHT - ok_h, 2), round(w, 2), round(max(ok_h, 1), 2), title))
        if errors > 0:
            err_h = h - ok_h
            chart.bars.append(Bar(round(x, 2), round(HEIGHT - h, 2), round(w, 2), round(max(err_h, 1), 2),
                                  title, "bad"))
    return chart


def rows(slices: Sequence, value: Callable[[object], float | Decimal], fmt: Callable[[object], str]) -> Chart:
    """Horizontal bars, one per breakdown row, with its name on the left."""
    chart = Chart(LABEL_WIDTH + BAR_WIDTH + 10, max(1, len(slices)) * ROW_HEIGHT)
    top = _scale([float(value(s)) for s in slices])
    for i, s in enumerate(slices):
        y = i * ROW_HEIGHT
        w = float(value(s)) / top * BAR_WIDTH
        name = s.label if len(s.label) <= 20 else s.label[:19] + "…"
        chart.labels.append((LABEL_WIDTH - 6, y + ROW_HEIGHT / 2 + 4, name))
        chart.bars.append(Bar(LABEL_WIDTH, y + 4, round(max(w, 1.0), 2), ROW_HEIGHT - 8, f"{s.label}: {fmt(s)}"))
    return chart
