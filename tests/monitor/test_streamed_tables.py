"""``runs show`` and ``runs report`` stream a run's calls and steps: the same figures as over the whole
lists, without ever reading the whole lists (a long run has hundreds of thousands of calls)."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from rlmpipe.lm.usage import LMCall, percentiles
from rlmpipe.monitor.metrics import _Top, run_tables
from rlmpipe.runtime.store import StepRow, Store


def reference_percentile(values: list[float], q: float) -> float:
    """Linear between the closest ranks, over the whole sorted list (the rule the tables always used)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def test_percentiles_in_one_pass_equal_those_of_each_group_sorted():
    rng = random.Random(7)
    groups = {key: [round(rng.expovariate(2.0), 2) for _ in range(rng.choice([1, 2, 3, 10, 999]))]
              for key in [None, "a", "b", "c", 4]}
    rows = [(key, value, len(values)) for key, values in groups.items() for value in sorted(values)]
    found = percentiles(rows, (0.0, 0.5, 0.95, 0.99, 1.0))
    for key, values in groups.items():
        assert found[key] == [reference_percentile(values, q) for q in (0.0, 0.5, 0.95, 0.99, 1.0)], key


def test_top_keeps_what_a_full_sort_keeps_ties_in_arrival_order():
    items = [(i, key) for i, key in enumerate([3, 1, 3, 2, 3, 3, 0, 2, 3])]
    top = _Top(4, lambda item: item[1])
    for item in items:
        top.add(item)
    assert top.items() == sorted(items, key=lambda item: item[1], reverse=True)[:4]


@pytest.fixture
def long_run(tmp_path):
    """A run of 3,000 calls of every kind (retried calls, errors of three types, cached, unpriced,
    calls outside any step and document, two sessions, four workers, three depths) and their steps."""
    rng = random.Random(11)
    store = Store(tmp_path / "ws")
    store.start_run("r", "summarize", "fp", "m", {}, 0)
    for doc in range(5):
        store.set_document("r", f"d{doc}", f"/data/{doc}.txt", "done")
    for index in range(1000):
        started = 1e9 + index
        step = StepRow(step_key=f"s{index}", run_id="r", doc_id=f"d{index % 5}", chunk_id=f"c{index}",
                       name=["map", "reduce", "ask"][index % 3], depth=index % 3,
                       status="failed" if index % 97 == 0 else "done", result={"text": "x" * 50},
                       prompt_tokens=rng.randint(1, 9), completion_tokens=1, cost=rng.choice([None, 1e-4, 2e-4]),
                       calls=3, attempts=3, reasks=0, error="boom" if index % 97 == 0 else None,
                       started=started, finished=started + rng.choice([0.5, 1.0, 2.0]), worker=f"w{index % 4}",
                       extra=None)
        calls = []
        for attempt in range(3):
            outcome = rng.choice(["ok", "ok", "error", "cached"])
            calls.append(LMCall(model="m", prompt_tokens=rng.randint(0, 50), completion_tokens=rng.randint(0, 5),
                                cost=rng.choice([None, 1e-5]), latency=rng.choice([0.1, 0.2, 0.25, 0.3, 2.0]),
                                started=started + attempt * 0.1, outcome=outcome, attempt=attempt + 1,
                                error_type=rng.choice(["server", "timeout", None]) if outcome == "error" else None,
                                error=f"failure {index}" if outcome == "error" else None, run_id="r",
                                step_key=step.step_key, step_name=None if index % 50 == 0 else step.name,
                                doc_id=None if index % 60 == 0 else step.doc_id, depth=step.depth,
                                worker=step.worker, call_id=f"call-{index}"))
        store.record_calls(calls, 1 + (index >= 600))
        store.commit_step(step)
    yield store
    store.close()


