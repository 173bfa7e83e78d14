"""report.html for a corpus, and one page per contract with its evidence highlighted in its text.

Self-contained: inline CSS, inline SVG for the chart, a few lines of inline JavaScript for sorting
and filtering the table; nothing is loaded from the network, so the files open offline and can be
mailed as they are. Every string from a contract or a model is HTML-escaped.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from rlmpipe.apps.contracts.categories import NAMES
from rlmpipe.atomic import write_text_atomic

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
 color:#1d2330;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem}a{color:#1a56b0}
table{border-collapse:collapse;width:100%;font-size:.9rem}th,td{border-bottom:1px solid #dde2ea;
 padding:.35rem .5rem;text-align:left;vertical-align:top}th{background:#f3f5f9;cursor:pointer;user-select:none}
td.num,th.num{text-align:right}.muted{color:#667085}.pill{display:inline-block;padding:0 .45rem;border-radius:8px;
 font-size:.8rem}.high{background:#fde2e1;color:#9b1c1c}.medium{background:#fff1d6;color:#8a5300}
.low{background:#e6f4ea;color:#1e6b35}.score{font-weight:700}
.controls{display:flex;gap:1rem;align-items:center;margin:1rem 0}.cards{display:flex;gap:1rem;flex-wrap:wrap}
.card{background:#f6f8fb;border-radius:10px;padding:.7rem 1rem;min-width:9rem}.card b{font-size:1.3rem;display:block}
pre.contract{white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.82rem;
 background:#fbfbfd;border:1px solid #e3e7ee;padding:1rem;border-radius:8px}
mark{background:#fff3a3;border-radius:2px}mark.risk{background:#ffd6d1}mark.obligation{background:#d6ecff}
mark:target,mark.flash{outline:2px solid #d97706}
ul.findings li{margin:.25rem 0}.quote{color:#475467;font-style:italic}
.warning{background:#fff4e5;border-left:4px solid #d97706;padding:.6rem .9rem;border-radius:4px}
.note{background:#eef4ff;border-left:4px solid #1a56b0;padding:.6rem .9rem;border-radius:4px}
.finder-score{background:#eef0f4;color:#344054}.confirmed{background:#e6f4ea;color:#1e6b35}
.unconfirmed{background:#f3f0ff;color:#5b3cc4}
"""

SCRIPT = """
function sortTable(table, col, numeric){
  const body = table.tBodies[0]; const rows = Array.from(body.rows);
  const dir = table.dataset.sortCol == col && table.dataset.sortDir == 'asc' ? 'desc' : 'asc';
  rows.sort((a, b) => {
    let x = a.cells[col].dataset.value ?? a.cells[col].textContent;
    let y = b.cells[col].dataset.value ?? b.cells[col].textContent;
    if (numeric) { x = parseFloat(x); y = parseFloat(y); }
    return (x < y ? -1 : x > y ? 1 : 0) * (dir == 'asc' ? 1 : -1);
  });
  rows.forEach(r => body.appendChild(r));
  table.dataset.sortCol = col; table.dataset.sortDir = dir;
}
function applyFilter(){
  const category = document.getElementById('category').value;
  const mode = document.getElementById('mode').value;
  let shown = 0;
  document.querySelectorAll('#corpus tbody tr').forEach(row => {
    const present = (row.dataset.categories || '').split('|').includes(category);
    const visible = !category || (mode == 'present' ? present : !present);
    row.style.display = visible ? '' : 'none'; if (visible) shown++;
  });
  document.getElementById('shown').textContent = shown;
}
document.addEventListener('DOMContentLoaded', () => {
  document.querySelectorAll('table.sortable th').forEach((th, index) => {
    th.addEventListener('click', () => sortTable(th.closest('table'), index, th.classList.contains('num')));
  });
  const category = document.getElementById('category');
  if (category) { category.addEventListener('change', applyFilter);
    document.getElementById('mode').addEventListener('change', applyFilter); applyFilter(); }
});
"""

e = html.escape


def slug(path: str, doc_id: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(path).stem).strip("-")[:60] or "contract"
    return f"{stem}-{doc_id[:8]}"


