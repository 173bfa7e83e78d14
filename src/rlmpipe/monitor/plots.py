"""The run report's plots: the sessions of a run and the time axis they share, and the four kinds of
plot (the timeline of LM calls, the latency histogram, tokens and cost by row, failures over time),
each with the data it draws, read from the run's calls as a stream.

Every plot is inline SVG drawn here, with the report kit (:mod:`rlmpipe.monitor.html`). Size stays
bounded for large runs: the timeline merges consecutive calls of a worker into one bar when there
are more calls than ``MAX_TIMELINE_BARS`` (and says so), histograms and time buckets have a fixed
number of bins; and only the bars, bins and sums are kept, not the calls.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from rlmpipe.lm.usage import FREE_OUTCOMES, percentiles
from rlmpipe.monitor.formats import cost_text, duration
from rlmpipe.monitor.html import (count, esc, figure, legend, nice_ticks, num, svg_line, svg_plot, svg_rect,
                                  svg_text, tick_label)
from rlmpipe.monitor.render import run_state

MAX_TIMELINE_BARS = 2500  # bars in the timeline; more calls than this are merged evenly
FAILURE_BUCKETS = 60  # about this many time buckets in the failures plot

WIDTH = 1100  # every plot's viewBox width (it scales down with the page)

OUTCOME_SHADES = {  # by recursion depth: 0 is the darkest shade, deeper calls are lighter
    "ok": ["#1f5f99", "#3f86c8", "#7fb0e0", "#b5d2ef"],
    "error": ["#b3261e", "#dc4c43", "#ee8a83", "#f6bdb8"],
    "cached": ["#3d7a23", "#6aa84f", "#9fcc86", "#cde5bf"],
    "replayed": ["#6b5b95", "#8e7cc3", "#b4a7d6", "#d9d2e9"],
}
TOKEN_IN, TOKEN_OUT, COST_COLOUR = "#3f6fb5", "#9cc0ea", "#c98a1b"
ERROR_TYPE_COLOURS = {
    "rate_limit": "#e8912d", "server": "#c8372d", "timeout": "#7b4bb5", "connection": "#8c564b",
    "malformed_response": "#d45fa8", "bad_request": "#6b1d1d", "context_window": "#2f7f7a",
    "parse": "#7a7a2f", "unexpected": "#555555",
}
EXTRA_COLOURS = ["#17a2b8", "#9a6324", "#808000", "#469990", "#911eb4", "#f032e6", "#000075", "#aaaa00"]
RETRY_COLOUR = "#222222"


# --- small helpers ------------------------------------------------------------------------------
def clock(value: float, step: float) -> str:
    """A tick label: ``value`` seconds since run start, down to the unit that ``step`` needs
    (2d00h05m when a resumed session starts two days in, 1m30s, 0.25s)."""
    if value < 60 and step < 60:
        decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
        return f"{value:.{decimals}f}s"
    smallest = 0 if step < 60 else 1 if step < 3600 else 2 if step < 86400 else 3
    whole = round(value) if smallest == 0 else int(round(value / 60) * 60) if smallest == 1 else int(value)
    amounts = [whole % 60, whole // 60 % 60, whole // 3600 % 24, whole // 86400]  # s, m, h, d
    largest = max([smallest] + [i for i, amount in enumerate(amounts) if amount])
    return "".join(f"{amounts[i]}{'smhd'[i]}" if i == largest else f"{amounts[i]:02d}{'smhd'[i]}"
                   for i in range(largest, smallest - 1, -1))


def short_path(path: str, limit: int = 30) -> str:
    name = Path(path).name or path
    return name if len(name) <= limit else name[: limit - 1] + "…"


NICE_STEPS = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 15, 30,
              60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400]


def nice_time_step(raw: float) -> float:
    """The smallest step of NICE_STEPS not below ``raw`` (whole days beyond), so ticks fall on round times."""
    return next((step for step in NICE_STEPS if step >= raw), 86400 * math.ceil(raw / 86400))


def _shade(outcome: str, depth: int) -> str:
    shades = OUTCOME_SHADES.get(outcome, OUTCOME_SHADES["ok"])
    return shades[min(max(depth or 0, 0), len(shades) - 1)]


def _call_end(call: dict) -> float:
    return call["started"] + max(call["latency"] or 0.0, 0.0)



# --- sessions and the time axis -----------------------------------------------------------------
@dataclass
class Session:
    number: int
    start: float
    end: float
    status: str | None = None  # from the run_end event; None if the session ended without one
    reason: str | None = None
    attempts: int = 0
    errors: int = 0
    retries: int = 0

    @property
    def seconds(self) -> float:
        return max(self.end - self.start, 0.0)


def build_sessions(run: dict, calls: Iterable[dict], events: list[dict]) -> list[Session]:
    """The sessions, from the event log's run_start and run_end events and the calls' own times (the
    log may be gone, or may miss an end when a session was killed)."""
    starts: dict[int, float] = {}
    ends: dict[int, dict] = {}
    current: int | None = None
    for event in events:
        if event.get("type") == "run_start" and isinstance(event.get("session"), int):
            current = event["session"]
            starts[current] = float(event.get("time") or 0)
        elif event.get("type") == "run_end" and current is not None:
            ends[current] = event
    span: dict[int, list[float]] = {}
    per_session: dict[int, Counter] = defaultdict(Counter)
    for call in calls:
        number = call.get("session") or 1
        begin, finish = call["started"], _call_end(call)
        low, high = span.get(number, (begin, finish))
        span[number] = [min(low, begin), max(high, finish)]
        if call["outcome"] not in FREE_OUTCOMES:
            per_session[number]["attempts"] += 1
            per_session[number]["errors"] += call["outcome"] == "error"
            per_session[number]["retries"] += call["attempt"] > 1
    sessions = []
    numbers = sorted(set(starts) | set(span))
    for index, number in enumerate(numbers):
        begin = min(x for x in (starts.get(number), span.get(number, [None])[0]) if x is not None)
        end_event = ends.get(number)
        finishes = ([span[number][1]] if number in span else []) + (
            [float(end_event.get("time") or begin)] if end_event is not None else [])
        session = Session(number, begin, max(finishes + [begin]), status=(end_event or {}).get("status"),
                          reason=(end_event or {}).get("reason"), **per_session.get(number, {}))
        if end_event is None:
            last = index == len(numbers) - 1
            if last and run["status"] == "running":
                session.status = run_state(run)
            elif last and not events:  # no event log (deleted, or written elsewhere): as the run ended
                session.status, session.reason = run["status"], run["stop_reason"]
            else:
                session.status = "unknown (no event log)" if not events else "no end recorded (killed?)"
        sessions.append(session)
    return sessions


@dataclass
class Segment:
    session: Session
    x: float
    width: float

    def x_at(self, t: float) -> float:
        fraction = (t - self.session.start) / max(self.session.seconds, 1e-6)
        return self.x + min(max(fraction, 0.0), 1.0) * self.width


class TimeAxis:
    """Time from run start, in one segment per session: the idle time between sessions is cut out
    (a resumed run may wait days between sessions); segments are proportional to their duration,
    each at least a minimum width so that a short session stays visible."""

    GAP = 30

    def __init__(self, sessions: list[Session], x0: float, width: float):
        self.run_start = sessions[0].start if sessions else 0.0
        self.x0, self.width = x0, width
        self.segments: dict[int, Segment] = {}
        count_ = len(sessions)
        available = width - self.GAP * (count_ - 1)
        minimum = min(0.08, 0.5 / count_) if count_ > 1 else 1.0
        durations = [max(s.seconds, 1e-6) for s in sessions]
        total, x = sum(durations), x0
        for session, seconds in zip(sessions, durations, strict=True):
            segment = Segment(session, x, available * (minimum + (1 - minimum * count_) * seconds / total))
            self.segments[session.number] = segment
            x += segment.width + self.GAP

    def x(self, t: float, session: int | None) -> float:
        return (self.segments.get(session or 1) or next(iter(self.segments.values()))).x_at(t)

    def draw(self, top: float, bottom: float, pattern: str) -> list[str]:
        """Ticks, tick labels and the x-axis label under ``bottom``, session labels above ``top``,
        and the breaks between sessions (filled with the SVG pattern ``pattern``)."""
        parts: list[str] = []
        segments = list(self.segments.values())
        for index, segment in enumerate(segments):
            session = segment.session
            step = nice_time_step(max(session.seconds, 1e-6) * 90 / max(segment.width, 1))
            value = math.ceil((session.start - self.run_start) / step - 1e-9) * step
            while value <= session.end - self.run_start + 1e-9:
                x = segment.x_at(self.run_start + value)
                parts += [svg_line(x, bottom, x, bottom + 5, "#666"), svg_line(x, top, x, bottom, "#e6e6e6")]
                crowded = ((index > 0 and x < segment.x + 24)  # labels of neighbouring sessions would touch
                           or (index < len(segments) - 1 and x > segment.x + segment.width - 24))
                if not crowded:
                    parts.append(svg_text(x, bottom + 18, clock(value, step), anchor="middle", size=11))
                value += step
            parts.append(svg_line(segment.x, bottom, segment.x + segment.width, bottom, "#666"))
            if len(segments) > 1:
                name = f"session {session.number}" if segment.width >= 64 else f"{session.number}"
                parts.append(svg_text(segment.x + 2, top - 8, name, size=11, weight="bold"))
            if index:  # the break before this session
                previous = segments[index - 1]
                gap_x, idle = previous.x + previous.width, session.start - previous.session.end
                parts += [svg_rect(gap_x + 4, top, self.GAP - 8, bottom - top, f"url(#{pattern})",
                                   f"session {session.number} starts: resumed after {duration(idle)} idle"),
                          svg_line(segment.x, top - 20, segment.x, bottom + 5, "#333",
                                   ' stroke-dasharray="4 3"')]
                parts += [svg_line(gap_x + dx, bottom + 6, gap_x + dx + 8, bottom - 6, "#333")
                          for dx in (3, 9)]  # the axis break mark //
                if segment.width >= 240:
                    parts.append(svg_text(segment.x + 70, top - 8, f"(resumed, +{duration(idle)} idle)",
                                          size=10, cls="muted"))
        parts.append(_axis_title(self.x0 + self.width / 2, bottom + 38,
                                 "time since run start (idle time between sessions cut out)"))
        return parts


def _break_pattern(pattern: str) -> str:
    """The hatching of the breaks between sessions (one per plot: ids are unique in a page)."""
    return (f'<defs><pattern id="{pattern}" width="6" height="6" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)"><rect width="6" height="6" fill="#f2f2f2"/>'
            '<line x1="0" y1="0" x2="0" y2="6" stroke="#bbb" stroke-width="2"/></pattern></defs>')


def _axis_title(x: float, y: float, text: str, rotate: bool = False) -> str:
    """An axis's title centred on (x, y), turned a quarter left for a y axis."""
    return svg_text(x, y, text, anchor="middle", size=12, rotate=rotate)


