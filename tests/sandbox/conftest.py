import pytest

from rlmpipe.sandbox import deno_available, ensure_pyodide


@pytest.fixture(scope="session")
def pyodide_cache():
    """Pyodide in the sandbox's Deno cache, fetched from the npm registry on first use (CI has access)."""
    if not deno_available():
        pytest.skip("Deno is not installed (pip install deno, or put `deno` on PATH)")
    return ensure_pyodide()
