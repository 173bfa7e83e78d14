"""The run's stop flag, with the reason it was raised: one object shared by the engine and every
LM wrapper of the run, so that whoever sees the reason first (Ctrl-C, a budget, a fatal error, the
circuit breaker) stops everyone, and everyone reports the same reason."""

from __future__ import annotations

import threading


class RunControl:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None
        self._lock = threading.Lock()

    def stop(self, reason: str) -> bool:
        """Raise the flag (the first reason wins); True when this call raised it."""
        with self._lock:
            if self.event.is_set():
                return False
            self.reason = reason
            self.event.set()
            return True

    @property
    def stopping(self) -> bool:
        return self.event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True (at once) if the run is stopping."""
        return self.event.wait(seconds)