def test_run_tables_stream_and_give_the_figures_of_the_whole_lists(long_run, monkeypatch):
    calls, steps = long_run.calls("r"), long_run.steps("r")
    for name in ("calls", "steps"):  # neither whole list may be read by the tables or the report
        monkeypatch.setattr(Store, name, lambda *_: pytest.fail(f"Store.{name} read the whole run"))
    tables = run_tables(long_run, "r")

    by_depth = defaultdict(list)
    for call in calls:
        if call["outcome"] != "cached":
            by_depth[call["depth"]].append(call["latency"])
    for row in tables["depths"]:
        assert row["p50_latency"] == round(reference_percentile(by_depth[row["depth"]], 0.5), 4)
        assert row["p95_latency"] == round(reference_percentile(by_depth[row["depth"]], 0.95), 4)
    everything = [latency for values in by_depth.values() for latency in values]
    assert tables["totals"]["p95_latency"] == round(reference_percentile(everything, 0.95), 4)
    assert "(outside steps)" in {row["step"] for row in tables["steps"]}

    slowest = sorted((s for s in steps if s.finished and s.started), key=lambda s: s.finished - s.started,
                     reverse=True)[:10]
    costliest = sorted(steps, key=lambda s: (s.cost or 0.0, s.prompt_tokens + s.completion_tokens), reverse=True)[:10]
    assert [row["chunk_id"] for row in tables["slowest_steps"]] == [s.chunk_id for s in slowest]
    assert [row["chunk_id"] for row in tables["costliest_steps"]] == [s.chunk_id for s in costliest]
    assert [row["doc_id"] for row in tables["failed_steps"]] == [s.doc_id for s in steps if s.status == "failed"]


def test_the_report_streams_and_counts_as_over_the_whole_list(long_run, monkeypatch):
    from rlmpipe.monitor.report import collect, render

    calls = long_run.calls("r")
    for name in ("calls", "steps"):
        monkeypatch.setattr(Store, name, lambda *_: pytest.fail(f"Store.{name} read the whole run"))
    report = collect(long_run, "r", max_bars=100)
    assert "<svg" in render(report)

    assert report.timeline.calls == len(calls) and report.timeline.per_bar == 30
    assert sum(bar.calls for bar in report.timeline.bars) == len(calls)
    assert report.timeline.lanes == ["w0", "w1", "w2", "w3"] and report.timeline.depths == [0, 1, 2]
    assert [s.attempts for s in report.sessions] == [sum(1 for c in calls if c["outcome"] != "cached"
                                                         and c["session"] == n) for n in (1, 2)]
    ok = sorted(c["latency"] for c in calls if c["outcome"] == "ok")
    assert report.latency.calls == len(ok) and report.latency.top_value == ok[-1]
    assert report.latency.p50 == reference_percentile(ok, 0.5)
    assert sum(report.latency.counts) == sum(1 for value in ok if value <= report.latency.upper)

    errors = [c for c in calls if c["outcome"] == "error"]
    last_attempt = {c["call_id"]: max(d["attempt"] for d in calls if d["call_id"] == c["call_id"]) for c in calls}
    expected = {}
    for call in errors:  # in start order: the first error of a type is its example
        row = expected.setdefault(call["error_type"] or "unknown", {"type": call["error_type"] or "unknown",
                                                                    "count": 0, "retried": 0, "example": call["error"]})
        row["count"] += 1
        row["retried"] += last_attempt[call["call_id"]] > call["attempt"]
    assert report.error_types == sorted(expected.values(), key=lambda r: r["count"], reverse=True)
    assert report.failures.attempts == sum(1 for c in calls if c["outcome"] != "cached")
    assert sum(sum(counted.values()) for counted in report.failures.errors.values()) == len(errors)

    outside = [c for c in calls if c["outcome"] != "cached" and c["doc_id"] is None]
    (row,) = report.outside_documents
    assert (row.calls, row.prompt_tokens) == (len(outside), sum(c["prompt_tokens"] for c in outside))
    assert report.calls_with_tokens == sum(1 for c in calls if c["outcome"] != "cached"
                                           and c["prompt_tokens"] + c["completion_tokens"])
