"""The model's slots are handed out first come, first served: a call that waited is never overtaken."""

from __future__ import annotations

import threading
import time

import pytest

from rlmpipe.lm.limits import ModelSlots


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + 30  # a bound for a hung test only; nothing here is timed
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_waiting_calls_get_the_slot_in_the_order_they_asked():
    slots, order = ModelSlots(1), []
    assert slots.acquire()

    def call(index: int) -> None:
        assert slots.acquire()
        order.append(index)
        slots.release()

    threads = []
    for index in range(6):
        threads.append(threading.Thread(target=call, args=(index,)))
        threads[-1].start()
        wait_until(lambda: slots.waiting == index + 1, f"call {index} queued")
    slots.release()
    for thread in threads:
        thread.join()
    assert order == list(range(6))


def test_a_call_that_just_released_the_slot_cannot_take_it_back_before_one_that_waits():
    slots, order, done = ModelSlots(1), [], threading.Event()
    assert slots.acquire()

    def waiter() -> None:
        assert slots.acquire()
        order.append("waited")
        done.wait()
        slots.release()

    first = threading.Thread(target=waiter)
    first.start()
    wait_until(lambda: slots.waiting == 1, "the waiter queued")
    slots.release()  # handed to the waiter at once, whether or not it has woken up yet

    def again() -> None:  # what a worker does next: asks for the slot for its next call
        assert slots.acquire()
        order.append("came back")
        slots.release()

    second = threading.Thread(target=again)
    second.start()
    wait_until(lambda: slots.waiting == 1, "the worker that came back queued behind")
    wait_until(lambda: order == ["waited"], "the waiter has the slot")
    done.set()
    first.join()
    second.join()
    assert order == ["waited", "came back"]


def test_a_stopped_wait_leaves_the_queue_without_a_slot():
    slots, stop = ModelSlots(1), threading.Event()
    assert slots.acquire()
    result = []
    thread = threading.Thread(target=lambda: result.append(slots.acquire(stop)))
    thread.start()
    wait_until(lambda: slots.waiting == 1, "queued")
    stop.set()
    thread.join()
    assert result == [False] and slots.waiting == 0
    slots.release()  # nobody waits: the slot is free again
    assert slots.acquire(stop)  # free slots are taken even when stopping; the caller checks the stop


def test_releasing_more_than_was_taken_is_a_bug_it_says_so():
    slots = ModelSlots(2)
    assert slots.acquire() and slots.acquire()
    slots.release()
    slots.release()
    with pytest.raises(ValueError):
        slots.release()
    with pytest.raises(ValueError):
        ModelSlots(0)
