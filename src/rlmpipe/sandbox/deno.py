"""Deno, the pinned Pyodide npm package, and the exact command line the sandbox runs with.

Where things live:

- Deno: the binary of the PyPI package ``deno`` (``deno.find_deno_bin()``), else ``deno`` on PATH, unless
  ``RLMPIPE_DENO`` names one.
- Deno's cache (``DENO_DIR``): ``$RLMPIPE_DENO_DIR``, else ``$XDG_CACHE_HOME/rlmpipe/deno``, else
  ``~/.cache/rlmpipe/deno``. A folder of our own, so the one path the sandbox may read is known and narrow.
- Pyodide: ``<DENO_DIR>/npm/registry.npmjs.org/pyodide/<PYODIDE_VERSION>/`` (about 13 MB; Deno puts it there
  when it caches ``runner.js``, whose only import is ``npm:pyodide@<PYODIDE_VERSION>``).

First use: :func:`ensure_pyodide` runs ``deno cache`` on runner.js once. That is the only step that uses the
network, and it only talks to the npm registry (``NPM_CONFIG_REGISTRY`` if set, else registry.npmjs.org):
runner.js has no http(s) or jsr imports. It runs no sandboxed code. Every sandbox process afterwards runs
with ``--cached-only --no-remote`` and no network permission.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from dspy.primitives.code_interpreter import CodeInterpreterError

PYODIDE_VERSION = "0.29.4"
RUNNER_PATH = Path(__file__).resolve().parent / "runner.js"
BOOTSTRAP_PATH = Path(__file__).resolve().parent / "_bootstrap.py"
NPM_REGISTRY_HOST = "registry.npmjs.org"

# Files Pyodide reads at start-up; all of them must be in the cache before a sandbox can start.
PYODIDE_FILES = ("pyodide.mjs", "pyodide.asm.js", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json")

MIN_DENO_VERSION = (2, 0, 0)


class DenoNotFoundError(CodeInterpreterError):
    """No Deno executable: install the PyPI package ``deno`` (or put ``deno`` on PATH)."""


class PyodideNotCachedError(CodeInterpreterError):
    """Pyodide is not in the sandbox's Deno cache and could not be fetched."""


def find_deno() -> str:
    """The Deno executable: $RLMPIPE_DENO, the PyPI package ``deno``, else ``deno`` on PATH."""
    configured = os.environ.get("RLMPIPE_DENO")
    if configured:
        return configured
    try:
        from deno import find_deno_bin

        return str(find_deno_bin())
    except (ImportError, FileNotFoundError, OSError):
        pass
    found = shutil.which("deno")
    if found:
        return found
    raise DenoNotFoundError(
        "Deno executable not found: `pip install deno` (PyPI package with the Deno binary), "
        "or put `deno` on PATH, or set RLMPIPE_DENO."
    )


def deno_available() -> bool:
    try:
        return deno_version(find_deno()) is not None
    except DenoNotFoundError:
        return False


@functools.cache
def deno_version(deno: str) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run([deno, "--version"], check=False, capture_output=True, text=True, timeout=20,
                             env=deno_env(default_deno_dir()))
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"deno (\d+)\.(\d+)\.(\d+)", out.stdout)
    return tuple(int(x) for x in match.groups()) if match else None  # type: ignore[return-value]


