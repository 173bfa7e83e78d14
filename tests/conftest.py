# ruff: noqa: I001  (offline defaults first: before anything imports litellm)
from rlmpipe.offline import configure_offline_defaults

configure_offline_defaults()  # the test process owns its environment
import pytest

from tests.support.openai_server import OpenAIServer


@pytest.fixture
def openai_server():
    """A scriptable OpenAI-compatible server on 127.0.0.1 (tests/support/openai_server.py), always stopped."""
    server = OpenAIServer()
    server.start()
    try:
        yield server
    finally:
        leaked = server.stop()
    assert not leaked, f"server threads still alive after stop(): {leaked}"


@pytest.fixture(scope="session")
def pyodide_cache():
    """Pyodide in the sandbox's Deno cache, fetched from the npm registry on first use (CI has access)."""
    from rlmpipe.sandbox import deno_available, ensure_pyodide

    if not deno_available():
        pytest.skip("Deno is not installed (pip install deno, or put `deno` on PATH)")
    return ensure_pyodide()
