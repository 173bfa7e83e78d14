"""The report kit (rlmpipe.monitor.html) that the run report and the contracts report are built on."""

from __future__ import annotations

import re

from rlmpipe.monitor.html import (CSP, Column, card, esc, figure, filter_controls, legend, nice_ticks, num,
                                  page, svg_plot, svg_rect, svg_text, table, tick_label)


def test_esc_escapes_markup_and_quotes():
    assert esc("""<b>&"'""") == "&lt;b&gt;&amp;&quot;&#x27;"
    assert esc(None) == "" and esc(3) == "3"


def test_nice_ticks_cover_the_range_with_round_steps():
    assert nice_ticks(0) == [0.0]
    assert nice_ticks(10) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(7) == [0, 2, 4, 6, 8]
    assert nice_ticks(950) == [0, 200, 400, 600, 800, 1000]
    assert nice_ticks(0.013, 4) == [0, 0.005, 0.01, 0.015]
    assert nice_ticks(12, 5) == [0, 2.5, 5, 7.5, 10, 12.5]
    assert tick_label(0) == "0" and tick_label(1000) == "1,000" and tick_label(2.5) == "2.5"
    assert tick_label(0.0005) == "0.0005"


def test_svg_primitives_are_short_and_escaped():
    assert num(3.0) == "3" and num(2.25) == "2.2" and num(0.04) == "0"
    assert svg_text(1, 2.5, "a<b", anchor="middle", size=11) == (
        '<text x="1" y="2.5" font-size="11" text-anchor="middle">a&lt;b</text>')
    assert 'transform="rotate(-90 12 110)"' in svg_text(12, 110, "y", rotate=True)
    assert svg_rect(0, 0, -5, 3, "#fff") == '<rect x="0" y="0" width="0" height="3" fill="#fff"/>'
    assert svg_rect(0, 0, 1, 1, "red", "x & y").endswith("<title>x &amp; y</title></rect>")
    plot = svg_plot("p", "a <plot>", 640, 219.2, ["<line/>"])
    assert plot.startswith('<svg id="p" class="plot" role="img" width="640" height="220" '
                           'viewBox="0 0 640 220"')
    assert "<title>a &lt;plot&gt;</title><line/></svg>" in plot and "http" not in plot
    shown = figure("p", "Title", plot, "the <b>caption</b>", legend([("#f00", "red <1>"), ("", "muted")]))
    assert shown.startswith('<figure class="figure" id="figure-p"><h3>Title</h3><div class="legend">')
    assert "red &lt;1&gt;" in shown and '<span class="key muted">muted</span>' in shown
    assert "<figcaption>the <b>caption</b></figcaption>" in shown
    assert "<h3>" not in figure("p", "", plot, "c")


def test_table_has_sortable_headers_numeric_sort_values_and_escaped_cells():
    columns = [Column("name", "name <x>"), Column("calls", "calls", "int"),
               Column("seconds", "time", "seconds", cls="extra"), Column("error", "error", "error"),
               Column("link", "link", markup=lambda row: f'<a href="#{row["calls"]}">go</a>')]
    rows = [{"name": "<script>alert(1)</script>", "calls": 12345, "seconds": 0.25, "error": "a & b"},
            {"name": "plain", "calls": None, "seconds": None, "error": None}]
    html = table("t1", columns, rows, row_attributes=lambda row: {"data-tags": row["name"]})
    assert '<table id="t1" class="sortable">' in html and "data-first-order" not in html
    assert '<th>name &lt;x&gt;</th><th class="num">calls</th><th class="num">time</th><th>error</th>' in html
    assert '<td data-value="12345" class="num">12,345</td>' in html
    assert '<td data-value="0.25" class="num extra">0.250s</td>' in html
    assert '<td class="error">a &amp; b</td>' in html and '<a href="#12345">go</a>' in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '<tr data-tags="&lt;script&gt;alert(1)&lt;/script&gt;">' in html
    empty = table("t2", columns, [], empty="none <here>", first_order="asc")
    assert 'data-first-order="asc"' in empty and 'colspan="5" class="muted">none &lt;here&gt;</td>' in empty
    assert "<td" not in table("t3", columns, [], empty=None)


def test_filter_controls_and_cards():
    controls = filter_controls("corpus", "categories", "category", ["A & B"], 3, select_id="category",
                               mode_id="mode", shown_id="shown")
    assert '<select id="category" data-filter-table="corpus" data-filter-key="categories">' in controls
    assert '<option value="A &amp; B">A &amp; B</option>' in controls
    assert '<span id="shown" data-shown-table="corpus">3</span>' in controls
    assert card("calls", "1,234", key="calls", bad=True, sub="<x>") == (
        '<div class="card bad"><div class="label">calls</div>'
        '<div class="value" data-total="calls">1,234</div><div class="sub">&lt;x&gt;</div></div>')


def test_page_is_one_self_contained_document():
    html = page("a <title>", "<p>body</p>", css=".mine{color:red}")
    assert html.startswith("<!DOCTYPE html>\n") and '<meta charset="utf-8">' in html
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in html
    assert "default-src 'none'" in CSP
    assert "<title>a &lt;title&gt;</title>" in html and "<main>\n<p>body</p>\n</main>" in html
    assert html.count("<style>") == 1 and html.count("<script>") == 1
    assert ".mine{color:red}</style>" in html
    assert html.index("</main>") < html.index("<script>"), "the script runs once the tables are there"
    assert not re.search(r"https?://", html) and "<link" not in html
