"""The size of the code, per package, at several commits side by side (issue 15: "fewer lines").

    python bench/code_size.py                      # the default commits below
    python bench/code_size.py filed=1670d44 now=HEAD

For each commit: the lines of every ``src/rlmpipe/**/*.py`` (``wc -l``), summed by package (its
first folder; files at the top as "top level"), the largest modules, the package-data assets
(.css/.js), and, when the ``duplicates`` tool is on PATH, how many pairs of repeated code it finds
in ``src`` (the commit's tree exported with ``git archive``, so the working tree does not count).
Writes the ``code-size`` section of bench/RESULTS.md.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = {"issue 15 filed": "1670d44", "last session start": "1ad8e76", "now": "HEAD"}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def measure(revision: str) -> dict:
    """Lines per package, the largest modules, asset lines and duplicate pairs at ``revision``."""
    commit = git("rev-parse", "--short", revision).strip()
    with tempfile.TemporaryDirectory() as folder:
        archive = Path(folder) / "src.tar"
        subprocess.run(["git", "archive", "-o", str(archive), commit, "src"], cwd=ROOT, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")
        package = Path(folder) / "src" / "rlmpipe"
        lines: Counter[str] = Counter()
        modules = {}
        for path in sorted(package.rglob("*.py")):
            relative = path.relative_to(package)
            count = len(path.read_bytes().splitlines())
            lines[relative.parts[0] if len(relative.parts) > 1 else "top level"] += count
            modules[str(relative)] = count
        assets = sum(len(p.read_bytes().splitlines()) for p in package.rglob("*") if p.suffix in (".css", ".js"))
        pairs = None
        if shutil.which("duplicates"):
            first = subprocess.run(["duplicates", "--repo", str(Path(folder) / "src"), "--seconds", "60"],
                                   capture_output=True, text=True).stdout.splitlines()
            found = re.match(r"(\d+) pairs", first[0]) if first else None
            pairs = int(found.group(1)) if found else 0 if first and first[0].startswith("no ") else None
    largest = sorted(modules.items(), key=lambda item: -item[1])[:3]
    return {"commit": commit, "lines": lines, "total": sum(lines.values()), "largest": largest,
            "assets": assets, "pairs": pairs}


def main(arguments: list[str]) -> None:
    revisions = dict(a.split("=", 1) for a in arguments) if arguments else DEFAULT
    results = {label: measure(revision) for label, revision in revisions.items()}
    labels = list(results)
    packages = sorted({name for r in results.values() for name in r["lines"]}, key=lambda n: (n == "top level", n))
    head = "| package | " + " | ".join(f"{label} ({results[label]['commit']})" for label in labels) + " |"
    rows = [head, "|---|" + "---:|" * len(labels)]
    for name in packages:
        rows.append(f"| {name} | " + " | ".join(f"{results[label]['lines'][name]:,}" for label in labels) + " |")
    rows.append("| **total** | " + " | ".join(f"**{results[label]['total']:,}**" for label in labels) + " |")
    rows.append("| .css/.js package data | " + " | ".join(f"{results[label]['assets']:,}" for label in labels) + " |")
    rows.append("| `duplicates --repo src` pairs | "
                + " | ".join("n/a" if results[label]["pairs"] is None else str(results[label]["pairs"])
                             for label in labels) + " |")
    largest = [f"- {label}: " + ", ".join(f"`{name}` {count:,}" for name, count in results[label]["largest"])
               for label in labels]
    markdown = "\n".join([
        "## Code size per package (issue 15)", "",
        "Written by `bench/code_size.py` (reproduce: `python bench/code_size.py`; commits as `label=rev`). "
        "Lines of `src/rlmpipe/**/*.py` (`wc -l`), by first folder; the duplicate pairs are those the "
        "`duplicates` tool finds in each commit's exported `src`. Between the first two columns issues "
        "11-14 and 16 added the Ray executor, the trained clause finder and cascade, the public API and "
        "the first-hour fixes; the issue-15 refactoring commits are spread over the whole span.", "",
        *rows, "", "Largest modules:", "", *largest,
    ])
    write_section("code-size", markdown)
    print(markdown)


if __name__ == "__main__":
    main(sys.argv[1:])