def _page(title: str, body: str, script: bool = False) -> str:
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{e(title)}</title>"
            f"<style>{STYLE}</style>" + (f"<script>{SCRIPT}</script>" if script else "")
            + f"</head><body>{body}</body></html>\n")


def score_histogram(scores: list[int], width: int = 640, height: int = 220) -> str:
    """An SVG histogram of risk scores in bins of ten."""
    bins = [0] * 10
    for score in scores:
        bins[min(9, score // 10)] += 1
    top = max(bins) or 1
    left, bottom, plot_w, plot_h = 40, 30, width - 60, height - 60
    bar_w = plot_w / 10
    parts = [f'<svg id="score-chart" class="plot" role="img" aria-label="risk score distribution" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             f'<line x1="{left}" y1="{height - bottom}" x2="{left + plot_w}" y2="{height - bottom}" stroke="#98a2b3"/>']
    for index, count in enumerate(bins):
        bar_h = plot_h * count / top
        x = left + index * bar_w
        y = height - bottom - bar_h
        colour = "#1e6b35" if index < 3 else "#b7791f" if index < 6 else "#9b1c1c"
        parts.append(f'<rect class="bar" x="{x + 2:.1f}" y="{y:.1f}" width="{bar_w - 4:.1f}" height="{bar_h:.1f}" '
                     f'fill="{colour}"><title>{index * 10}-{index * 10 + 9}: {count} contract(s)</title></rect>')
        if count:
            parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{y - 4:.1f}" font-size="11" text-anchor="middle">{count}</text>')
        parts.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom + 14}" font-size="10" '
                     f'text-anchor="middle">{index * 10}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" font-size="11" text-anchor="middle">'
                 f'risk score (bins of 10)</text>')
    parts.append(f'<text x="12" y="{height / 2}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 12 {height / 2})">contracts</text></svg>')
    return "".join(parts)


def _partial_pill(record: dict) -> str:
    if record.get("status") != "partial":
        return ""
    return (f' <span class="pill medium" title="extraction failed on {len(record["failed_chunks"])} chunk(s): '
            'findings there are missing">partial</span>')


def _severity_counts(record: dict) -> str:
    counts = {level: sum(1 for r in record["risks"] if r["severity"] == level) for level in ("high", "medium", "low")}
    return " ".join(f'<span class="pill {level}">{n} {level}</span>' for level, n in counts.items() if n) or "none"


def corpus_page(records: list[dict], failures: list[dict], run: dict | None) -> str:
    scores = [r["risk_score"] for r in records]
    verified = sum(r["evidence"]["verified"] for r in records)
    rejected = sum(r["evidence"]["rejected"] for r in records)
    partial = [f for f in failures if f.get("status") == "partial"]
    failed_only = [f for f in failures if f.get("status", "failed") == "failed"]
    stopped = [f for f in failures if f.get("status") == "stopped"]
    cards = [("contracts analysed", len(records) - len(partial)), ("partial (some chunks failed)", len(partial)),
             ("failed", len(failed_only)), ("not analysed (run stopped)", len(stopped)),
             ("mean risk score", f"{sum(scores) / len(scores):.0f}" if scores else "-"),
             ("verified quotes", verified), ("quotes rejected (not in the contract)", rejected)]
    rows = []
    for record in records:
        present = [c["category"] for c in record["categories"] if c["present"]]
        page = f"contracts/{slug(record['path'], record['doc_id'])}.html"
        rows.append(
            f'<tr data-categories="{e("|".join(present))}"><td><a href="{e(page)}">{e(record["title"] or Path(record["path"]).name)}'
            f'</a>{_partial_pill(record)}<div class="muted">{e(Path(record["path"]).name)}</div></td>'
            f'<td class="num score" data-value="{record["risk_score"]}">{record["risk_score"]}</td>'
            f'<td class="num" data-value="{len(present)}">{len(present)}</td>'
            f'<td data-value="{len(record["risks"])}">{_needs_lm("risks", record) or _severity_counts(record)}</td>'
            f'<td class="num">{_needs_lm("obligations", record) or len(record["obligations"])}</td>'
            f'<td class="num">{record["evidence"]["rejected"]}</td></tr>')
    options = "".join(f'<option value="{e(name)}">{e(name)}</option>' for name in NAMES)
    failed = "".join(f"<li><b>{e(Path(f['path']).name)}</b> ({e(f.get('status', 'failed'))}): {e(f['error'])}</li>"
                     for f in failures)
    model = (f" · {'no language model' if run['model'] == 'none' else 'model ' + e(run['model'])}"
             f" · run {e(run['run_id'])}") if run else ""
    banner = _mode_note(records)
    if run and run.get("status") not in (None, "done"):
        banner += (f'<p class="warning" role="alert" id="run-status">This run {e(run["status"])} before it finished '
                  f'({e(run.get("stop_reason") or "")}): these outputs are partial and hold what was done. Resume it '
                  f'with <code>rlmpipe resume {e(run["run_id"])}</code>.</p>')
    body = (
        f"<h1>Contract review: {len(records)} contract(s)</h1><p class=\"muted\">rlmpipe contracts analyze{model}</p>"
        + banner
        + "<div class=\"cards\">" + "".join(f"<div class=\"card\"><b>{e(str(v))}</b>{e(k)}</div>" for k, v in cards)
        + "</div><h2>Risk scores</h2>" + score_histogram(scores)
        + "<p class=\"muted\">The score (0-100) is computed from the verified findings by the rubric in README.md.</p>"
        + _nothing_verified_note(records)
        + "<h2>Contracts</h2><div class=\"controls\"><label>category <select id=\"category\"><option value=\"\">"
        "(any)</option>" + options + "</select></label><label>is <select id=\"mode\"><option value=\"present\">"
        "present</option><option value=\"absent\">absent</option></select></label><span><span id=\"shown\">"
        f"{len(records)}</span> shown · click a column to sort</span></div>"
        "<table id=\"corpus\" class=\"sortable\"><thead><tr><th>contract</th><th class=\"num\">risk score</th>"
        "<th class=\"num\">categories present</th><th>risks</th><th class=\"num\">obligations</th>"
        "<th class=\"num\">rejected quotes</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        + (f"<h2>Not fully analysed</h2><ul id=\"unfinished\">{failed}</ul>" if failures else "")
    )
    return _page("Contract review", body, script=True)