def _axes(left: float, top: float, right: float, bottom: float) -> list[str]:
    """The x axis along ``bottom`` and the y axis along ``left``."""
    return [svg_line(left, bottom, right, bottom, "#666"), svg_line(left, top, left, bottom, "#666")]


def _y_grid(ticks: list[float], y: Callable[[float], float], left: float, right: float) -> list[str]:
    """A grid line from ``left`` to ``right`` at each tick (``y`` maps a value to its height), its
    label left of the plot."""
    return [part for tick in ticks for part in (
        svg_line(left, y(tick), right, y(tick), "#eee"),
        svg_text(left - 6, y(tick) + 4, tick_label(tick), anchor="end", size=11))]


def _x_grid(ticks: list[float], x: Callable[[float], float], top: float, bottom: float,
            label: Callable[[float], str] = tick_label) -> list[str]:
    """A grid line from ``top`` to ``bottom`` at each tick (``x`` maps a value to its place), its
    label under the plot."""
    return [part for tick in ticks for part in (
        svg_line(x(tick), top, x(tick), bottom, "#eee"),
        svg_text(x(tick), bottom + 16, label(tick), anchor="middle", size=11))]


# --- plots --------------------------------------------------------------------------------------
def _empty(plot_id: str, title: str, message: str, caption: str, height: int = 120) -> str:
    """The figure of a plot with nothing to draw: a grey box that says why."""
    return figure(plot_id, title, svg_plot(plot_id, title, WIDTH, height, [
        svg_rect(0.5, 0.5, WIDTH - 1, height - 1, "#fafafa", extra=' stroke="#ddd"'),
        svg_text(WIDTH / 2, height / 2, message, anchor="middle", size=14, cls="muted")]), caption)


