"""The call journal's replay rules (lm/journal.py): which answers a step run again is served, and where
it parts from its journal. No LM, no store: the rules alone."""

from __future__ import annotations

from rlmpipe.lm.journal import Answer, Replay, clip, preview, request_key


def journal_of(*keys: str) -> dict:
    """A journal that answered each key once, in order (the answer is the key, upper-cased)."""
    answers: dict = {}
    for key in keys:
        occurrence = sum(1 for k, _ in answers if k == key)
        answers[(key, occurrence)] = Answer([key.upper()])
    return answers


def served(replay: Replay, key: str, scope: str | None = None) -> bool:
    claim = replay.claim(key, scope)
    replay.settle(claim)
    return claim.answer is not None


def test_the_same_requests_are_served_in_order_then_the_rest_runs_live():
    replay = Replay(journal_of("a", "b", "c"), store=lambda *args: None)
    assert [served(replay, key) for key in ("a", "b", "c", "d", "e")] == [True, True, True, False, False]
    summary = replay.summary()
    assert (summary.replayed, summary.unused, summary.parted_at) == (3, 0, None)


def test_a_request_made_twice_gets_its_two_answers_and_a_third_time_runs_live():
    answers = {("same", 0): Answer(["first"]), ("same", 1): Answer(["second"])}
    replay = Replay(answers, store=lambda *args: None)
    outputs = [replay.claim("same").answer for _ in range(3)]
    assert [a.outputs if a else None for a in outputs] == [["first"], ["second"], None]


def test_a_changed_program_parts_at_the_first_difference_and_the_rest_runs_live():
    replay = Replay(journal_of("a", "b", "c", "d"), store=lambda *args: None)
    assert served(replay, "a")
    assert not served(replay, "x")  # the program asks something new here: the replay parts
    assert not served(replay, "b")  # answered before, but after the difference: asked again, live
    assert not served(replay, "c")
    summary = replay.summary()
    assert (summary.replayed, summary.parted_at) == (1, 1)
    assert summary.unused == 3  # b and c were asked live instead, d never
    assert replay.stale() == [("d", 0)]  # b and c get their new answers; d describes nothing that happens now


def test_calls_of_one_batch_are_served_in_any_order_around_the_one_that_was_in_flight():
    # a batch of four: 1 and 2 were answered before the crash, 3 and 4 were in flight
    replay = Replay(journal_of("top", "q1", "q2"), store=lambda *args: None)
    assert served(replay, "top")
    miss = replay.claim("q3", scope="x1.b1")  # its thread asks first, and is not in the journal
    assert miss.answer is None and miss.parted
    assert served(replay, "q2", scope="x1.b1") and served(replay, "q1", scope="x1.b1")  # its batch: still served
    replay.settle(miss)
    assert not served(replay, "q4", scope="x1.b1")
    assert not served(replay, "next")  # the program goes on, live
    assert replay.summary().unused == 0  # every answer was used: the replay did not part from anything


def test_calls_made_while_a_parted_call_is_in_flight_are_still_served():
    # a user's module calling the model from threads: no batch scope, but the calls overlap
    replay = Replay(journal_of("a", "b"), store=lambda *args: None)
    miss = replay.claim("c")
    assert served(replay, "b") and served(replay, "a")
    replay.settle(miss)
    assert replay.summary().replayed == 2


def test_values_the_program_asks_the_host_for_are_replayed_as_first_seen():
    kept = []
    first = Replay({}, store=lambda claim, outputs, call, text: kept.append((claim.key, claim.occurrence, outputs)))
    assert first.value("budget", lambda: {"tokens": 900}) == {"tokens": 900}
    import json

    journal = {(key, occurrence): Answer(json.loads(outputs)) for key, occurrence, outputs in kept}
    again = Replay(journal, store=lambda *args: None)
    assert again.value("budget", lambda: {"tokens": 5000}) == {"tokens": 900}  # what the first run saw
    assert again.value("budget", lambda: {"tokens": 4000}) == {"tokens": 4000}  # past the journal: now


def test_request_keys_are_the_content_of_the_request():
    messages = [{"role": "user", "content": "hello"}]
    assert request_key("m", None, messages, {"temperature": 0}) == request_key("m", None, list(messages),
                                                                                {"temperature": 0})
    assert request_key("m", None, messages, {"temperature": 0}) != request_key("m", None, messages,
                                                                                {"temperature": 1})
    assert request_key("m", "hi", None, {}) != request_key("other", "hi", None, {})


def test_previews_are_the_last_message_clipped():
    long = "x" * 10_000
    assert preview(None, [{"role": "system", "content": "rules"}, {"role": "user", "content": "ask"}]) == "ask"
    assert preview("a prompt", None) == "a prompt"
    shown = preview(long, None)
    assert len(shown) < 2100 and "characters ..." in shown
    assert clip("short", 100) == "short"