def _highlighted(text: str, spans: list[tuple[int, int, str, str]]) -> str:
    """The text with every span wrapped in <mark> (overlaps split into segments), each span's
    start carrying its anchor id."""
    points = sorted({0, len(text), *[s for s, _, _, _ in spans], *[t for _, t, _, _ in spans]})
    starts: dict[int, list[str]] = {}
    for start, _, anchor, _ in spans:
        starts.setdefault(start, []).append(anchor)
    parts = []
    for left, right in zip(points, points[1:]):
        if right <= left:
            continue
        covering = [(anchor, kind) for s, t, anchor, kind in spans if s <= left and right <= t]
        anchors = "".join(f'<a id="{a}"></a>' for a in starts.get(left, []))
        segment = e(text[left:right])
        if covering:
            kind = covering[0][1]
            parts.append(f'{anchors}<mark class="{kind}" title="{e(", ".join(a for a, _ in covering))}">{segment}</mark>')
        else:
            parts.append(anchors + segment)
    return "".join(parts)


def contract_page(record: dict, text: str | None) -> str:
    spans = []
    items = []
    for index, clause in enumerate(record["clauses"]):
        anchor = f"clause-{index}"
        ev = clause["evidence"]
        spans.append((ev["char_start"], ev["char_end"], anchor, "clause"))
        items.append(("clause", clause["category"], f'<li><b>{e(clause["category"])}</b> {_clause_pills(clause)}'
                      f'<a href="#{anchor}">[{ev["char_start"]}-{ev["char_end"]}]</a> '
                      f'<span class="quote">{e(_clip(ev["quote"]))}</span></li>'))
    risk_items = []
    for index, risk in enumerate(record["risks"]):
        anchor = f"risk-{index}"
        ev = risk["evidence"]
        spans.append((ev["char_start"], ev["char_end"], anchor, "risk"))
        risk_items.append(f'<li><span class="pill {risk["severity"]}">{risk["severity"]}</span> <b>{e(risk["what"])}</b>'
                          f' — {e(risk["why"])} <a href="#{anchor}">[{ev["char_start"]}-{ev["char_end"]}]</a></li>')
    obligation_items = []
    for index, obligation in enumerate(record["obligations"]):
        anchor = f"obligation-{index}"
        ev = obligation["evidence"]
        spans.append((ev["char_start"], ev["char_end"], anchor, "obligation"))
        due = f" ({e(obligation['due'])})" if obligation["due"] else ""
        obligation_items.append(f'<li><b>{e(obligation["party"])}</b>: {e(obligation["action"])}{due} '
                                f'<a href="#{anchor}">[{ev["char_start"]}-{ev["char_end"]}]</a></li>')
    present = [c for c in record["categories"] if c["present"]]
    absent = [c["category"] for c in record["categories"] if not c["present"]]
    categories = ("<p>" + (" ".join(f'<span class="pill low">{e(c["category"])} ({c["clauses"]})</span>' for c in present)
                           or "none") + "</p>"
                  + f'<p class="muted">absent ({len(absent)}): {e(", ".join(absent))}</p>')
    breakdown = "".join(f"<li>{e(item['rule'])}: +{item['points']}</li>" for item in record["risk_breakdown"])
    stats = record["evidence"]
    body = (
        f'<p><a href="../report.html">&larr; all contracts</a></p><h1>{e(record["title"] or Path(record["path"]).name)}</h1>'
        f'<p class="muted">{e(record["path"])} · {_how_read(record)} · document {e(record["doc_id"])}</p>'
        f'<div class="cards"><div class="card"><b>{record["risk_score"]}</b>risk score</div>'
        f'<div class="card"><b>{stats["verified"]}</b>verified quotes</div>'
        f'<div class="card"><b>{stats["rejected"]}</b>quotes rejected (not in the contract)</div></div>'
        + _mode_note([record]) + _nothing_verified_note([record])
        + f'<h2>Summary</h2><p>{e(record["summary"])}</p>'
        f'<h2>Score</h2><ul>{breakdown or "<li>no rubric line applied</li>"}</ul>'
        f'<h2>Risks</h2><ul class="findings">{"".join(risk_items) or _none_found("risks", record)}</ul>'
        f'<h2>Obligations</h2><ul class="findings">{"".join(obligation_items) or _none_found("obligations", record)}'
        '</ul>'
        f'<h2>Clauses</h2><ul class="findings">{"".join(i for _, _, i in items) or "<li>none found</li>"}</ul>'
        f'<h2>CUAD categories present</h2>{categories}'
        + (f'<p class="muted">Extraction failed on {len(record["failed_chunks"])} chunk(s); their findings are missing.</p>'
           if record.get("failed_chunks") else "")
        + "<h2>Contract text</h2><p class=\"muted\">Highlighted: clauses (yellow), risks (red), obligations (blue).</p>"
        + (f'<pre class="contract">{_highlighted(text, spans)}</pre>' if text is not None
           else "<p>(the contract file is no longer readable here)</p>")
    )
    return _page(record["title"] or Path(record["path"]).name, body, script=True)


def _mode_note(records: list[dict]) -> str:
    """How the findings were made, when a language model did not read everything."""
    modes = {r.get("mode", "full") for r in records}
    notes = []
    if "finder" in modes:
        notes.append('<p class="note" role="note" id="mode-finder">Found by the trained clause finder alone, '
                     "without a language model: each clause is a passage of the contract whose finder score "
                     "(0-1) cleared its category's threshold. Risks and obligations need a language model: run "
                     "again with <code>--lm MODEL</code> to have one confirm these clauses and add them.</p>")
    if "cascade" in modes:
        notes.append('<p class="note" role="note" id="mode-cascade">The clause finder chose the passages; the '
                     "language model read only those (with their context), confirmed each clause it lists "
                     "(<i>LM-confirmed</i>) and added the risks and obligations. Passages the finder scored low "
                     "were not read: <code>--read all</code> has the model read everything.</p>")
    return "".join(notes)


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


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    report = write_text_atomic(out / "report.html", corpus_page(records, failures, run))
    return report
