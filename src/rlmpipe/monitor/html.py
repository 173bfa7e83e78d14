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
CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#e3e6eb; --bg:#ffffff; --panel:#f6f7f9; --bad:#b3261e;
        --link:#1a56b0; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: var(--bg);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; }
a { color: var(--link); }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 36px 0 10px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 0 0 6px; }
code, .code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
.muted { color: var(--muted); fill: var(--muted); }
.facts { display: grid; grid-template-columns: max-content 1fr max-content 1fr; gap: 4px 14px;
         margin: 14px 0; }
.facts dt { color: var(--muted); } .facts dd { margin: 0; overflow-wrap: anywhere; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0 8px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 8px 14px;
        min-width: 120px; }
.card .label { color: var(--muted); font-size: 12px; } .card .value { font-size: 20px; font-weight: 600; }
.card.bad .value { color: var(--bad); }
.card .sub { color: var(--muted); font-size: 11px; }
.note, .warning { border-radius: 4px; padding: 8px 12px; margin: 8px 0; }
.note { background: #eef4ff; border-left: 4px solid var(--link); }
.warning { background: #fff4e5; border-left: 4px solid #d97706; }
.pill { display: inline-block; padding: 0 7px; border-radius: 8px; font-size: 12px; }
.status-done { color: #1e7d32; font-weight: 600; } .status-failed { color: var(--bad); font-weight: 600; }
.status-stopped, .status-running { color: #a45d00; font-weight: 600; }
.figure { margin: 22px 0 30px; } .plot-wrap { overflow-x: auto; }
svg.plot { display: block; max-width: 100%; height: auto; background: #fff; font-family: inherit; }
svg.plot text { fill: var(--fg); } svg.plot text.muted { fill: var(--muted); }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; max-width: 1000px; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; font-size: 12px; margin: 2px 0 6px; }
.legend .key i { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 5px;
                 vertical-align: -2px; }
.controls { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: center; margin: 14px 0 8px; }
.table-wrap { overflow-x: auto; margin: 6px 0 18px; }
table { border-collapse: collapse; font-size: 13px; min-width: 60%; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--panel); position: sticky; top: 0; cursor: pointer; user-select: none;
     white-space: nowrap; }
th.num, td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.error { color: var(--bad); min-width: 260px; max-width: 520px; overflow-wrap: anywhere; }
td.document { min-width: 280px; max-width: 480px; overflow-wrap: anywhere; }
td.document .error { color: var(--bad); font-size: 12px; margin-top: 2px; }
tr.failed td:first-child { border-left: 3px solid var(--bad); }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""

# a page loads nothing: no network, no file, only its own inline style and script
CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
       "base-uri 'none'; form-action 'none'")

# At the end of the body, so the tables are there. Sorting: a cell's key is its data-value if it has
# one, else its text; a key that reads as a number sorts as a number (before text), text ignores case.
SCRIPT = """
(function () {
  function each(list, action) { Array.prototype.forEach.call(list, action); }
  function key(cell) {
    var v = cell.getAttribute('data-value'), plain = v !== null;
    if (!plain) { v = cell.textContent.trim(); }
    var n = plain ? v : v.replace(/,/g, '');
    return n !== '' && !isNaN(n) ? Number(n) : v.toLowerCase();
  }
  function compare(x, y) {
    if (typeof x !== typeof y) { return typeof x === 'number' ? -1 : 1; }
    return x < y ? -1 : x > y ? 1 : 0;
  }
  each(document.querySelectorAll('table.sortable'), function (table) {
    var heads = table.tHead ? table.tHead.rows[0].cells : [];
    each(heads, function (th, index) {
      th.title = 'sort';
      th.addEventListener('click', function () {
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        var order = th.getAttribute('data-order');
        var first = table.getAttribute('data-first-order') || 'desc';
        var dir = order ? (order === 'asc' ? 'desc' : 'asc') : first;
        rows.sort(function (a, b) {
          return compare(key(a.cells[index]), key(b.cells[index])) * (dir === 'asc' ? 1 : -1);
        });
        each(heads, function (h) { h.removeAttribute('data-order'); });
        th.setAttribute('data-order', dir);
        each(rows, function (row) { body.appendChild(row); });
      });
    });
  });
  function filter(id) {
    var table = document.getElementById(id), absent = false, tags = [], shown = 0;
    if (!table) { return; }
    each(document.querySelectorAll('[data-filter-table="' + id + '"]'), function (control) {
      if (control.hasAttribute('data-filter-mode')) { absent = control.value === 'absent'; }
      else if (control.value) { tags.push(control); }
    });
    each(table.tBodies[0].rows, function (row) {
      var visible = tags.every(function (control) {
        var values = (row.getAttribute('data-' + control.getAttribute('data-filter-key')) || '').split('|');
        return (values.indexOf(control.value) >= 0) !== absent;
      });
      row.style.display = visible ? '' : 'none';
      if (visible) { shown++; }
    });
    each(document.querySelectorAll('[data-shown-table="' + id + '"]'), function (count) {
      count.textContent = shown;
    });
  }
  var filtered = {};
  each(document.querySelectorAll('[data-filter-table]'), function (control) {
    var id = control.getAttribute('data-filter-table');
    filtered[id] = true;
    control.addEventListener('change', function () { filter(id); });
  });
  Object.keys(filtered).forEach(filter);
})();
"""


def page(title: str, body: str, *, css: str = "") -> str:
    """A whole HTML document around ``body`` (HTML, in <main>): the CSP that forbids loading anything,
    the one stylesheet plus ``css`` (a report's own few rules), and the one script, at the end."""
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            '<meta name="generator" content="rlmpipe">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}{css}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n"
            f"<script>{SCRIPT}</script>\n</body>\n</html>\n")
