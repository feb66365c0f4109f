"""Turning views into HTML: the templates (Jinja2, autoescaped), safe markdown, and the small
drawings (the overview's chart, spend bars) as inline SVG made here, so a page needs no
script to be read.

Markdown is rendered by markdown-it in its CommonMark preset with raw HTML off: a job body
can hold any text and still never put markup of its own, a script or a `javascript:` link on
the page (markdown-it refuses such links itself).
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import azure.functions as func
import jinja2
from markdown_it import MarkdownIt
from markupsafe import Markup

from fleet import clock
from shared.redaction import redact

HERE = Path(__file__).resolve().parent
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=jinja2.select_autoescape(["html"], default=True),
    # An error page knows less than a page does (no principal yet, say): what it lacks is blank.
    undefined=jinja2.ChainableUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def markdown(text: str | None) -> Markup:
    """`text` as HTML: CommonMark, no raw HTML, unsafe link schemes refused."""
    return Markup(_markdown.render(text or ""))


def ago(value: datetime | str | None, now: datetime) -> str:
    """How long ago, in words a person reads at a glance."""
    if value is None:
        return "never"
    at = clock.parse(value) if isinstance(value, str) else value
    seconds = max(0, int((now - at).total_seconds()))
    if seconds < 60:
        return "under a minute ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def when(value: datetime | str | None, seconds: bool = False) -> str:
    """`2026-01-05 09:00 UTC`; with `seconds` (a lease's expiry, which may be half a minute
    off), `09:00:30`."""
    if value is None:
        return "—"
    at = clock.parse(value) if isinstance(value, str) else value
    return at.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def detail(value: Any) -> str:
    """An event's detail value as read: a list as its items (`children: a, b`), not its repr."""
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def usd(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}"


def stage_label(value: Any) -> str:
    text = getattr(value, "value", value) or "missing"
    return str(text).replace("_", " ").capitalize()


_env.filters.update(markdown=markdown, when=when, usd=usd, stage=stage_label, detail=detail)


#: Every page: its own script and stylesheet only (inline style attributes draw the spend
#: bars), never framed by another site, forms posted only to itself.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def page(template: str, code: int = 200, **values: Any) -> func.HttpResponse:
    """Render `template` with `values` into an HTML answer with status `code`."""
    html = _env.get_template(template).render(**values)
    return func.HttpResponse(html, status_code=code, mimetype="text/html", charset="utf-8", headers=dict(HEADERS))


def error_page(status: int, title: str, detail: str, **who: Any) -> func.HttpResponse:
    """The page of a request that failed; `who`: the header's principal, when there is one."""
    return page("error.html", status, title=title, detail=redact(detail), status=status, **{"signed_in": False, **who})


def chart(days: list[Any], width: int = 640, height: int = 180) -> Markup:
    """An SVG of jobs shipped (bars) and spend (a line) per day, with an accessible name; the
    page shows the same figures as a table beside it."""
    pad_left, pad_bottom, pad_top = 36, 28, 12
    inner_w, inner_h = width - pad_left - 8, height - pad_bottom - pad_top
    most_shipped = max([d.shipped for d in days] + [1])
    most_spent = max([d.spent_usd for d in days] + [0.01])
    step = inner_w / max(1, len(days))
    bars, points, labels = [], [], []
    for i, day in enumerate(days):
        x = pad_left + i * step
        h = inner_h * day.shipped / most_shipped
        bars.append(
            f'<rect class="bar" x="{x + step * 0.15:.1f}" y="{pad_top + inner_h - h:.1f}" '
            f'width="{step * 0.7:.1f}" height="{h:.1f}"><title>{day.day}: {day.shipped} shipped</title></rect>'
        )
        py = pad_top + inner_h - inner_h * day.spent_usd / most_spent
        points.append(f"{x + step / 2:.1f},{py:.1f}")
        if i % max(1, len(days) // 7) == 0:
            labels.append(f'<text x="{x + step / 2:.1f}" y="{height - 8}" text-anchor="middle">{day.day:%d %b}</text>')
    total = sum(d.shipped for d in days)
    spent = sum(d.spent_usd for d in days)
    svg = (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="Jobs shipped and spend per day over the last {len(days)} days: {total} shipped, {usd(spent)} spent">'
        f'<line class="axis" x1="{pad_left}" y1="{pad_top + inner_h}" x2="{width - 8}" y2="{pad_top + inner_h}"/>'
        f'<text x="4" y="{pad_top + 8}">{most_shipped}</text>'
        + "".join(bars)
        + f'<polyline class="spend" fill="none" points="{" ".join(points)}"/>'
        + "".join(labels)
        + "</svg>"
    )
    return Markup(svg)
