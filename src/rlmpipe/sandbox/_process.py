"""The Deno child process: spawning with OS limits, non-blocking line I/O with deadlines, reaping.

Nothing here knows the protocol's meaning; it moves bytes and JSON lines and reports why it could not:
``ProcessTimeout`` (deadline passed), ``ProcessDied`` (EOF / exit, with the tail of stderr), or
``ProtocolViolation`` (an over-long or non-JSON stream).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import queue
import selectors
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future

logger = logging.getLogger(__name__)

STDERR_TAIL_BYTES = 64 * 1024
READ_CHUNK = 4 * 1024 * 1024
MAX_NON_JSON_LINES = 1000
#: bytes of non-protocol output tolerated while waiting for one message (the runner writes none; the host
#: must not buffer whatever sandboxed code manages to write to stdout)
MAX_NON_JSON_BYTES = 1 << 20


class ProcessTimeout(Exception):
    pass


class ProcessDied(Exception):
    def __init__(self, returncode: int | None, stderr_tail: str):
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        super().__init__(f"exit code {returncode}: {stderr_tail[-500:]}")


class ProtocolViolation(Exception):
    pass


# -- spawning ---------------------------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1
try:  # resolved in the parent, so the child only makes the call between fork and exec
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True) if sys.platform == "linux" else None
    _prctl = _libc.prctl if _libc is not None else None
except (OSError, AttributeError):  # pragma: no cover
    _prctl = None
try:
    import resource
except ImportError:  # pragma: no cover - non-POSIX
    resource = None  # type: ignore[assignment]


def _child_setup(data_limit: int | None):
    def setup() -> None:
        if data_limit and resource is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)

    return setup


class _Spawner:
    """Forks every sandbox from one long-lived thread.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process: forking from a
    thread that lives as long as the host process means a sandbox dies with its host (even on SIGKILL), and
    never because a worker thread that happened to start it finished.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            args, kwargs, future = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(subprocess.Popen(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                future.set_exception(e)

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="rlmpipe-sandbox-spawner", daemon=True)
                self._thread.start()
        future: Future = Future()
        self._queue.put((args, kwargs, future))
        return future.result()


_spawner = _Spawner()


def reap(proc: subprocess.Popen) -> None:
    """Kill (if still running) and wait: never leaves a zombie. Safe to call twice."""
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
        proc.wait(timeout=10)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


# -- the process ------------------------------------------------------------------------------------------
class DenoProcess:
    def __init__(self, cmd: list[str], env: dict[str, str], *, data_limit: int | None, max_line_bytes: int):
        self.max_line_bytes = max_line_bytes
        self.proc = _spawner.popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
            cwd="/", start_new_session=True, preexec_fn=_child_setup(data_limit), bufsize=0, close_fds=True,
        )
        self.pid = self.proc.pid
        self._in = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        self._err = self.proc.stderr.fileno()
        for fd in (self._in, self._out, self._err):
            os.set_blocking(fd, False)
        self._buf = bytearray()
        self._scan = 0
        self._stderr = bytearray()
        self._eof = False
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._out, selectors.EVENT_READ, "out")
        self._sel.register(self._err, selectors.EVENT_READ, "err")

    # -- state ------------------------------------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._sel.close()
        reap(self.proc)

    def exit_status(self) -> ProcessDied:
        """Why the process is gone: its exit code and the tail of its stderr (waits briefly)."""
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        self._drain_stderr()
        return ProcessDied(code, self.stderr_tail())

    def _drain_stderr(self) -> None:
        while True:
            try:
                chunk = os.read(self._err, 65536)
            except (BlockingIOError, OSError):
                return
            if not chunk:
                return
            self._keep_stderr(chunk)

    def _keep_stderr(self, chunk: bytes) -> None:
        self._stderr += chunk
        if len(self._stderr) > STDERR_TAIL_BYTES:
            del self._stderr[: len(self._stderr) - STDERR_TAIL_BYTES]

    # -- reading ----------------------------------------------------------------------------------------
    def _pump(self, timeout: float) -> None:
        """Wait up to ``timeout`` for output; move what arrives into the buffers."""
        for key, _ in self._sel.select(timeout):
            if key.data == "out":
                try:
                    chunk = os.read(self._out, READ_CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    self._eof = True
                    self._sel.unregister(self._out)
                else:
                    self._buf += chunk
            else:
                try:
                    chunk = os.read(self._err, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    self._sel.unregister(self._err)
                else:
                    self._keep_stderr(chunk)

    def read_message(self, deadline: float) -> dict:
        skipped = skipped_bytes = 0
        while True:
            at = self._buf.find(b"\n", self._scan)
            if at >= 0:
                line = bytes(self._buf[:at])
                del self._buf[: at + 1]
                self._scan = 0
                stripped = line.strip()
                if not stripped:
                    continue
                if stripped[:1] == b"{":
                    try:
                        message = json.loads(stripped)
                    except ValueError:
                        message = None
                    if isinstance(message, dict):
                        return message
                skipped += 1
                skipped_bytes += len(line)
                logger.debug("sandbox wrote a non-protocol line: %r", stripped[:200])
                if skipped > MAX_NON_JSON_LINES or skipped_bytes > MAX_NON_JSON_BYTES:
                    raise ProtocolViolation(f"more than {MAX_NON_JSON_LINES} lines or {MAX_NON_JSON_BYTES:,} bytes "
                                            "of non-protocol output on stdout")
                continue
            self._scan = len(self._buf)
            if len(self._buf) > self.max_line_bytes:
                raise ProtocolViolation(f"a message longer than {self.max_line_bytes} bytes")
            if self._eof:
                raise self.exit_status()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProcessTimeout()
            self._pump(min(remaining, 1.0))
            if not self._eof and self.proc.poll() is not None and not self._sel.select(0):
                # exited without closing stdout cleanly (should not happen, but never hang on it)
                self._eof = True

    # -- writing ----------------------------------------------------------------------------------------
    def send(self, *parts: bytes, deadline: float) -> None:
        """Write all of ``parts`` to the child's stdin, draining its output meanwhile (no deadlock)."""
        for data in parts:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(self._in, view[:READ_CHUNK])
                    view = view[n:]
                    continue
                except BlockingIOError:
                    pass
                except (BrokenPipeError, OSError):
                    raise self.exit_status() from None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProcessTimeout()
                with selectors.DefaultSelector() as wsel:
                    wsel.register(self._in, selectors.EVENT_WRITE)
                    if not wsel.select(min(remaining, 0.05)):
                        self._pump(0)
                        if self.proc.poll() is not None:
                            raise self.exit_status()

    def send_json(self, obj: dict, deadline: float) -> None:
        self.send(json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n",
                  deadline=deadline)

    def shutdown(self, grace: float = 2.0) -> None:
        """Ask the runner to exit, close its stdin, wait ``grace`` seconds, then kill."""
        try:
            if self.alive():
                with contextlib.suppress(OSError):
                    os.set_blocking(self._in, True)
                    os.write(self._in, b'{"method":"shutdown"}\n')
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=grace)
        finally:
            self.close()
