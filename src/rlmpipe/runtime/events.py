"""Run events: what the engine tells the outside (progress, the event log, traces) as it works.

Each event is a plain dict with ``type`` and ``time``; listeners must be quick and must not raise
(a listener that raises is dropped, with a warning, rather than failing the run).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

Listener = Callable[[dict], None]
log = logging.getLogger("rlmpipe.events")


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; returns the function that removes it."""
        with self._lock:
            self._listeners = [*self._listeners, listener]

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = [item for item in self._listeners if item is not listener]

        return unsubscribe

    def emit(self, type: str, **fields) -> None:
        event = {"type": type, "time": time.time(), **fields}
        for listener in self._listeners:
            try:
                listener(event)
            except Exception as exc:  # monitoring must never break the work it watches
                log.warning("dropping event listener %r after it raised %s", listener, exc)
                with self._lock:
                    self._listeners = [item for item in self._listeners if item is not listener]
