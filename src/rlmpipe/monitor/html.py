"""The HTML and SVG kit of rlmpipe's reports: the run report (``runs report``) and the contracts report.

One place for what every report page needs, so that the reports look alike and are safe alike:
escaping, number formats, inline-SVG primitives, a sortable and filterable table, one stylesheet,
one script and the page around them. A page built by :func:`page` is self-contained (inline style,
script and SVG, and a Content-Security-Policy that forbids loading anything), so it opens offline
and can be mailed as it is.

The markup is in Jinja2 templates (``templates/``, package data) with autoescape on, so escaping is
what happens unless a value is marked as markup (:func:`markup`); :func:`render` fills one. Only the
SVG primitives stay in Python (each a line or two, escaping their text with :func:`esc`). Every
function here returns a plain ``str``, so callers may join its pieces as they like.

Layering: ``rlmpipe.apps`` may import this module; it imports nothing of ``rlmpipe.apps``.
"""

from __future__ import annotations

import functools
import html
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources

import jinja2
from markupsafe import Markup


# --- templates -----------------------------------------------------------------------------------
def markup(text: str) -> Markup:
    """``text`` as HTML a template inserts as it is (it must already be escaped where it holds data)."""
    return Markup(text)


def _attrs(attributes: dict | None) -> Markup:
    """`` name="value"`` for each attribute (values escaped); a None value leaves its attribute out."""
    return Markup("".join(f' {name}="{esc(value)}"' for name, value in (attributes or {}).items()
                          if value is not None))


def environment(package: str = __package__) -> jinja2.Environment:
    """The templates of ``package`` (its ``templates`` folder), autoescaped; an app's templates may
    import the kit's macros (``{% import "kit.html" as kit %}``). One per package (filters added to it
    stay)."""
    return _environment(package)


@functools.cache
def _environment(package: str) -> jinja2.Environment:
    loaders = [jinja2.PackageLoader(package, "templates")]
    if package != __package__:
        loaders.append(jinja2.PackageLoader(__package__, "templates"))
    env = jinja2.Environment(loader=jinja2.ChoiceLoader(loaders), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["attrs"] = _attrs
    env.filters["count"] = lambda value: count(value)
    return env


def render(template: str, package: str = __package__, **context) -> str:
    """A template of ``package`` filled with ``context``, as a plain string."""
    return str(environment(package).get_template(template).render(**context))


def _kit(name: str, *args, **kwargs) -> str:
    """One of the kit's macros (templates/kit.html), as a plain string."""
    return str(getattr(environment().get_template("kit.html").module, name)(*args, **kwargs))


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
    return _kit("figure", plot_id, title, Markup(svg), Markup(caption), Markup(legend))


def legend(items: Iterable[tuple[str, str]]) -> str:
    """A legend of (colour, label) keys, in HTML above the plot (it wraps and stays readable when the
    plot scales down); an item without a colour is a muted label."""
    return _kit("legend", list(items))


# --- cards and tables -----------------------------------------------------------------------------
def card(label: str, value: str, *, key: str = "", bad: bool = False, sub: str = "") -> str:
    """One headline figure (put cards in ``<div class="cards">``): a label over a large value, red if
    ``bad``; ``key`` names the value (data-total) for tests and scripts; ``sub`` is a small note."""
    return _kit("card", label, value, key=key, bad=bad, sub=sub)


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


def _cell(column: Column, row: dict) -> tuple[dict, str | Markup]:
    """One cell of :func:`table`: its attributes (a number also in data-value), and its markup or text."""
    value = row.get(column.key)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    kind = "num" if column.kind in NUMERIC_KINDS else "" if column.kind == "text" else column.kind
    classes = " ".join(c for c in (kind, column.cls) if c)
    attributes = {"data-value": value if numeric else None, "class": classes or None}
    if column.markup is not None:
        return attributes, Markup(column.markup(row))
    if column.fmt is not None:
        return attributes, column.fmt(row)
    if column.kind == "int":
        return attributes, count(value)
    return attributes, "" if value is None else (f"{value:.3f}s" if column.kind == "seconds" else value)


def table(table_id: str, columns: list[Column], rows: list[dict], *, empty: str | None = "nothing to show",
          row_attributes: Callable[[dict], dict[str, str]] | None = None, first_order: str = "desc") -> str:
    """A table that sorts on a click on a heading (numbers as numbers; a second click reverses it;
    ``first_order`` is the first click's order) and that :func:`filter_controls` can filter.
    ``row_attributes`` gives each row's attributes (escaped here), e.g. the tags a filter reads;
    ``empty`` is the row shown when there is none (None: no row)."""
    head = [(column.label, column.kind in NUMERIC_KINDS) for column in columns]
    body = [(row_attributes(row) if row_attributes else {}, [_cell(column, row) for column in columns])
            for row in rows]
    return _kit("table", table_id, head, body, empty, len(columns), first_order)


def filter_controls(table_id: str, key: str, label: str, options: Iterable[str], shown: int, *,
                    select_id: str, mode_id: str, shown_id: str) -> str:
    """Controls over ``table_id``: show the rows whose tags hold (or lack) the chosen option, and say
    how many are shown. A row's tags are its ``data-<key>`` attribute, values joined by "|" (give
    them with :func:`table`'s ``row_attributes``); ``shown`` is the count before the script runs."""
    return _kit("filter_controls", table_id, key, label, list(options), shown, select_id, mode_id, shown_id)


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
    return render("page.html", title=title, body=Markup(body), csp=Markup(CSP), css=Markup(CSS + css),
                  script=Markup(SCRIPT))