@dataclass
class Bar:
    """One bar of the timeline: one call, or consecutive calls of one worker in one session."""

    worker: str
    session: int
    start: float
    end: float
    outcomes: Counter
    depths: Counter
    call: dict | None  # the call, while the bar is one call (its hover text tells it all)
    calls: int = 1

    @classmethod
    def of(cls, call: dict, worker: str, session: int) -> "Bar":
        return cls(worker, session, call["started"], _call_end(call), Counter([call["outcome"]]),
                   Counter([call["depth"] or 0]), call)

    def add(self, call: dict) -> None:
        self.start, self.end = min(self.start, call["started"]), max(self.end, _call_end(call))
        self.outcomes[call["outcome"]] += 1
        self.depths[call["depth"] or 0] += 1
        self.calls, self.call = self.calls + 1, None


@dataclass
class Timeline:
    """What the timeline draws: one bar per call, or, with more calls than ``max_bars``, bars that each
    merge ``per_bar`` consecutive calls of a worker. Read in two passes over the calls (sizes, then
    bars), holding one open bar per worker: the bars, not the calls, are what stays in memory."""

    calls: int
    per_bar: int
    max_bars: int
    lanes: list[str]  # worker names, in natural order
    depths: list[int]
    bars: list[Bar]  # by (worker, session) in order of their first call, then by time

    @classmethod
    def build(cls, calls: Callable[[], Iterable[dict]], max_bars: int) -> "Timeline":
        def key(call: dict) -> tuple[str, int]:
            return call["worker"] or "(unknown)", call.get("session") or 1

        sizes: Counter = Counter()
        depths = set()
        for call in calls():
            sizes[key(call)] += 1
            depths.add(call["depth"] or 0)
        total = sum(sizes.values())
        per_bar = max(1, math.ceil(total / max_bars))
        largest = max(sizes.values(), default=0)
        while per_bar < largest and sum(math.ceil(n / per_bar) for n in sizes.values()) > max_bars:
            # each (worker, session) rounds up: merge a little more until the bars fit, or one each
            per_bar += 1
        bars: dict[tuple[str, int], list[Bar]] = {group: [] for group in sizes}
        open_bars: dict[tuple[str, int], Bar] = {}
        for call in calls():  # in start order
            group = key(call)
            bar = open_bars.get(group)
            if bar is None:
                bar = open_bars[group] = Bar.of(call, *group)
            else:
                bar.add(call)
            if bar.calls >= per_bar:
                bars.setdefault(group, []).append(open_bars.pop(group))
        for group, bar in open_bars.items():
            bars[group].append(bar)
        lanes = sorted({worker for worker, _ in sizes}, key=lambda name: [
            int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)])  # natural order
        return cls(total, per_bar, max_bars, lanes, sorted(depths),
                   [b for group in bars.values() for b in group])


