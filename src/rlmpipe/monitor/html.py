"""The HTML and SVG kit of rlmpipe's reports: the run report (``runs report``) and the contracts report.

One place for what every report page needs, so that the reports look alike and are safe alike:
escaping, number formats, inline-SVG primitives, a sortable and filterable table, one stylesheet,
one script and the page around them. A page built by :func:`page` is self-contained (inline style,
script and SVG, and a Content-Security-Policy that forbids loading anything), so it opens offline
and can be mailed as it is.

Layering: ``rlmpipe.apps`` may import this module; it imports nothing of ``rlmpipe.apps``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources


# --- text -----------------------------------------------------------------------------------------
def esc(value) -> str:
    """``value`` as HTML text or attribute value (None is empty; ``<&"'`` escaped): every string that
    comes from a store, a document or a model goes through here before it reaches a page."""
    return html.escape("" if value is None else str(value), quote=True)


def num(value: float) -> str:
    """An SVG coordinate: one decimal at most, no exponent, so that large plots stay small."""
    return f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def count(value: int | None) -> str:
    """A count as people read it, with thousands separators (12,345); empty for None."""
    return "" if value is None else f"{value:,}"


# --- SVG ------------------------------------------------------------------------------------------
def nice_ticks(high: float, target: int = 5) -> list[float]:
    """Axis ticks 0, step, 2*step, ... covering [0, high] with about ``target`` intervals; the step is
    1, 2, 2.5 or 5 times a power of ten, so tick labels stay short."""
    if high <= 0:
        return [0.0]
    raw = high / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(math.ceil(high / step - 1e-9) + 1)]


def tick_label(value: float) -> str:
    """A tick's label: thousands separators for large values, no trailing zeros for small ones."""
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:g}"
    return f"{value:.6f}".rstrip("0").rstrip(".")


def svg_text(x: float, y: float, text: str, *, anchor: str = "start", size: int = 12, cls: str = "",
             weight: str = "", rotate: bool = False, fill: str = "") -> str:
    """A <text> (escaped); ``rotate`` turns it a quarter left around (x, y), for a y-axis title.
    Attributes left at their default are not written, so that large plots stay small."""
    optional = {"text-anchor": "" if anchor == "start" else anchor, "class": cls, "font-weight": weight,
                "fill": fill, "transform": f"rotate(-90 {num(x)} {num(y)})" if rotate else ""}
    attributes = "".join(f' {name}="{value}"' for name, value in optional.items() if value)
    return f'<text x="{num(x)}" y="{num(y)}" font-size="{size}"{attributes}>{esc(text)}</text>'


def svg_rect(x: float, y: float, w: float, h: float, fill: str, title: str | None = None,
             extra: str = "") -> str:
    """A <rect> (negative sizes drawn as 0), with ``title`` as its hover text; ``extra``: more attributes."""
    body = (f'<rect x="{num(x)}" y="{num(y)}" width="{num(max(w, 0))}" height="{num(max(h, 0))}" '
            f'fill="{fill}"{extra}')
    return f"{body}><title>{esc(title)}</title></rect>" if title else body + "/>"


def svg_line(x1: float, y1: float, x2: float, y2: float, stroke: str = "#999", extra: str = "") -> str:
    """A <line>; ``extra``: more attributes (stroke-dasharray, stroke-width)."""
    return (f'<line x1="{num(x1)}" y1="{num(y1)}" x2="{num(x2)}" y2="{num(y2)}" stroke="{stroke}"'
            f"{extra}/>")


def svg_plot(plot_id: str, title: str, width: float, height: float, body: Iterable[str],
             attributes: str = "") -> str:
    """An inline SVG plot (class "plot": it scales down with the page) whose ``title`` names it for
    screen readers; no namespace URL is needed inline, so a page holds no URL at all."""
    height = math.ceil(height)
    return (f'<svg id="{plot_id}" class="plot" role="img"{attributes} '
            f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'preserveAspectRatio="xMinYMin meet"><title>{esc(title)}</title>'
            + "".join(body) + "</svg>")


def figure(plot_id: str, title: str, svg: str, caption: str, legend: str = "") -> str:
    """A plot with its heading (if ``title``), its legend and its caption (HTML: it may hold markup),
    so that every plot says what it shows."""
    heading = f"<h3>{esc(title)}</h3>" if title else ""
    return (f'<figure class="figure" id="figure-{plot_id}">{heading}{legend}'
            f'<div class="plot-wrap">{svg}</div><figcaption>{caption}</figcaption></figure>')


def legend(items: Iterable[tuple[str, str]]) -> str:
    """A legend of (colour, label) keys, in HTML above the plot (it wraps and stays readable when the
    plot scales down); an item without a colour is a muted label."""
    spans = "".join(f'<span class="key"><i style="background:{colour}"></i>{esc(label)}</span>' if colour
                    else f'<span class="key muted">{esc(label)}</span>' for colour, label in items)
    return f'<div class="legend">{spans}</div>'


# --- cards and tables -----------------------------------------------------------------------------
def card(label: str, value: str, *, key: str = "", bad: bool = False, sub: str = "") -> str:
    """One headline figure (put cards in ``<div class="cards">``): a label over a large value, red if
    ``bad``; ``key`` names the value (data-total) for tests and scripts; ``sub`` is a small note."""
    total = f' data-total="{esc(key)}"' if key else ""
    return (f'<div class="card{" bad" if bad else ""}"><div class="label">{esc(label)}</div>'
            f'<div class="value"{total}>{esc(value)}</div>'
            + (f'<div class="sub">{esc(sub)}</div>' if sub else "") + "</div>")


