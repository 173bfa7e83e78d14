"""The Ray tests (tests/ray/, marker ``ray``), run in a loopback-only network namespace: Ray probes the
network at start-up even with usage statistics off (a cloud-metadata address, DNS), and no test may send a
packet outside 127.0.0.0/8. ``unshare -n`` (root, or a user namespace) gives the pytest below a network
of its own with only ``lo`` in it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is not installed (extra 'ray')")
@pytest.mark.skipif(not _unshare_works(), reason="cannot make a network namespace here (unshare -n needs root)")
def test_the_ray_suite_in_a_loopback_only_namespace(tmp_path):
    short = tempfile.mkdtemp(prefix="rlmray-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    from rlmpipe.sandbox import default_deno_dir, deno_available, ensure_pyodide

    if deno_available():  # fetched here, while the npm registry is reachable (the RLM test needs it)
        ensure_pyodide()

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
           "HOME": str(tmp_path), "RAY_TMPDIR": short,  # Ray's token and files stay here
           # the sandbox's Pyodide, as cached outside the namespace (which cannot reach the npm registry)
           "RLMPIPE_DENO_DIR": os.environ.get("RLMPIPE_DENO_DIR") or str(default_deno_dir())}
    script = (f"ip link set lo up && exec {sys.executable} -m pytest {ROOT / 'tests' / 'ray'} -m ray -q -p "
              "no:cacheprovider -x -W ignore::DeprecationWarning")
    result = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, cwd=ROOT,
                            env=env, timeout=1800)
    shutil.rmtree(short, ignore_errors=True)
    print(result.stdout[-6000:])
    # Ray's raylet logs fill the captured output: put the inner failure (its E lines) first, where it is seen
    failure = "\n".join(line for line in result.stdout.splitlines()
                        if line.startswith(("E ", "FAILED", "ERROR", ">")) and "[state-dump]" not in line)
    assert result.returncode == 0, failure[-5000:] + "\n--- end of output:\n" + result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " skipped" not in result.stdout.split("\n")[-2]
