"""report.html for a corpus, and one page per contract with its evidence highlighted in its text.

Each page is this module's data and markup on the report kit (:mod:`rlmpipe.monitor.html`, shared
with the run report): its page is self-contained (inline style and script, inline SVG for the chart,
a table that sorts and filters), loads nothing, opens offline and can be mailed as it is. Every
string from a contract or a model is escaped with the kit's ``esc``.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from rlmpipe.apps.contracts.categories import NAMES
from rlmpipe.atomic import write_text_atomic
from rlmpipe.monitor.html import (Column, asset, card, esc, figure, filter_controls, page, svg_line,
                                  svg_plot, svg_rect, svg_text, table)

CSS = asset(__package__, "report.css")  # the contracts pages' own rules, after the kit's stylesheet


def slug(path: str, doc_id: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(path).stem).strip("-")[:60] or "contract"
    return f"{stem}-{doc_id[:8]}"


def score_histogram(scores: list[int], width: int = 640, height: int = 220) -> str:
    """An SVG histogram of risk scores in bins of ten, green to red."""
    bins = [0] * 10
    for score in scores:
        bins[min(9, score // 10)] += 1
    top = max(bins) or 1
    left, bottom, plot_w, plot_h = 40, 30, width - 60, height - 60
    bar_w = plot_w / 10
    parts = [svg_line(left, height - bottom, left + plot_w, height - bottom, "#98a2b3")]
    for index, contracts in enumerate(bins):
        bar_h = plot_h * contracts / top
        x, y = left + index * bar_w, height - bottom - bar_h
        colour = "#1e6b35" if index < 3 else "#b7791f" if index < 6 else "#9b1c1c"
        parts.append(svg_rect(x + 2, y, bar_w - 4, bar_h, colour,
                              f"{index * 10}-{index * 10 + 9}: {contracts} contract(s)", ' class="bar"'))
        if contracts:
            parts.append(svg_text(x + bar_w / 2, y - 4, str(contracts), anchor="middle", size=11))
        parts.append(svg_text(x + bar_w / 2, height - bottom + 14, str(index * 10), anchor="middle", size=10))
    parts += [svg_text(left + plot_w / 2, height - 4, "risk score (bins of 10)", anchor="middle", size=11),
              svg_text(12, height / 2, "contracts", anchor="middle", size=11, rotate=True)]
    return svg_plot("score-chart", "risk score distribution", width, height, parts)


def _partial_pill(record: dict) -> str:
    if record.get("status") != "partial":
        return ""
    return (f' <span class="pill medium" title="extraction failed on {len(record["failed_chunks"])} chunk(s): '
            'findings there are missing">partial</span>')


def _severity_counts(record: dict) -> str:
    counts = Counter(risk["severity"] for risk in record["risks"])
    return " ".join(f'<span class="pill {level}">{counts[level]} {level}</span>'
                    for level in ("high", "medium", "low") if counts[level]) or "none"


def corpus_page(records: list[dict], failures: list[dict], run: dict | None) -> str:
    scores = [r["risk_score"] for r in records]
    unfinished = Counter(f.get("status", "failed") for f in failures)  # partial records are in records too
    cards = [("contracts analysed", len(records) - unfinished["partial"]),
             ("partial (some chunks failed)", unfinished["partial"]), ("failed", unfinished["failed"]),
             ("not analysed (run stopped)", unfinished["stopped"]),
             ("mean risk score", f"{sum(scores) / len(scores):.0f}" if scores else "-"),
             ("verified quotes", sum(r["evidence"]["verified"] for r in records)),
             ("quotes rejected (not in the contract)", sum(r["evidence"]["rejected"] for r in records))]
    rows = []
    for r in records:
        present = [c["category"] for c in r["categories"] if c["present"]]
        rows.append({"record": r, "present": present, "categories": len(present),
                     "risk_score": r["risk_score"], "risks": len(r["risks"]),
                     "obligations": len(r["obligations"]), "rejected": r["evidence"]["rejected"]})
    columns = [
        Column("contract", "contract", markup=_contract_cell),
        Column("risk_score", "risk score", "int", cls="score"),
        Column("categories", "categories present", "int"),
        Column("risks", "risks", markup=lambda row: _needs_lm("risks", row["record"])
               or _severity_counts(row["record"])),
        Column("obligations", "obligations", "int", markup=lambda row: _needs_lm("obligations", row["record"])
               or str(row["obligations"])),
        Column("rejected", "rejected quotes", "int"),
    ]
    failed = "".join(f"<li><b>{esc(Path(f['path']).name)}</b> ({esc(f.get('status', 'failed'))}): "
                     f"{esc(f['error'])}</li>" for f in failures)
    model = (f" · {'no language model' if run['model'] == 'none' else 'model ' + esc(run['model'])}"
             f" · run {esc(run['run_id'])}") if run else ""
    banner = _mode_note(records)
    if run and run.get("status") not in (None, "done"):
        banner += (f'<p class="warning" role="alert" id="run-status">This run {esc(run["status"])} before '
                   f'it finished ({esc(run.get("stop_reason") or "")}): these outputs are partial and hold '
                   f'what was done. Resume it with <code>rlmpipe resume {esc(run["run_id"])}</code>.</p>')
    body = (
        f"<h1>Contract review: {len(records)} contract(s)</h1>"
        f'<p class="muted">rlmpipe contracts analyze{model}</p>' + banner + _cards(cards)
        + "<h2>Risk scores</h2>" + figure("score-chart", "", score_histogram(scores), "The score (0-100) is "
                                          "computed from the verified findings by the rubric in README.md.")
        + _nothing_verified_note(records) + "<h2>Contracts</h2>"
        + filter_controls("corpus", "categories", "category", NAMES, len(records), select_id="category",
                          mode_id="mode", shown_id="shown")
        + table("corpus", columns, rows, empty=None, first_order="asc",
                row_attributes=lambda row: {"data-categories": "|".join(row["present"])})
        + (f'<h2>Not fully analysed</h2><ul id="unfinished">{failed}</ul>' if failures else "")
    )
    return page("Contract review", body, css=CSS)


def _contract_cell(row: dict) -> str:
    record = row["record"]
    link = f"contracts/{slug(record['path'], record['doc_id'])}.html"
    return (f'<a href="{esc(link)}">{esc(_title(record))}</a>'
            f'{_partial_pill(record)}<div class="muted">{esc(Path(record["path"]).name)}</div>')


#: which highlight colours a stretch of text covered by several: findings over their passages
_PRIORITY = {"clause": 0, "risk": 1, "obligation": 2, "passage": 3}


def _highlighted(text: str, spans: list[tuple[int, int, str, str, str]]) -> str:
    """The text with every span ``(start, end, anchor, kind, label)`` wrapped in <mark> (overlaps
    split into segments). A segment is coloured by its most specific span (a clause over the
    passage it was narrowed from) and names every span over it on hover (its category, or what
    the risk or obligation is); a span's first segment carries its anchor and a left rule, so
    adjacent highlights stay apart."""
    points = sorted({0, len(text), *[s for s, *_ in spans], *[t for _, t, *_ in spans]})
    starts: dict[int, list[tuple[str, str]]] = {}
    for start, _, anchor, kind, _ in spans:
        starts.setdefault(start, []).append((anchor, kind))
    parts = []
    for left, right in zip(points, points[1:]):  # between consecutive span boundaries
        covering = sorted((_PRIORITY.get(kind, 9), label, kind) for s, t, _, kind, label in spans
                          if s <= left and right <= t)
        opening = starts.get(left, [])
        anchors = "".join(f'<a id="{esc(anchor)}"></a>' for anchor, kind in opening if kind != "passage")
        segment = esc(text[left:right])
        if covering:
            kind = covering[0][2]
            labels = list(dict.fromkeys(label for _, label, _ in covering))
            edge = " start" if any(k == kind for _, k in opening) else ""
            segment = f'<mark class="{kind}{edge}" title="{esc("; ".join(labels))}">{segment}</mark>'
        parts.append(anchors + segment)
    return "".join(parts)


def contract_page(record: dict, text: str | None) -> str:
    """A contract's page: its findings, each linked to its quote, highlighted in the contract's text
    (a clause the finder narrowed from a passage: the clause strongly, its passage lightly)."""
    spans: list[tuple[int, int, str, str, str]] = []

    def link(kind: str, index: int, evidence: dict, label: str, passage: dict | None = None) -> str:
        """The link to a finding's quote, whose span (and passage) is kept to be highlighted."""
        anchor, start, end = f"{kind}-{index}", evidence["char_start"], evidence["char_end"]
        spans.append((start, end, anchor, kind, label))
        if passage:
            spans.append((passage["char_start"], passage["char_end"], f"passage-{index}", "passage",
                          f"{label} (its passage)"))
        return f'<a href="#{anchor}">[{start}-{end}]</a>'

    clauses = "".join(f'<li><b>{esc(clause["category"])}</b> {_clause_pills(clause)}'
                      f'{link("clause", index, clause["evidence"], clause["category"], clause.get("passage"))} '
                      f'<span class="quote">{esc(clause["evidence"]["quote"])}</span></li>'
                      for index, clause in enumerate(record["clauses"]))
    risks = "".join(f'<li><span class="pill {risk["severity"]}">{risk["severity"]}</span> '
                    f'<b>{esc(risk["what"])}</b> — {esc(risk["why"])} '
                    f'{link("risk", index, risk["evidence"], "risk: " + risk["what"])}'
                    "</li>" for index, risk in enumerate(record["risks"]))
    obligations = "".join(f'<li><b>{esc(item["party"])}</b>: {esc(item["action"])}'
                          + (f" ({esc(item['due'])})" if item["due"] else "")
                          + f' {link("obligation", index, item["evidence"], "obligation of " + item["party"])}</li>'
                          for index, item in enumerate(record["obligations"]))
    present = [c for c in record["categories"] if c["present"]]
    absent = [c["category"] for c in record["categories"] if not c["present"]]
    categories = ("<p>" + (" ".join(f'<span class="pill low">{esc(c["category"])} ({c["clauses"]})</span>'
                                    for c in present) or "none") + "</p>"
                  + f'<p class="muted">absent ({len(absent)}): {esc(", ".join(absent))}</p>')
    breakdown = "".join(f"<li>{esc(item['rule'])}: +{item['points']}</li>" for item in record["risk_breakdown"])
    stats = record["evidence"]
    body = (
        f'<p><a href="../report.html">&larr; all contracts</a></p><h1>{esc(_title(record))}</h1>'
        f'<p class="muted">{esc(record["path"])} · {_how_read(record)} · document {esc(record["doc_id"])}</p>'
        + _cards([("risk score", record["risk_score"]), ("verified quotes", stats["verified"]),
                  ("quotes rejected (not in the contract)", stats["rejected"])])
        + _mode_note([record]) + _nothing_verified_note([record])
        + f'<h2>Summary</h2><p>{esc(record["summary"])}</p>'
        f'<h2>Score</h2><ul>{breakdown or "<li>no rubric line applied</li>"}</ul>'
        f'<h2>Risks</h2><ul class="findings">{risks or _none_found("risks", record)}</ul>'
        f'<h2>Obligations</h2><ul class="findings">{obligations or _none_found("obligations", record)}</ul>'
        f'<h2>Clauses</h2><ul class="findings">{clauses or "<li>none found</li>"}</ul>'
        f'<h2>CUAD categories present</h2>{categories}'
        + (f'<p class="muted">Extraction failed on {len(record["failed_chunks"])} chunk(s); their findings '
           'are missing.</p>' if record.get("failed_chunks") else "")
        + "<h2>Contract text</h2><p class=\"muted\">Highlighted: clauses (yellow; the passage the finder found "
          "each in, pale), risks (red), obligations (blue). Hover a highlight to see what it is.</p>"
        + (f'<pre class="contract">{_highlighted(text, spans)}</pre>' if text is not None
           else "<p>(the contract file is no longer readable here)</p>")
    )
    return page(_title(record), body, css=CSS)