def default_deno_dir() -> Path:
    configured = os.environ.get("RLMPIPE_DENO_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rlmpipe" / "deno"


def resolve_deno_dir(deno_dir: str | os.PathLike | None = None) -> Path:
    """The Deno cache folder as the real path Deno checks permissions against: ``deno_dir`` (``~``
    expanded) when one is given, else :func:`default_deno_dir` (an empty string means the default too)."""
    return Path(os.path.realpath(Path(deno_dir).expanduser() if deno_dir else default_deno_dir()))


def pyodide_dir(deno_dir: str | os.PathLike | None = None) -> Path:
    """Where Pyodide's files are (or will be) in the given Deno cache."""
    root = Path(deno_dir) if deno_dir is not None else default_deno_dir()
    return root / "npm" / NPM_REGISTRY_HOST / "pyodide" / PYODIDE_VERSION


def pyodide_cached(deno_dir: str | os.PathLike | None = None) -> bool:
    folder = pyodide_dir(deno_dir)
    return all((folder / name).is_file() for name in PYODIDE_FILES)


def deno_env(deno_dir: str | os.PathLike) -> dict[str, str]:
    """The whole environment Deno gets: nothing of the host's (no API keys), only what Deno itself needs."""
    folder = str(Path(deno_dir))
    return {
        "DENO_DIR": folder,
        "DENO_NO_PACKAGE_JSON": "1",
        "DENO_NO_UPDATE_CHECK": "1",
        "DENO_NO_PROMPT": "1",
        "NO_COLOR": "1",
        "PATH": os.defpath,
        "HOME": folder,
    }


@contextlib.contextmanager
def _cache_lock(deno_dir: Path):
    deno_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(deno_dir / ".rlmpipe.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # closing the file releases the lock
        yield


def ensure_pyodide(deno_dir: str | os.PathLike | None = None, *, deno: str | None = None,
                   timeout: float = 600.0) -> Path:
    """Make sure the pinned Pyodide is in the sandbox's Deno cache; fetch it from the npm registry if not.

    Runs ``deno cache --no-config --no-lock --node-modules-dir=none runner.js`` with DENO_DIR set and the
    host's network settings (proxies, NPM_CONFIG_REGISTRY, CA certificates): the only network user is Deno's
    npm resolver, and runner.js imports nothing but ``npm:pyodide@PYODIDE_VERSION``. Idempotent, safe to call from several processes (file lock). Returns the Pyodide
    folder. Raises PyodideNotCachedError with Deno's message if the fetch fails.
    """
    root = resolve_deno_dir(deno_dir)
    if pyodide_cached(root):
        return pyodide_dir(root)
    deno = deno or find_deno()
    with _cache_lock(root):
        if pyodide_cached(root):
            return pyodide_dir(root)
        # No sandboxed code runs in this step, so the host's own network settings apply as they are
        # (proxies, NPM_CONFIG_REGISTRY, NODE_EXTRA_CA_CERTS / DENO_CERT / DENO_TLS_CA_STORE for TLS).
        env = {**os.environ, **deno_env(root), "PATH": os.environ.get("PATH", os.defpath)}
        cmd = [deno, "cache", "--no-config", "--no-lock", "--node-modules-dir=none", str(RUNNER_PATH)]
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise PyodideNotCachedError(f"`deno cache` timed out after {timeout:.0f}s fetching "
                                        f"npm:pyodide@{PYODIDE_VERSION}") from e
        if proc.returncode != 0 or not pyodide_cached(root):
            raise PyodideNotCachedError(
                f"could not fetch npm:pyodide@{PYODIDE_VERSION} into {root} (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
    return pyodide_dir(root)


def build_command(*, deno: str, deno_dir: str | os.PathLike, v8_heap_mb: int | None,
                  runner_config: dict) -> list[str]:
    """The sandbox's command line. Read access to Pyodide's own folder and nothing else."""
    read_dir = os.path.realpath(pyodide_dir(deno_dir))  # Deno checks the realpath (denoland/deno#9607)
    cmd = [
        deno, "run",
        "--no-config", "--no-lock", "--node-modules-dir=none",
        "--cached-only", "--no-remote", "--no-prompt",
        f"--allow-read={read_dir}",
        "--deny-write", "--deny-net", "--deny-env", "--deny-run", "--deny-ffi", "--deny-sys", "--deny-import",
    ]
    if v8_heap_mb:
        cmd.append(f"--v8-flags=--max-old-space-size={int(v8_heap_mb)}")
    cmd += [str(RUNNER_PATH), json.dumps(runner_config, separators=(",", ":"))]
    return cmd
