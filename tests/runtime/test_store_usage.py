"""The store's usage totals are the one usage rule (``Usage.add``) over every stored call, whatever their kind."""

from __future__ import annotations

from rlmpipe.lm.usage import LMCall, Usage
from rlmpipe.runtime.store import Store


def calls(run_id: str, count: int) -> list[LMCall]:
    kinds = ["ok", "ok", "error", "cached"]
    return [LMCall(model="m", prompt_tokens=10 + i % 7, completion_tokens=3, cost=None if i % 5 == 0 else 1e-5,
                   latency=0.1, started=1e9 + i, outcome=kinds[i % 4], attempt=1 + (i % 4 == 2), run_id=run_id,
                   step_key=f"s{i}", doc_id=f"d{i % 3}", call_id=f"c{i}", queued=0.01, estimated=i % 11 == 0)
            for i in range(count)]


def test_totals_and_per_document_usage_add_every_call_as_usage_does(tmp_path):
    with Store(tmp_path) as store:
        store.start_run("r", "p", "fp", "m", {}, 0)
        made = calls("r", 12_345)  # a long run's worth, in batches as steps commit them
        for start in range(0, len(made), 1000):
            store.record_calls(made[start:start + 1000], 1)
        store.record_calls(calls("other", 50), 1)  # another run's calls are not counted

        expected = Usage()
        by_document: dict[str, Usage] = {}
        for call in made:
            expected.add(call)
            by_document.setdefault(call.doc_id, Usage()).add(call)

        assert store.usage_totals("r") == expected.row()
        assert store.usage_by_document("r") == {doc: usage.row() for doc, usage in by_document.items()}
        assert expected.cached and expected.errors and expected.unpriced and expected.retries and expected.estimated