def _title(record: dict) -> str:
    """A contract's title, or its file name when none was found."""
    return record["title"] or Path(record["path"]).name


def _cards(figures: list[tuple[str, object]]) -> str:
    """The headline figures of a page, as cards."""
    return '<div class="cards">' + "".join(card(label, str(value)) for label, value in figures) + "</div>"


def _mode_note(records: list[dict]) -> str:
    """How the findings were made, when a language model did not read everything."""
    modes = {r.get("mode", "full") for r in records}
    finder = ('<p class="note" role="note" id="mode-finder">Found by the trained clause finder alone, '
              "without a language model: each clause is the sentences (or words) of the contract that make "
              "it, inside a passage whose finder score (0-1) cleared its category's threshold (highlighted "
              "pale around it). Risks and obligations need a language model: run "
              "again with <code>--lm MODEL</code> to have one confirm these clauses and add them.</p>")
    cascade = ('<p class="note" role="note" id="mode-cascade">The clause finder chose the passages; the '
               "language model read only those (with their context), confirmed each clause it lists "
               "(<i>LM-confirmed</i>) and added the risks and obligations. Passages the finder scored low "
               "were not read: <code>--read all</code> has the model read everything.</p>")
    return (finder if "finder" in modes else "") + (cascade if "cascade" in modes else "")