def timeline_plot(timeline: Timeline, sessions: list[Session], doc_paths: dict) -> str:
    plot_id, title = "plot-timeline", "Timeline of LM calls by worker thread"
    if not timeline.calls:
        return _empty(plot_id, title, "no LM calls recorded", "No LM call was recorded for this run.")
    lanes, per_bar, max_bars = timeline.lanes, timeline.per_bar, timeline.max_bars
    lane_h = max(5.0, min(22.0, 560.0 / len(lanes)))
    left, right, top = 150, 20, 48
    plot_h = lane_h * len(lanes)
    bottom = top + plot_h
    axis = TimeAxis(sessions, left, WIDTH - left - right)
    parts = [_break_pattern(f"{plot_id}-break")]
    parts += [svg_rect(left, top + i * lane_h, WIDTH - left - right, lane_h, "#f7f7f7")
              for i in range(1, len(lanes), 2)]  # every other lane shaded
    parts += axis.draw(top, bottom, f"{plot_id}-break")
    label_size = max(8, min(12, int(lane_h * 0.75)))
    label_every = 1 if lane_h >= 8 else math.ceil(9 / lane_h)
    parts += [svg_text(left - 6, top + i * lane_h + lane_h / 2 + label_size / 3, name, anchor="end",
                       size=label_size) for i, name in enumerate(lanes) if i % label_every == 0]
    bar_h = max(lane_h - 3, 2)
    bars = markers = 0
    for bar in timeline.bars:
        session, outcomes, depths = bar.session, bar.outcomes, bar.depths
        y = top + lanes.index(bar.worker) * lane_h + (lane_h - bar_h) / 2
        x1, x2 = axis.x(bar.start, session), axis.x(bar.end, session)
        if bar.call is not None:
            call = bar.call
            label = (f"{call['step_name'] or '(outside steps)'} · "
                     f"{short_path(doc_paths.get(call['doc_id'], call['doc_id'] or '-'), 60)} · "
                     f"{call['outcome']}{' ' + call['error_type'] if call['error_type'] else ''} · "
                     f"attempt {call['attempt']} · depth {call['depth']} · {call['latency']:.3f}s · "
                     f"{call['prompt_tokens']} in / {call['completion_tokens']} out · session {session}")
            if call["error"]:
                label += f"\n{call['error'][:300]}"
        else:
            label = (f"{bar.calls} calls merged: "
                     + ", ".join(f"{n} {k}" for k, n in outcomes.most_common()) + " · "
                     + ", ".join(f"{n} at depth {d}" for d, n in sorted(depths.items()))
                     + f" · session {session}")
        outcome, depth = outcomes.most_common(1)[0][0], depths.most_common(1)[0][0]
        parts.append(svg_rect(x1, y, max(x2 - x1, 1.0), bar_h, _shade(outcome, depth), label))
        bars += 1
        if bar.calls > 1 and outcomes.get("error") and outcome != "error":  # errors hidden in the bar
            opacity = min(1.0, 0.15 + outcomes["error"] / bar.calls * 3)
            parts.append(svg_rect(x1, y, max(x2 - x1, 1.0), max(bar_h / 3, 1.5), _shade("error", 0),
                                  extra=f' fill-opacity="{opacity:.2f}"'))
            markers += 1
    parts.append(_axis_title(16, top + plot_h / 2, "worker thread", rotate=True))
    calls = timeline.calls
    svg = svg_plot(plot_id, title, WIDTH, bottom + 50, parts, f' data-calls="{calls}" data-bars="{bars}"'
               f' data-error-marks="{markers}" data-per-bar="{per_bar}"')
    legend_items = [(_shade(o, 0), o) for o in ("ok", "error", "cached", "replayed")]
    if timeline.depths != [0]:
        legend_items += [("", "shade by depth:")] + [(_shade("ok", d), f"depth {d}") for d in timeline.depths]
    caption_tail = " Hover a bar for its step, document, attempt, tokens and error."
    if per_bar > 1:
        caption_tail = (f" <strong>{count(calls)} calls are more than {count(max_bars)} bars: "
                        f"{count(bars)} bars are drawn, each merges up to {per_bar} consecutive calls of one "
                        "worker</strong> (from the first one's start to the last one's end, coloured by the "
                        "most common outcome and shaded by the most common depth; a red strip on top marks a "
                        "merged bar that contains errors, the stronger the larger their share). Hover a bar "
                        "for its counts.")
    sessions_text = (f" The {len(sessions)} sessions of this resumed run are drawn one after the other, "
                     "separated by a hatched break; the idle time between them is cut out."
                     if len(sessions) > 1 else "")
    caption = (f"Each bar is one LM call attempt ({count(calls)} in all), in the lane of the worker "
               "thread that made it, from its start to its start plus its latency; colour says the outcome "
               "(ok, error, cached, replayed from the call journal) and the shade its recursion depth (darker is shallower)."
               + sessions_text + caption_tail)
    return figure(plot_id, title, svg, caption, legend(legend_items))