NUMERIC_KINDS = ("int", "seconds", "num")


@dataclass
class Column:
    """One column of :func:`table`: the row key it shows, its heading, and how its cells look.

    ``kind``: int (thousands separators), seconds (0.123s), num (shown as it is) are numbers,
    right-aligned; text is plain; code, error and document are text with a class of that name.
    Whatever a cell shows, a numeric value goes in its data-value, so sorting is by the number."""

    key: str
    label: str
    kind: str = "text"
    fmt: Callable[[dict], str] | None = None  # plain text (escaped by ``table``)
    markup: Callable[[dict], str] | None = None  # HTML (the callable escapes what it takes from the data)
    cls: str = ""  # more classes of the cells


def _cell(column: Column, row: dict) -> str:
    """One <td> of :func:`table`: its markup, or its text (escaped); a number also in data-value."""
    value = row.get(column.key)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    kind = "num" if column.kind in NUMERIC_KINDS else "" if column.kind == "text" else column.kind
    classes = " ".join(c for c in (kind, column.cls) if c)
    attributes = (f' data-value="{value}"' if numeric else "") + (f' class="{classes}"' if classes else "")
    if column.markup is not None:
        content = column.markup(row)
    elif column.fmt is not None:
        content = esc(column.fmt(row))
    elif column.kind == "int":
        content = esc(count(value))
    else:
        content = "" if value is None else esc(f"{value:.3f}s" if column.kind == "seconds" else value)
    return f"<td{attributes}>{content}</td>"


def table(table_id: str, columns: list[Column], rows: list[dict], *, empty: str | None = "nothing to show",
          row_attributes: Callable[[dict], dict[str, str]] | None = None, first_order: str = "desc") -> str:
    """A table that sorts on a click on a heading (numbers as numbers; a second click reverses it;
    ``first_order`` is the first click's order) and that :func:`filter_controls` can filter.
    ``row_attributes`` gives each row's attributes (escaped here), e.g. the tags a filter reads;
    ``empty`` is the row shown when there is none (None: no row)."""
    head = "".join(f'<th class="num">{esc(c.label)}</th>' if c.kind in NUMERIC_KINDS
                   else f"<th>{esc(c.label)}</th>" for c in columns)
    body = []
    for row in rows:
        extra = "".join(f' {name}="{esc(value)}"' for name, value in (row_attributes(row) if row_attributes
                                                                     else {}).items())
        body.append(f"<tr{extra}>" + "".join(_cell(column, row) for column in columns) + "</tr>")
    if not rows and empty is not None:
        body.append(f'<tr><td colspan="{len(columns)}" class="muted">{esc(empty)}</td></tr>')
    order = f' data-first-order="{first_order}"' if first_order != "desc" else ""
    return (f'<div class="table-wrap"><table id="{table_id}" class="sortable"{order}><thead><tr>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div>')


def filter_controls(table_id: str, key: str, label: str, options: Iterable[str], shown: int, *,
                    select_id: str, mode_id: str, shown_id: str) -> str:
    """Controls over ``table_id``: show the rows whose tags hold (or lack) the chosen option, and say
    how many are shown. A row's tags are its ``data-<key>`` attribute, values joined by "|" (give
    them with :func:`table`'s ``row_attributes``); ``shown`` is the count before the script runs."""
    choices = "".join(f'<option value="{esc(option)}">{esc(option)}</option>' for option in options)
    return (f'<div class="controls"><label>{esc(label)} <select id="{select_id}" '
            f'data-filter-table="{table_id}" data-filter-key="{esc(key)}"><option value="">(any)</option>'
            f"{choices}</select></label>"
            f'<label>is <select id="{mode_id}" data-filter-table="{table_id}" data-filter-mode>'
            '<option value="present">present</option><option value="absent">absent</option></select></label>'
            f'<span><span id="{shown_id}" data-shown-table="{table_id}">{shown}</span> shown · '
            "click a column to sort</span></div>")


# --- the page -------------------------------------------------------------------------------------
def asset(package: str, name: str) -> str:
    """A stylesheet or script shipped beside a report's code (package data, read once at import)."""
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


CSS = asset(__package__, "report.css")  # the one stylesheet

# a page loads nothing: no network, no file, only its own inline style and script
CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
       "base-uri 'none'; form-action 'none'")

# At the end of the body, so the tables are there. Sorting: a cell's key is its data-value if it has
# one, else its text; a key that reads as a number sorts as a number (before text), text ignores case.
SCRIPT = asset(__package__, "report.js")


def page(title: str, body: str, *, css: str = "") -> str:
    """A whole HTML document around ``body`` (HTML, in <main>): the CSP that forbids loading anything,
    the one stylesheet plus ``css`` (a report's own few rules), and the one script, at the end."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            '<meta name="generator" content="rlmpipe">\n'
            f"<title>{esc(title)}</title>\n<style>\n{CSS}{css}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
            f"<script>\n{SCRIPT}</script>\n</body>\n</html>\n")