def _clause_pills(clause: dict) -> str:
    pills = ""
    if clause.get("score") is not None:
        pills += f'<span class="pill finder-score" title="the clause finder\'s score">score {clause["score"]:.2f}</span> '
    if clause.get("confirmed"):
        pills += '<span class="pill confirmed" title="a language model found or confirmed it">LM-confirmed</span> '
    elif clause.get("score") is not None:
        pills += '<span class="pill unconfirmed" title="no language model checked it">finder only</span> '
    return pills


def _needs_lm(kind: str, record: dict) -> str:
    return '<span class="muted">needs an LM</span>' if kind in (record.get("needs_lm") or []) else ""


def _none_found(kind: str, record: dict) -> str:
    if kind in (record.get("needs_lm") or []):
        return (f'<li class="muted">not looked for: {kind} need a language model '
                "(<code>--lm MODEL</code>)</li>")
    return "<li>none found</li>"


def _how_read(record: dict) -> str:
    mode = record.get("mode", "full")
    if mode == "finder":
        return "clause finder only (no language model)"
    if mode == "cascade":
        return f'{record["chunks"]} LM call(s) on the passages the finder flagged'
    return f'{record["chunks"]} chunk(s) read by the LM'


def _nothing_verified_note(records: list[dict]) -> str:
    """A warning where contracts have no verified finding at all: their score then comes only from the
    rubric's "no X" lines, and "absent" means "the model found nothing", not "the contract lacks it"."""
    empty = [r for r in records if r["evidence"]["verified"] == 0 and r.get("mode", "full") != "finder"]
    if not empty:
        return ""
    proposed = sum(r["evidence"]["proposed"] for r in empty)
    rejected = sum(r["evidence"]["rejected"] for r in empty)
    which, whose = (("This contract has", "Its") if len(records) == 1
                    else (f"{len(empty)} of {len(records)} contract(s) have", "Their"))
    return (f'<p class="warning" role="note">{which} no verified finding (the model proposed {proposed} '
            f'quote(s), {rejected} not found in the contract). {whose} score counts only categories that were not '
            "found, which may be there: check the model (<code>--lm</code>) before relying on it.</p>")


def write_corpus_report(records: list[dict], failures: list[dict], out: Path, run: dict | None = None) -> Path:
    from rlmpipe.ingest import DocumentError, open_document

    pages = out / "contracts"
    pages.mkdir(parents=True, exist_ok=True)
    for record in records:
        try:
            document = open_document(record["path"])
            text = document.text() if document.doc_id == record["doc_id"] else None
        except DocumentError:
            text = None
        write_text_atomic(pages / f"{slug(record['path'], record['doc_id'])}.html", contract_page(record, text))
    return write_text_atomic(out / "report.html", corpus_page(records, failures, run))