@dataclass
class LatencyHistogram:
    """The latencies of the successful calls, binned up to their 99th percentile (the slowest 1% in
    one overflow bin), with their median and 95th percentile: two passes over SQLite's sorted rows."""

    calls: int
    p50: float
    p95: float
    top_value: float  # the slowest
    upper: float  # the last bin's end
    counts: list[int]

    @classmethod
    def build(cls, latencies: Callable[[], Iterable[tuple]]) -> "LatencyHistogram | None":
        rows = iter(latencies())  # (None, latency, calls), sorted by latency
        first = next(rows, None)
        if first is None:
            return None
        calls = first[2]
        p50, p95, p99, top_value = percentiles(itertools.chain([first], rows), (0.5, 0.95, 0.99, 1.0))[None]
        upper = p99 if calls >= 200 else top_value  # the slowest 1% overflow
        upper = upper if upper > 0 else max(top_value, 1e-3)
        counts = [0] * max(10, min(40, int(math.sqrt(calls) * 2)))
        width_s = upper / len(counts)
        for _, value, _ in latencies():
            if value <= upper:
                counts[min(int(value / width_s), len(counts) - 1)] += 1
        return cls(calls, p50, p95, top_value, upper, counts)


def latency_plot(histogram: LatencyHistogram | None) -> str:
    plot_id, title = "plot-latency", "Latency of successful LM calls"
    if histogram is None:
        return _empty(plot_id, title, "no successful LM calls",
                      "No call succeeded, so there is no latency to show.")
    p50, p95, top_value, upper, counts = (histogram.p50, histogram.p95, histogram.top_value, histogram.upper,
                                          histogram.counts)
    bins, width_s = len(counts), upper / len(counts)
    overflow = max(histogram.calls - sum(counts), 0)  # a running run may have more calls by now
    left, right, top, height = 70, 30, 40, 260
    plot_w = WIDTH - left - right - (70 if overflow else 0)
    bottom = top + height
    y_ticks = nice_ticks(max(counts + [overflow]))
    y_max = y_ticks[-1] or 1
    def y(v: float) -> float:
        return bottom - v / y_max * height
    def x(v: float) -> float:
        return left + v / upper * plot_w
    parts = _y_grid(y_ticks, y, left, left + plot_w)
    for i, n in enumerate(counts):
        if n:
            lo, hi = i * width_s, (i + 1) * width_s
            parts.append(svg_rect(x(lo) + 0.5, y(n), x(hi) - x(lo) - 1, bottom - y(n),
                                  OUTCOME_SHADES["ok"][1], f"{lo:.3f}s – {hi:.3f}s: {n} calls"))
    for tick in (tick for tick in nice_ticks(upper, 8) if tick <= upper + 1e-12):
        parts += [svg_line(x(tick), bottom, x(tick), bottom + 5, "#666"),
                  svg_text(x(tick), bottom + 18, duration(tick), anchor="middle", size=11)]
    if overflow:
        ox = left + plot_w + 20
        parts += [svg_rect(ox, y(overflow), 40, bottom - y(overflow), OUTCOME_SHADES["ok"][2],
                           f"{overflow} calls slower than {upper:.3f}s (up to {top_value:.3f}s)"),
                  svg_text(ox + 20, bottom + 18, f"> {duration(upper)}", anchor="middle", size=11)]
    parts += _axes(left, top, left + plot_w, bottom)
    for value, name, row, colour in ((p50, "p50", 0, "#222"), (p95, "p95", 1, "#c0392b")):
        px = x(min(value, upper))
        label = f"{name} {duration(value)}"
        # near the right edge the label goes left of its line (it was clipped by the plot's edge)
        fits = px + 4 + 7 * len(label) <= WIDTH - 4
        parts += [svg_line(px, top - 4 + row * 14, px, bottom, colour,
                           ' stroke-width="1.5" stroke-dasharray="5 3"'),
                  svg_text(px + 4 if fits else px - 4, top + 6 + row * 14, label,
                           anchor="start" if fits else "end", size=11, weight="bold", fill=colour)]
    parts += [_axis_title(left + plot_w / 2, bottom + 38, "latency (seconds)"),
              _axis_title(18, top + height / 2, "calls", rotate=True)]
    svg = svg_plot(plot_id, title, WIDTH, bottom + 50, parts)
    caption = (f"How long the {count(histogram.calls)} successful calls took (request to reply, retries not "
               f"included), in {bins} bins of {duration(width_s)}; dashed lines mark the median (p50 "
               f"{duration(p50)}) and the 95th percentile (p95 {duration(p95)}) of these calls; the slowest "
               f"took {duration(top_value)}.")
    if overflow:
        caption += f" {count(overflow)} calls slower than the 99th percentile are gathered in the last bar."
    return figure(plot_id, title, svg, caption)


