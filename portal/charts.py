"""Server-rendered SVG charts: no script, so they satisfy the portal's Content-Security-Policy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

PALETTE = [
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
]


@dataclass
class Series:
    name: str
    values: Sequence[float]


def stacked_bars(days: Sequence[date], series: Sequence[Series], *, title: str, unit: str, width: int = 720,
                 height: int = 220) -> SafeString:  # fmt: skip
    """A stacked bar chart of ``series`` over ``days``, with a legend and per-bar tooltips."""
    left, bottom, top = 48, 28, 12
    plot_w, plot_h = width - left - 8, height - bottom - top
    totals = [sum(s.values[i] for s in series) for i in range(len(days))]
    peak = max(totals, default=0) or 1
    bar_w = plot_w / max(len(days), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height + 24 + 16 * ((len(series) + 3) // 4)}" '
        f'role="img" aria-label="{escape(title)}" class="chart">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="currentColor" stroke-opacity=".4"/>',
        f'<text x="{left - 6}" y="{top + 8}" text-anchor="end" font-size="10" fill="currentColor">{_fmt(peak)}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" font-size="10" fill="currentColor">0</text>',
    ]
    for i, day in enumerate(days):
        y: float = top + plot_h
        for j, s in enumerate(series):
            value = s.values[i]
            if value <= 0:
                continue
            h = value / peak * plot_h
            y -= h
            parts.append(
                f'<rect x="{left + i * bar_w + 1:.1f}" y="{y:.1f}" width="{max(bar_w - 2, 1):.1f}" height="{h:.1f}" '
                f'fill="{PALETTE[j % len(PALETTE)]}"><title>{escape(day.isoformat())} {escape(s.name)}: {_fmt(value)} {escape(unit)}</title></rect>'
            )
        if len(days) <= 31 and (i % 5 == 0 or i == len(days) - 1):
            parts.append(f'<text x="{left + (i + 0.5) * bar_w:.1f}" y="{top + plot_h + 14}" text-anchor="middle" '
                         f'font-size="10" fill="currentColor">{day:%d %b}</text>')  # fmt: skip
    for j, s in enumerate(series):
        lx, ly = left + (j % 4) * 170, height + 10 + 16 * (j // 4)
        parts.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>'
                     f'<text x="{lx + 14}" y="{ly + 9}" font-size="11" fill="currentColor">{escape(s.name)}</text>')  # fmt: skip
    parts.append("</svg>")
    return mark_safe("".join(parts))  # every interpolated text is escaped above


def _fmt(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:g}"