@dataclass
class BarRow:
    """One row of :func:`tokens_cost_plot`."""

    label: str
    hover: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    unpriced: int
    calls: int
    aggregate: bool = False  # "N other documents": written as text, not drawn (it would dwarf the bars)

    @classmethod
    def total(cls, label: str, hover: str, rows: list[dict], aggregate: bool = False) -> BarRow:
        """The row of the sums of ``rows`` (run_tables' rows: by depth, by document)."""
        keys = ("prompt_tokens", "completion_tokens", "cost", "unpriced_calls", "calls")
        return cls(label, hover, *(sum(r[key] for r in rows) for key in keys), aggregate=aggregate)


def tokens_cost_plot(plot_id: str, title: str, rows: list[BarRow], what: str, caption: str) -> str:
    """Two bar charts side by side, one row per ``rows``: tokens (in and out, stacked) and cost."""
    if not rows:
        return _empty(plot_id, title, "no LM calls recorded", caption)
    row_h, top, label_w = 24, 34, 230
    tokens_x, tokens_w = label_w, 500
    cost_x, cost_w = tokens_x + tokens_w + 70, WIDTH - (tokens_x + tokens_w + 70) - 90
    bottom = top + row_h * len(rows)
    drawn = [r for r in rows if not r.aggregate] or rows
    token_ticks = nice_ticks(max(r.prompt_tokens + r.completion_tokens for r in drawn), 5)
    token_max = token_ticks[-1] or 1
    max_cost = max(r.cost for r in drawn)
    cost_ticks = nice_ticks(max_cost, 3) if max_cost > 0 else []
    cost_max = (cost_ticks[-1] or 1) if cost_ticks else 1
    parts = [svg_text(label_w - 16, top - 14, what, anchor="end", size=12, weight="bold"),
             svg_text(tokens_x + 4, top - 14, "tokens (in + out)", size=12, weight="bold"),
             svg_text(cost_x, top - 14, "cost (USD)", size=12, weight="bold"),
             *_x_grid(token_ticks, lambda tick: tokens_x + tick / token_max * tokens_w, top, bottom),
             *_x_grid(cost_ticks, lambda tick: cost_x + tick / cost_max * cost_w, top, bottom,
                      lambda tick: "$" + tick_label(tick))]
    for i, row in enumerate(rows):
        y = top + i * row_h + 4
        h = row_h - 8
        parts.append(f'<g><title>{esc(row.hover)}</title>'
                     + svg_text(label_w - 8, y + h / 2 + 4, row.label, anchor="end", size=12) + "</g>")
        if row.aggregate:
            parts += [svg_text(tokens_x + 6, y + h / 2 + 4,
                               f"{count(row.prompt_tokens)} in + {count(row.completion_tokens)} out "
                               f"({count(row.calls)} calls; not drawn)", size=11, cls="muted"),
                      svg_text(cost_x + 4, y + h / 2 + 4, cost_text(row.cost, row.unpriced), size=11,
                               cls="muted")]
            continue
        w_in = row.prompt_tokens / token_max * tokens_w
        w_out = row.completion_tokens / token_max * tokens_w
        label = cost_text(row.cost, row.unpriced)
        w_cost = row.cost / cost_max * cost_w if max_cost > 0 else 0
        parts += [svg_rect(tokens_x, y, w_in, h, TOKEN_IN,
                           f"{row.label}: {count(row.prompt_tokens)} tokens in"),
                  svg_rect(tokens_x + w_in, y, w_out, h, TOKEN_OUT,
                           f"{row.label}: {count(row.completion_tokens)} tokens out"),
                  svg_text(tokens_x + w_in + w_out + 4, y + h / 2 + 4,
                           count(row.prompt_tokens + row.completion_tokens), size=11)]
        if w_cost:
            parts.append(svg_rect(cost_x, y, w_cost, h, COST_COLOUR, f"{row.label}: {label}"))
        parts.append(svg_text(cost_x + w_cost + 4, y + h / 2 + 4, label, size=11,
                              cls="muted" if label == "unknown" else ""))
    parts += [*_axes(tokens_x, top, tokens_x + tokens_w, bottom),
              *_axes(cost_x, top, cost_x + cost_w, bottom),
              _axis_title(tokens_x + tokens_w / 2, bottom + 36, "tokens"),
              _axis_title(cost_x + cost_w / 2, bottom + 36,
                          "cost (USD)" if max_cost > 0 else "cost (USD): no known price")]
    svg = svg_plot(plot_id, title, WIDTH, bottom + 48, parts)
    keys = legend([(TOKEN_IN, "tokens in (prompt)"), (TOKEN_OUT, "tokens out (completion)"),
                   (COST_COLOUR, "cost")])
    return figure(plot_id, title, svg, caption, keys)


@dataclass
class FailureCounts:
    """Attempts, retries and errors by type, per (session, bucket of ``bucket`` seconds of run time)."""

    attempts: int
    bucket: float
    errors: dict[tuple[int, int], Counter]  # then by error type
    retries: Counter
    totals: Counter

    @classmethod
    def build(cls, calls: Iterable[dict], sessions: list[Session]) -> "FailureCounts":
        starts = {s.number: s.start for s in sessions}
        bucket = nice_time_step(sum(max(s.seconds, 1e-6) for s in sessions) / FAILURE_BUCKETS)
        counts = cls(0, bucket, defaultdict(Counter), Counter(), Counter())
        for call in calls:
            number = call.get("session") or 1
            if call["outcome"] in FREE_OUTCOMES or number not in starts:
                continue
            key = (number, int((call["started"] - starts[number]) // bucket))
            counts.attempts += 1
            counts.totals[key] += 1
            counts.retries[key] += call["attempt"] > 1
            if call["outcome"] == "error":
                counts.errors[key][call["error_type"] or "unknown"] += 1
        return counts


def failures_plot(failures: FailureCounts, sessions: list[Session]) -> str:
    plot_id, title = "plot-failures", "Retries and failures over time"
    if not failures.attempts or not sessions:
        return _empty(plot_id, title, "no LM calls recorded", "No LM call was recorded.")
    left, right, top, height = 70, 20, 40, 220
    bottom = top + height
    axis = TimeAxis(sessions, left, WIDTH - left - right)
    bucket, errors, retries, totals = failures.bucket, failures.errors, failures.retries, failures.totals
    error_types = sorted({kind for counted in errors.values() for kind in counted})
    extra_colours = iter(EXTRA_COLOURS * 10)
    colours = {name: ERROR_TYPE_COLOURS.get(name) or next(extra_colours) for name in error_types}
    peak = max([sum(c.values()) for c in errors.values()] + list(retries.values()) + [0])
    y_ticks = nice_ticks(peak, 4) if peak else [0, 1]
    y_max = y_ticks[-1] or 1
    def y(v: float) -> float:
        return bottom - v / y_max * height
    parts = [_break_pattern(f"{plot_id}-break"), *_y_grid(y_ticks, y, left, WIDTH - right),
             *axis.draw(top, bottom, f"{plot_id}-break"), svg_line(left, top, left, bottom, "#666")]
    for number, segment in axis.segments.items():
        session = segment.session
        buckets = max(1, math.ceil(max(session.seconds, 1e-6) / bucket - 1e-9))
        points = []
        for b in range(buckets):
            t0 = session.start + b * bucket
            x1, x2 = segment.x_at(t0), segment.x_at(t0 + bucket)
            stacked, w, counted = 0, max(x2 - x1 - 1, 0.8), errors.get((number, b), Counter())
            span = f"{duration(t0 - axis.run_start)} – {duration(t0 + bucket - axis.run_start)}"
            for kind in [kind for kind in error_types if counted[kind]]:  # stacked, in the legend's order
                n = counted[kind]
                parts.append(svg_rect(x1 + 0.5, y(stacked + n), w, y(stacked) - y(stacked + n), colours[kind],
                                      f"{span}: {n} {kind} errors (of {totals[(number, b)]} attempts)"))
                stacked += n
            retried = retries[(number, b)]
            points.append(((x1 + x2) / 2, y(retried), retried, t0))
        path = " ".join(f"{num(px)},{num(py)}" for px, py, _, _ in points)  # one point a bucket, at least one
        parts.append(f'<polyline points="{path}" fill="none" stroke="{RETRY_COLOUR}" stroke-width="1.5"/>')
        parts += [f'<circle cx="{num(px)}" cy="{num(py)}" r="2.5" fill="{RETRY_COLOUR}"><title>'
                  f'{esc(f"{duration(t0 - axis.run_start)}: {n} retries")}</title></circle>'
                  for px, py, n, t0 in points if n]
    if not peak:
        parts.append(svg_text(left + (WIDTH - left - right) / 2, top + height / 2, "no errors and no retries",
                           anchor="middle", size=14, cls="muted"))
    parts.append(_axis_title(18, top + height / 2, "attempts per bucket", rotate=True))
    svg = svg_plot(plot_id, title, WIDTH, bottom + 50, parts)
    keys = legend([(colours[k], f"error: {k}") for k in error_types] + [(RETRY_COLOUR, "retries (line)")])
    total_errors = sum(sum(c.values()) for c in errors.values())
    caption = (f"LM call attempts that failed, stacked by error type, and retries (attempts after a call's "
               f"first, the line), per bucket of {duration(bucket)} of run time ({count(total_errors)} "
               f"errors and {count(sum(retries.values()))} retries in all)."
               + (" Sessions are separated as in the timeline." if len(sessions) > 1 else ""))
    return figure(plot_id, title, svg, caption, keys)



def outside_documents(calls: Iterable[dict], doc_paths: dict) -> list[BarRow]:
    """Calls made outside any document (doc_id NULL or unknown), as one row, if there are any."""
    row = BarRow("(no document)", "LM calls made outside any document", 0, 0, 0.0, 0, 0)
    for call in calls:
        if call["outcome"] not in FREE_OUTCOMES and call["doc_id"] not in doc_paths:
            tokens = call["prompt_tokens"] + call["completion_tokens"]
            row.prompt_tokens, row.completion_tokens = (row.prompt_tokens + call["prompt_tokens"],
                                                        row.completion_tokens + call["completion_tokens"])
            row.cost += call["cost"] or 0.0
            row.unpriced += call["cost"] is None and tokens > 0
            row.calls += 1
    return [row] if row.calls else []
