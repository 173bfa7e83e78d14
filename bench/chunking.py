"""Chunker benchmarks: rlmpipe's chunkers side by side with chonkie, semchunk and langchain.

    python bench/chunking.py            # full run (about 15-25 min on 2 cores), writes bench/RESULTS.md
    python bench/chunking.py --quick    # smoke test: 5 MiB corpus, 1 repetition, no 1 GiB file

Peers: ``pip install -r bench/requirements.txt``. Two benchmarks, one section of bench/RESULTS.md
(``chunking``, or ``chunking-quick``):

1. Throughput and peak memory, 512-token chunks of cl100k_base, no overlap, on a >= 50 MiB English
   corpus built from the CUAD contracts and vim's help files (bench/.cache/, rebuilt only when
   missing). Every measurement runs in a fresh subprocess so that its peak RSS is its own; three
   repetitions in interleaved order, medians reported. rlmpipe streams the file from disk
   (``open_document`` + ``chunk_document``); the peers read it into one string first, as they are
   used, and that read is timed too. Then rlmpipe alone on a 1 GiB file (the peers load whole files).
2. Clause integrity on CUAD: the share of annotated passages that no chunk holds whole, at 512,
   1024 and 2048 tokens, and how many chunks each chunker needs.

Everything but the timings is deterministic.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as _dt
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from array import array
from collections import Counter, defaultdict
from pathlib import Path

from rlmpipe.offline import configure_offline_defaults

configure_offline_defaults()  # first: points tiktoken at the bundled encodings, so nothing is downloaded
from _results import machine

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = BENCH / ".cache"
CUAD = Path(os.environ.get("RLMPIPE_CUAD_DIR", "/work/shared/data/cuad"))
VIM_DOCS = Path("/usr/share/vim/vim90/doc")
MiB = 1 << 20
MB = 1e6  # reported sizes and rates are decimal megabytes
ENCODING = "cl100k_base"

CHUNKERS = [
    "rlmpipe-structure",
    "rlmpipe-fixed",
    "chonkie-recursive",
    "chonkie-token",
    "semchunk",
    "langchain-recursive",
    "langchain-token",
]
OURS = ("rlmpipe-structure", "rlmpipe-fixed")
PEERS = [name for name in CHUNKERS if name not in OURS]
LABEL = {
    "rlmpipe-structure": "rlmpipe structure",
    "rlmpipe-fixed": "rlmpipe fixed",
    "chonkie-recursive": "chonkie RecursiveChunker",
    "chonkie-token": "chonkie TokenChunker",
    "semchunk": "semchunk (chunkerify)",
    "langchain-recursive": "langchain RecursiveCharacterTextSplitter",
    "langchain-token": "langchain TokenTextSplitter",
}
PACKAGE = {
    "rlmpipe-structure": "rlmpipe",
    "rlmpipe-fixed": "rlmpipe",
    "chonkie-recursive": "chonkie",
    "chonkie-token": "chonkie",
    "semchunk": "semchunk",
    "langchain-recursive": "langchain-text-splitters",
    "langchain-token": "langchain-text-splitters",
}
SIZES = (512, 1024, 2048)
CHILD_TIMEOUT = 1200  # seconds for one measurement subprocess
PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}


# --------------------------------------------------------------------------------------------
# environment


def proc_status(field: str) -> float:
    """A memory field of /proc/self/status (VmHWM, VmRSS) in MB (10^6 bytes)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MB
    raise KeyError(field)


def version_of(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version(package)
    except PackageNotFoundError:
        return "not installed"
    if package == "rlmpipe":
        try:
            # the code measured here: the last commit that touched it, plus a hash of any
            # uncommitted change to it (commits elsewhere in the repo do not change the label)
            paths = ["src/rlmpipe/chunking", "src/rlmpipe/ingest"]
            commit = subprocess.run(
                ["git", "-C", str(REPO), "log", "-1", "--format=%h", "HEAD", "--", *paths],
                capture_output=True, text=True, check=True,
            ).stdout.strip()
            diff = subprocess.run(
                ["git", "-C", str(REPO), "diff", "HEAD", "--", *paths], capture_output=True, text=True
            ).stdout
            untracked = subprocess.run(
                ["git", "-C", str(REPO), "ls-files", "--others", "--exclude-standard", "--", *paths],
                capture_output=True, text=True,
            ).stdout.split()
            digest = hashlib.sha256(diff.encode())
            for name in sorted(untracked):
                digest.update(name.encode() + (REPO / name).read_bytes())
            dirty = f"+uncommitted {digest.hexdigest()[:8]}" if diff or untracked else ""
            found += f" ({commit}{dirty})"
        except (OSError, subprocess.CalledProcessError):
            pass
    return found


# --------------------------------------------------------------------------------------------
# corpora


def corpus_sources() -> tuple[list[Path], list[Path]]:
    contracts = sorted((CUAD / "contracts").glob("*.txt"))
    if not contracts:
        raise SystemExit(f"no contracts under {CUAD / 'contracts'} (set RLMPIPE_CUAD_DIR)")
    vim = sorted(VIM_DOCS.glob("*.txt")) if VIM_DOCS.is_dir() else []
    return contracts, vim


def build_corpus(target_bytes: int, path: Path) -> dict:
    """Concatenate contracts, then vim's help files (sorted paths), repeated until >= target bytes.

    Each file is read as UTF-8 with its line endings kept and ends with a newline in the corpus;
    a file that is not valid UTF-8 is left out (and counted). Built once; reused while present.
    """
    contracts, vim = corpus_sources()
    info = {"contracts": len(contracts), "vim_docs": len(vim), "skipped": 0}
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(".tmp")
        total = 0
        with open(temp, "wb") as out:
            while total < target_bytes:
                for source in contracts + vim:
                    try:
                        with open(source, encoding="utf-8", newline="") as handle:
                            text = handle.read()
                    except (UnicodeDecodeError, OSError):
                        info["skipped"] += 1
                        continue
                    if not text.endswith("\n"):
                        text += "\n"
                    data = text.encode("utf-8")
                    out.write(data)
                    total += len(data)
                    if total >= target_bytes:
                        break
        os.replace(temp, path)
    info.update(file_info(path))
    return info


def build_big(source: Path, target_bytes: int, path: Path) -> dict:
    """The corpus file repeated whole until >= target bytes."""
    if not path.exists():
        temp = path.with_suffix(".tmp")
        data = source.read_bytes()
        with open(temp, "wb") as out:
            written = 0
            while written < target_bytes:
                out.write(data)
                written += len(data)
        os.replace(temp, path)
    return file_info(path)


def file_info(path: Path) -> dict:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(8 * MiB):
            digest.update(block)
            size += len(block)
    return {"path": str(path.relative_to(REPO)), "bytes": size, "sha256": digest.hexdigest()}


# --------------------------------------------------------------------------------------------
# the chunkers


def tiktoken_encoding():
    import tiktoken

    return tiktoken.get_encoding(ENCODING)


class Peer:
    """One peer chunker at one size. ``run(text)`` is the timed call, as the library is used;
    ``spans(text)`` gives (start, end, chunk_text) with the library's own offsets (CUAD)."""

    def __init__(self, name: str, max_tokens: int):
        self.name = name
        self.max_tokens = max_tokens
        encoding = tiktoken_encoding()
        if name.startswith("chonkie"):
            from chonkie import RecursiveChunker, TokenChunker

            # chonkie wraps a tiktoken Encoding in its own adapter (a string name would go to
            # the `tokie` backend, which downloads from the Hugging Face hub)
            cls = RecursiveChunker if name == "chonkie-recursive" else TokenChunker
            self.chunker = cls(tokenizer=encoding, chunk_size=max_tokens)
        elif name == "semchunk":
            import semchunk

            self.chunker = semchunk.chunkerify(encoding, max_tokens)
        elif name.startswith("langchain"):
            from langchain_text_splitters import RecursiveCharacterTextSplitter, TokenTextSplitter

            # disallowed_special=(): the documented way to read "<|endoftext|>" in a document as
            # text (the default raises ValueError); the corpora here hold no such text.
            if name == "langchain-recursive":
                def make(**extra):
                    return RecursiveCharacterTextSplitter.from_tiktoken_encoder(
                        encoding_name=ENCODING, chunk_size=max_tokens, chunk_overlap=0,
                        disallowed_special=(), **extra,
                    )
            else:
                def make(**extra):
                    return TokenTextSplitter(
                        encoding_name=ENCODING, chunk_size=max_tokens, chunk_overlap=0,
                        disallowed_special=(), **extra,
                    )
            self.chunker = make()
            self.indexed = make(add_start_index=True)
        else:
            raise ValueError(name)

    def run(self, text: str) -> list[str]:
        """Chunk texts, the way the library is normally called."""
        if self.name.startswith("chonkie"):
            return [chunk.text for chunk in self.chunker.chunk(text)]
        if self.name == "semchunk":
            return self.chunker(text)
        return self.chunker.split_text(text)

    def spans(self, text: str) -> list[tuple[int | None, int | None, str]]:
        if self.name.startswith("chonkie"):
            return [(c.start_index, c.end_index, c.text) for c in self.chunker.chunk(text)]
        if self.name == "semchunk":
            chunks, offsets = self.chunker(text, offsets=True)
            return [(start, end, chunk) for chunk, (start, end) in zip(chunks, offsets)]
        out = []
        for document in self.indexed.create_documents([text]):
            start = document.metadata.get("start_index")
            chunk = document.page_content
            out.append((start, None if start is None else start + len(chunk), chunk))
        return out


def rlmpipe_config(name: str, max_tokens: int):
    from rlmpipe.chunking import ChunkingConfig

    strategy = name.split("-", 1)[1]
    return ChunkingConfig(strategy=strategy, chunk_tokens=max_tokens, overlap=0, tokenizer=ENCODING)


def locate(text: str, reported: list[tuple[int | None, int | None, str]]) -> tuple[list[tuple[int, int]], Counter]:
    """Character spans of a peer's chunks in ``text``, checked against the chunk texts.

    A span is taken as reported when ``text[start:end] == chunk``. Otherwise the chunk text is
    looked for from the end of the previous chunk (``found``). A token chunker that cut inside a
    multi-byte character decodes the halves as U+FFFD: such a chunk is found without them and
    widened by one character per side (``approximate``). Anything else is ``unlocated`` and
    dropped, i.e. counts as holding no passage.
    """
    spans: list[tuple[int, int]] = []
    stats: Counter = Counter()
    previous = 0
    for start, end, chunk in reported:
        if not chunk:
            continue
        if start is not None and end is not None and 0 <= start <= end and text[start:end] == chunk:
            stats["exact"] += 1
            spans.append((start, end))
            previous = end
            continue
        found = text.find(chunk, previous)
        if found == -1:
            found = text.find(chunk, max(0, previous - 4))
        if found != -1:
            stats["found"] += 1
            spans.append((found, found + len(chunk)))
            previous = found + len(chunk)
            continue
        core = chunk.strip("\ufffd")
        lead = len(chunk) - len(chunk.lstrip("\ufffd"))
        trail = len(chunk) - len(chunk.rstrip("\ufffd"))
        found = text.find(core, max(0, previous - 1)) if core else -1
        if found != -1:
            stats["approximate"] += 1
            span = (max(0, found - (1 if lead else 0)), min(len(text), found + len(core) + (1 if trail else 0)))
            spans.append(span)
            previous = span[1]
            continue
        stats["unlocated"] += 1
    return spans, stats


# --------------------------------------------------------------------------------------------
# benchmark 1: throughput (the measurement itself runs in a child process)


def child_throughput(spec: dict) -> dict:
    name, path, max_tokens = spec["chunker"], Path(spec["corpus"]), spec["max_tokens"]
    result: dict = {"chunker": name}
    if name in OURS:
        from rlmpipe.chunking import chunk_document, get_tokenizer
        from rlmpipe.ingest import open_document

        config = rlmpipe_config(name, max_tokens)
        get_tokenizer(config.tokenizer)  # load the encoding before the clock starts
        result["rss_ready_mb"] = proc_status("VmRSS")
        starts, ends, counts = array("q"), array("q"), array("q")
        n_chunks = max_count = 0
        keep = not spec.get("discard", False)
        t0 = time.perf_counter()
        for chunk in chunk_document(open_document(path), config):
            n_chunks += 1
            if chunk.token_count > max_count:
                max_count = chunk.token_count
            if keep:
                starts.append(chunk.char_start)
                ends.append(chunk.char_end)
                counts.append(chunk.token_count)
        seconds = time.perf_counter() - t0
        result.update(seconds=seconds, peak_rss_mb=proc_status("VmHWM"), chunks=n_chunks, max_reported=max_count)
        if spec.get("check"):
            text = _read(path)
            texts = [text[s:e] for s, e in zip(starts, ends)]
            measured = token_counts(texts)
            result["max_tokens"] = max(measured, default=0)
            result["over_limit"] = sum(count > max_tokens for count in measured)
            result["count_mismatch"] = sum(a != b for a, b in zip(measured, counts))
            gaps = sum(1 for k in range(1, len(starts)) if starts[k] != ends[k - 1])
            gaps += (starts[0] != 0 if len(starts) else 0) + (ends[-1] != len(text) if len(ends) else 0)
            result["not_tiling"] = gaps
    else:
        peer = Peer(name, max_tokens)
        result["rss_ready_mb"] = proc_status("VmRSS")
        t0 = time.perf_counter()
        text = _read(path)
        chunks = peer.run(text)
        seconds = time.perf_counter() - t0
        result.update(seconds=seconds, peak_rss_mb=proc_status("VmHWM"), chunks=len(chunks))
        if spec.get("check"):
            measured = token_counts(chunks)
            result["max_tokens"] = max(measured, default=0)
            result["over_limit"] = sum(count > max_tokens for count in measured)
            result["replacement_chars"] = sum("\ufffd" in chunk for chunk in chunks) if "\ufffd" not in text else 0
    result["bytes"] = path.stat().st_size
    return result


def _read(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as handle:
        return handle.read()


def token_counts(texts: list[str]) -> list[int]:
    """cl100k_base token counts with tiktoken (special-token text counted as ordinary text)."""
    encoding = tiktoken_encoding()
    return [len(ids) for ids in encoding.encode_ordinary_batch(list(texts), num_threads=os.cpu_count() or 1)]


def run_child(kind: str, spec: dict, env: dict | None = None) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, json.dumps(spec)]
    load = os.getloadavg()[0]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT,
                              env={**os.environ, **env} if env else None)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {CHILD_TIMEOUT} s"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {done.returncode}: {tail[:200]}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_before"] = load
    return result


def bench_throughput(corpus: Path, names: list[str], repeats: int, log) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = defaultdict(list)
    for rep in range(repeats):
        order = names[rep % len(names):] + names[: rep % len(names)]  # interleaved, rotated
        for name in order:
            spec = {"chunker": name, "corpus": str(corpus), "max_tokens": 512, "check": rep == 0}
            result = run_child("throughput", spec)
            runs[name].append(result)
            if "error" in result:
                log(f"  rep {rep + 1} {name}: ERROR {result['error']}")
            else:
                log(f"  rep {rep + 1} {name}: {result['seconds']:.2f} s, "
                    f"{result['bytes'] / MB / result['seconds']:.1f} MB/s, peak RSS {result['peak_rss_mb']:.0f} MB, "
                    f"{result['chunks']} chunks")
    return runs


# --------------------------------------------------------------------------------------------
# benchmark 2: clause integrity on CUAD

_WORKER_CHUNKERS: dict = {}


def _worker_chunker(name: str, size: int):
    key = (name, size)
    if key not in _WORKER_CHUNKERS:
        _WORKER_CHUNKERS[key] = rlmpipe_config(name, size) if name in OURS else Peer(name, size)
    return _WORKER_CHUNKERS[key]


def cuad_contract(task: tuple[str, str, list[tuple[int, int]], list[str], list[int]]) -> dict:
    """Every chunker and size on one contract: per passage, whether some chunk holds it whole."""
    from rlmpipe.chunking import chunk_document
    from rlmpipe.ingest import open_document

    contract_id, path, passages, names, sizes = task
    text = _read(Path(path))
    out: dict = {}
    for name in names:
        for size in sizes:
            chunker = _worker_chunker(name, size)
            problems: list[str] = []
            stats: Counter = Counter()
            try:
                if name in OURS:
                    chunks = list(chunk_document(open_document(path), chunker))
                    spans = [(c.char_start, c.char_end) for c in chunks]
                    texts = [c.text for c in chunks]
                    previous = 0
                    for c in chunks:
                        if c.text != text[c.char_start:c.char_end]:
                            problems.append(f"chunk {c.index} [{c.char_start}:{c.char_end}]: text != source span")
                        if c.char_start != previous:
                            problems.append(f"chunk {c.index}: starts at {c.char_start}, previous ended at {previous}")
                        previous = c.char_end
                    if chunks and previous != len(text):
                        problems.append(f"last chunk ends at {previous}, text has {len(text)} chars")
                    measured = token_counts(texts)
                    for c, count in zip(chunks, measured):
                        if count != c.token_count:
                            problems.append(f"chunk {c.index}: token_count {c.token_count}, tiktoken {count}")
                    stats["exact"] = len(chunks)
                else:
                    reported = chunker.spans(text)
                    spans, stats = locate(text, reported)
                    texts = [chunk for _, _, chunk in reported]
                    measured = token_counts(texts)
            except Exception as exc:  # a peer failing on some input is a result, not a crash
                out[(name, size)] = {"error": f"{type(exc).__name__}: {exc}"[:200], "passages": len(passages)}
                continue
            spans.sort()
            starts = [s for s, _ in spans]
            reach = []
            best = -1
            for _, end in spans:
                best = max(best, end)
                reach.append(best)
            intact = []
            for a, b in passages:
                k = bisect.bisect_right(starts, a) - 1
                intact.append(k >= 0 and reach[k] >= b)
            out[(name, size)] = {
                "chunks": len(texts),
                "intact": intact,
                "max_tokens": max(measured, default=0),
                "over_limit": sum(count > size for count in measured),
                "offsets": dict(stats),
                "problems": problems[:5],
                "n_problems": len(problems),
            }
    return {"contract_id": contract_id, "results": out}


def load_cuad(limit_contracts: int | None = None):
    contracts = sorted((CUAD / "contracts").glob("*.txt"))
    if limit_contracts:
        contracts = contracts[:limit_contracts]
    wanted = {path.stem for path in contracts}
    passages: dict[str, list[dict]] = defaultdict(list)
    with open(CUAD / "annotations.jsonl", encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record["contract_id"] in wanted and record["end"] > record["start"]:
                passages[record["contract_id"]].append(record)
    for records in passages.values():
        records.sort(key=lambda r: (r["start"], r["end"], r["category"], r.get("span_index", 0), r.get("piece_index", 0)))
    return contracts, passages


def bench_cuad(names: list[str], sizes: tuple[int, ...], limit_contracts: int | None, log) -> dict:
    import multiprocessing

    contracts, passages = load_cuad(limit_contracts)
    # sanity: the offsets line up with the text as read
    for path in contracts:
        text = _read(path)
        for record in passages.get(path.stem, []):
            if text[record["start"]:record["end"]] != record["text"]:
                raise SystemExit(f"{path.name}: annotation offsets do not match the text ({record['category']})")
    tasks = [
        (path.stem, str(path), [(r["start"], r["end"]) for r in passages.get(path.stem, [])], names, list(sizes))
        for path in contracts
    ]
    # biggest contracts first, so the two workers finish together
    order = sorted(range(len(tasks)), key=lambda k: -os.path.getsize(tasks[k][1]))
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        for done, item in enumerate(pool.imap_unordered(cuad_contract, [tasks[k] for k in order], chunksize=1), 1):
            results[item["contract_id"]] = item["results"]
            if done % 50 == 0 or done == len(tasks):
                log(f"  {done}/{len(tasks)} contracts ({time.perf_counter() - t0:.0f} s)")

    # passage token lengths: a passage longer than the chunk size cannot be held whole by anyone
    all_records = [r for path in contracts for r in passages.get(path.stem, [])]
    lengths = token_counts([r["text"] for r in all_records])
    return {"contracts": contracts, "passages": passages, "results": results, "lengths": lengths,
            "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------
# special-token text: which chunkers raise on "<|endoftext|>" with their default settings


def child_special(spec: dict) -> dict:
    text = ("The parties agree. <|endoftext|> Section 2. Term.\n\n" * 40)
    out = {}
    encoding = tiktoken_encoding()
    for name in spec["names"]:
        cases = {}
        try:
            if name in OURS:
                from rlmpipe.chunking import chunk_text

                cases["default"] = lambda: chunk_text(text, rlmpipe_config(name, 64))
            elif name.startswith("chonkie"):
                from chonkie import RecursiveChunker, TokenChunker

                cls = RecursiveChunker if name == "chonkie-recursive" else TokenChunker
                cases["default"] = lambda: cls(tokenizer=encoding, chunk_size=64).chunk(text)
            elif name == "semchunk":
                import semchunk

                cases["default"] = lambda: semchunk.chunkerify(encoding, 64)(text)
            elif name == "langchain-recursive":
                from langchain_text_splitters import RecursiveCharacterTextSplitter

                cases["default"] = lambda: RecursiveCharacterTextSplitter.from_tiktoken_encoder(
                    encoding_name=ENCODING, chunk_size=64, chunk_overlap=0).split_text(text)
                cases["as benchmarked"] = lambda: Peer(name, 64).run(text)
            else:
                from langchain_text_splitters import TokenTextSplitter

                cases["default"] = lambda: TokenTextSplitter(
                    encoding_name=ENCODING, chunk_size=64, chunk_overlap=0).split_text(text)
                cases["as benchmarked"] = lambda: Peer(name, 64).run(text)
        except Exception as exc:
            out[name] = {"default": f"setup failed: {type(exc).__name__}"}
            continue
        row = {}
        for case, call in cases.items():
            try:
                chunks = call()
                row[case] = f"ok ({len(chunks)} chunks)"
            except Exception as exc:
                row[case] = f"raises {type(exc).__name__}"
        out[name] = row
    return out


# --------------------------------------------------------------------------------------------
# report


def median(values):
    return statistics.median(values) if values else float("nan")


def throughput_table(runs: dict[str, list[dict]], corpus: dict, names: list[str], versions: dict) -> tuple[str, dict]:
    rows = []
    summary: dict[str, dict] = {}
    for name in names:
        good = [r for r in runs.get(name, []) if "error" not in r]
        errors = [r["error"] for r in runs.get(name, []) if "error" in r]
        if not good:
            summary[name] = {"error": errors[0] if errors else "not run"}
            continue
        seconds = median([r["seconds"] for r in good])
        check = next((r for r in good if "max_tokens" in r), {})
        chunk_counts = {r["chunks"] for r in good}
        summary[name] = {
            "seconds": seconds,
            "mbps": corpus["bytes"] / MB / seconds,
            "rss": median([r["peak_rss_mb"] for r in good]),
            "rss_ready": median([r["rss_ready_mb"] for r in good]),
            "chunks": good[0]["chunks"],
            "stable": len(chunk_counts) == 1,
            "check": check,
            "errors": errors,
            "reps": len(good),
        }
    peer_speeds = {n: s["mbps"] for n, s in summary.items() if n in PEERS and "mbps" in s}
    fastest = max(peer_speeds, key=peer_speeds.get) if peer_speeds else None
    header = ("| chunker | version | MB/s | seconds | × fastest peer | peak RSS MB | RSS before MB | chunks "
              "| max tokens | limit 512 held |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in names:
        s = summary[name]
        if "error" in s:
            rows.append(f"| {LABEL[name]} | {versions[PACKAGE[name]]} | failed: {s['error']} | | | | | | | |")
            continue
        check = s["check"]
        if "max_tokens" in check:
            held = "yes" if check["over_limit"] == 0 else f"**no**: {check['over_limit']} chunks over"
            extra = []
            if check.get("count_mismatch"):
                extra.append(f"{check['count_mismatch']} token_count mismatches")
            if check.get("not_tiling"):
                extra.append(f"{check['not_tiling']} gaps/overlaps")
            if check.get("replacement_chars"):
                extra.append(f"{check['replacement_chars']} chunks with U+FFFD")
            if name in OURS and not extra:
                extra.append("token_count exact, chunks tile the file")
            held += ("; " + ", ".join(extra)) if extra else ""
            max_tokens = str(check["max_tokens"])
        else:
            held, max_tokens = "not checked", "?"
        ratio = s["mbps"] / peer_speeds[fastest] if fastest else float("nan")
        marker = " (fastest peer)" if name == fastest else ""
        rows.append(
            f"| {LABEL[name]}{marker} | {versions[PACKAGE[name]]} | {s['mbps']:.2f} | {s['seconds']:.2f} | {ratio:.2f} "
            f"| {s['rss']:.0f} | {s['rss_ready']:.0f} | {s['chunks']:,}{'' if s['stable'] else ' (varied!)'} "
            f"| {max_tokens} | {held} |"
        )
    loads = [r["load_before"] for name in names for r in runs.get(name, []) if "load_before" in r]
    note = (f"\n\n1-minute load average just before each run: {min(loads):.2f} to {max(loads):.2f} "
            f"(the machine has {os.cpu_count()} cores; other work on it slows every chunker alike)." if loads else "")
    return header + "\n" + "\n".join(rows) + note, {"summary": summary, "fastest": fastest}


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**PASS**" if ok else "**FAIL**")


def cuad_tables(data: dict, names: list[str], sizes: tuple[int, ...], versions: dict) -> tuple[str, str, str, dict]:
    contracts, passages, results = data["contracts"], data["passages"], data["results"]
    total_passages = sum(len(passages.get(p.stem, [])) for p in contracts)
    cut: dict = {}
    chunks: dict = {}
    notes: dict = {}
    errors: dict = defaultdict(int)
    for name in names:
        for size in sizes:
            n_cut = n_chunks = n_considered = over = max_tok = 0
            offsets: Counter = Counter()
            problems: list[str] = []
            n_problems = 0
            for path in contracts:
                r = results[path.stem][(name, size)]
                if "error" in r:
                    errors[(name, size)] += 1
                    n_cut += r["passages"]  # a failed contract holds no passage whole
                    n_considered += r["passages"]
                    continue
                n_cut += sum(not ok for ok in r["intact"])
                n_considered += len(r["intact"])
                n_chunks += r["chunks"]
                over += r["over_limit"]
                max_tok = max(max_tok, r["max_tokens"])
                offsets.update(r["offsets"])
                n_problems += r["n_problems"]
                problems += [f"{path.stem}: {p}" for p in r["problems"]]
            cut[(name, size)] = 100.0 * n_cut / max(1, n_considered)
            chunks[(name, size)] = n_chunks
            notes[(name, size)] = {"over": over, "max_tokens": max_tok, "offsets": offsets,
                                   "problems": problems[:10], "n_problems": n_problems}

    head = "| chunker | version | " + " | ".join(f"cut % @{s}" for s in sizes) + " | " + \
        " | ".join(f"chunks @{s}" for s in sizes) + " |"
    sep = "|---|---|" + "---:|" * (2 * len(sizes))
    rows = []
    best_peer_cut = {s: min((cut[(n, s)] for n in names if n in PEERS), default=None) for s in sizes}
    for name in names:
        cells = []
        for s in sizes:
            value = f"{cut[(name, s)]:.2f}"
            if name in PEERS and best_peer_cut[s] is not None and cut[(name, s)] == best_peer_cut[s]:
                value = f"{value} (best peer)"
            if errors.get((name, s)):
                value += f" ({errors[(name, s)]} contracts failed)"
            cells.append(value)
        cells += [f"{chunks[(name, s)]:,}" for s in sizes]
        rows.append(f"| {LABEL[name]} | {versions[PACKAGE[name]]} | " + " | ".join(cells) + " |")
    lengths = data["lengths"]
    too_long = " · ".join(f"{sum(n > s for n in lengths)} longer than {s} tokens" for s in sizes)
    table = f"{head}\n{sep}\n" + "\n".join(rows)
    table += f"\n\n{total_passages:,} annotated passages in {len(contracts)} contracts; {too_long} (no chunker can hold those whole)."

    # offsets / limits notes
    lines = ["| chunker | size | chunks over the limit (max tokens) | chunk offsets as reported / found by search / approximated / unlocated |",
             "|---|---:|---|---|"]
    for name in names:
        for s in sizes:
            n = notes[(name, s)]
            o = n["offsets"]
            lines.append(f"| {LABEL[name]} | {s} | {n['over']} ({n['max_tokens']}) | "
                         f"{o.get('exact', 0):,} / {o.get('found', 0):,} / {o.get('approximate', 0):,} / {o.get('unlocated', 0):,} |")
    offsets_table = "\n".join(lines)

    # per category: rlmpipe structure @512 vs the best peer @512
    category_table = ""
    size = sizes[0]
    best_peer = None
    peers_here = [n for n in names if n in PEERS]
    if "rlmpipe-structure" in names and peers_here:
        best_peer = min(peers_here, key=lambda n: (cut[(n, size)], names.index(n)))
        per: dict = defaultdict(lambda: [0, 0, 0])
        for path in contracts:
            records = passages.get(path.stem, [])
            ours = results[path.stem][("rlmpipe-structure", size)]
            theirs = results[path.stem][(best_peer, size)]
            for k, record in enumerate(records):
                row = per[record["category"]]
                row[0] += 1
                row[1] += "intact" not in ours or not ours["intact"][k]
                row[2] += "intact" not in theirs or not theirs["intact"][k]
        top = sorted(per.items(), key=lambda item: (-item[1][0], item[0]))[:10]
        lines = [f"| category | passages | rlmpipe structure cut % | {LABEL[best_peer]} cut % |", "|---|---:|---:|---:|"]
        for category, (n, ours_cut, theirs_cut) in top:
            lines.append(f"| {category} | {n} | {100 * ours_cut / n:.2f} | {100 * theirs_cut / n:.2f} |")
        category_table = "\n".join(lines)

    target = None
    if "rlmpipe-structure" in names and peers_here:
        target = all(cut[("rlmpipe-structure", s)] < min(cut[(n, s)] for n in peers_here) for s in sizes)
    return table, offsets_table, category_table, {"cut": cut, "chunks": chunks, "notes": notes, "target": target,
                                                  "best_peer": best_peer}


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 MiB corpus, 1 repetition, no 1 GiB file, 40 contracts")
    parser.add_argument("--chunkers", default=",".join(CHUNKERS), help="comma-separated subset (development)")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to skip: throughput,big,cuad")
    parser.add_argument("--keep-big", action="store_true", help="keep the 1 GiB file in bench/.cache/ for the next run")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, spec = args.child[0], json.loads(args.child[1])
        result = child_throughput(spec) if kind == "throughput" else child_special(spec)
        print(json.dumps(result))
        return

    # the CUAD workers are forked from here: import the code under test once, now, so that every
    # measurement of this run uses the same rlmpipe even if its sources are being edited meanwhile
    import rlmpipe.chunking  # noqa: F401
    import rlmpipe.ingest  # noqa: F401

    names = [n for n in args.chunkers.split(",") if n]
    unknown = set(names) - set(CHUNKERS)
    if unknown:
        raise SystemExit(f"unknown chunkers: {', '.join(sorted(unknown))} (known: {', '.join(CHUNKERS)})")
    skip = {s for s in args.skip.split(",") if s}
    quick = args.quick
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {message}", file=sys.stderr, flush=True)

    command = "python bench/chunking.py" + (" --quick" if quick else "")
    if args.chunkers != ",".join(CHUNKERS):
        command += f" --chunkers {args.chunkers}"
    if skip:
        command += f" --skip {args.skip}"
    today = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    stamp = f"{today}; {machine()}; reproduce from the repo root with `{command}` (peers: `pip install -r bench/requirements.txt`)"
    versions = {p: version_of(p) for p in sorted(set(PACKAGE.values()) | {"tiktoken", "bpe-openai"})}
    versions_line = ", ".join(f"{p} {v}" for p, v in versions.items())
    parts = [f"## Chunking{' (quick)' if quick else ''}\n",
             f"Written by `bench/chunking.py`. Versions: {versions_line}. All chunkers: cl100k_base tokens, no overlap. "
             "rlmpipe counts with bpe-openai, the peers with tiktoken (same token ids); max tokens below is "
             "re-measured for every chunk with tiktoken `encode_ordinary`, outside the timing.\n"]
    out_summary: dict = {}

    # ---------------- benchmark 1
    if "throughput" not in skip:
        target = 5 * MiB if quick else 50 * MiB
        corpus_path = CACHE / f"corpus-{target // MiB}MiB.txt"
        log(f"corpus: building/reusing {corpus_path}")
        corpus = build_corpus(target, corpus_path)
        repeats = 1 if quick else 3
        log(f"benchmark 1: throughput, {len(names)} chunkers x {repeats} repetitions on {corpus['bytes'] / MB:.1f} MB")
        runs = bench_throughput(corpus_path, names, repeats, log)
        table, info = throughput_table(runs, corpus, names, versions)
        summary, fastest = info["summary"], info["fastest"]

        def speed(name):
            return summary.get(name, {}).get("mbps")

        t_struct = t_fixed = None
        if fastest and speed("rlmpipe-structure"):
            t_struct = speed("rlmpipe-structure") >= 2 * speed(fastest)
        if speed("langchain-token") and speed("rlmpipe-fixed"):
            t_fixed = speed("rlmpipe-fixed") >= 2 * speed("langchain-token")
        targets = []
        if fastest and speed("rlmpipe-structure"):
            targets.append(f"- rlmpipe structure >= 2x the fastest peer ({LABEL[fastest]}): "
                           f"{speed('rlmpipe-structure') / speed(fastest):.2f}x: {verdict(t_struct)}")
        if speed("langchain-token") and speed("rlmpipe-fixed"):
            targets.append(f"- rlmpipe fixed >= 2x langchain TokenTextSplitter: "
                           f"{speed('rlmpipe-fixed') / speed('langchain-token'):.2f}x: {verdict(t_fixed)}")
        out_summary["throughput"] = {"targets": (t_struct, t_fixed)}
        skipped = f", {corpus['skipped']} unreadable files left out" if corpus["skipped"] else ""
        corpus_line = (f"Corpus `{corpus['path']}`: {corpus['bytes']:,} bytes ({corpus['bytes'] / MB:.1f} MB), sha256 "
                       f"`{corpus['sha256']}`: the {corpus['contracts']} CUAD contracts then {corpus['vim_docs']} vim help "
                       f"files (`{VIM_DOCS}/*.txt`), sorted paths, each ending in a newline, repeated until >= "
                       f"{target // MiB} MiB{skipped}.")
        parts += [
            f"### Throughput and peak memory, 512-token chunks{' (quick)' if quick else ''}\n",
            f"{stamp}.\n",
            corpus_line + f" Median of {repeats} run(s) per chunker, each in a fresh subprocess, in interleaved order. "
            "Timed: rlmpipe `open_document(path)` (validating scan of the file) + streaming `chunk_document`, keeping only "
            "offsets; peers: reading the file into one string + the chunking call. MB/s = corpus bytes / 10^6 / seconds. "
            "Peak RSS = the subprocess's VmHWM (interpreter and imports included; 'RSS before' is its RSS just "
            "before the clock started).\n",
            table + "\n",
            "Targets:\n\n" + ("\n".join(targets) if targets else "- n/a (chunkers missing)") + "\n",
        ]
        print("\n".join(parts[-4:]))

    # ---------------- benchmark 1b: 1 GiB, rlmpipe only
    if not quick and "big" not in skip and "throughput" not in skip:
        ours = [n for n in names if n in OURS]
        if ours:
            big_path = CACHE / "corpus-1GiB.txt"
            log(f"1 GiB file: building/reusing {big_path}")
            big = build_big(corpus_path, 1 << 30, big_path)
            rows = ["| chunker | MB/s | seconds | peak RSS MB | chunks | max token_count | target peak RSS < 250 MB |",
                    "|---|---:|---:|---:|---:|---:|---|"]
            loads: list[float] = []
            # the second pass pins glibc's mmap threshold (its default adapts upwards and then keeps
            # freed large blocks in the heap): a diagnostic of where the memory goes, not the target
            passes = [(name, None) for name in ours] + [(name, PINNED_MALLOC) for name in ours]
            for name, env in passes:
                label = LABEL[name] + (" [diagnostic: `MALLOC_MMAP_THRESHOLD_=131072`]" if env else "")
                log(f"  {name} on 1 GiB{' with ' + str(env) if env else ''}")
                r = run_child("throughput", {"chunker": name, "corpus": str(big_path), "max_tokens": 512, "discard": True},
                              env=env)
                if "error" in r:
                    rows.append(f"| {label} | failed: {r['error']} | | | | | **FAIL** |")
                    continue
                log(f"    {r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB")
                ok = r["peak_rss_mb"] < 250
                rows.append(f"| {label} | {r['bytes'] / MB / r['seconds']:.2f} | {r['seconds']:.1f} | "
                            f"{r['peak_rss_mb']:.0f} | {r['chunks']:,} | {r['max_reported']} | "
                            f"{'(not the target) ' if env else ''}{verdict(ok)} |")
                loads.append(r["load_before"])
            if not args.keep_big:
                big_path.unlink(missing_ok=True)
            parts += [
                "### rlmpipe on a 1 GiB file (streaming)\n",
                f"{stamp}.\n",
                f"`{big['path']}`: {big['bytes']:,} bytes, sha256 `{big['sha256']}` (the corpus above repeated whole; "
                f"{'kept' if args.keep_big else 'deleted after the run'}). One run per chunker in a fresh subprocess, chunks "
                "discarded as they stream by. Peers are not run here: they read the whole file into one string "
                "(over 1 GB of str before chunking); their peak RSS on the corpus above is in the table above. "
                "The rows marked *diagnostic* rerun rlmpipe with glibc's mmap threshold pinned at its default "
                "starting value (`MALLOC_MMAP_THRESHOLD_=131072`): glibc otherwise raises the threshold after the "
                "first large free and keeps later freed blocks (1 MiB read windows, section strings, numpy arrays) in "
                "the heap, so the gap between the two rows is allocator retention, not live data.\n",
                "\n".join(rows) + (f"\n\n1-minute load average before each run: "
                                   f"{', '.join(f'{x:.2f}' for x in loads)}." if loads else "") + "\n",
            ]
            print("\n".join(parts[-4:]))

    # ---------------- benchmark 2
    if "cuad" not in skip:
        limit = 40 if quick else None
        log(f"benchmark 2: clause integrity on CUAD ({'first 40' if quick else 'all'} contracts, sizes {SIZES})")
        data = bench_cuad(names, SIZES, limit, log)
        table, offsets_table, category_table, info = cuad_tables(data, names, SIZES, versions)
        out_summary["cuad"] = info
        targets = []
        if info["target"] is not None:
            detail = "; ".join(
                f"@{s}: {info['cut'][('rlmpipe-structure', s)]:.2f}% vs best peer "
                f"{min(info['cut'][(n, s)] for n in names if n in PEERS):.2f}%" for s in SIZES)
            targets.append(f"- rlmpipe structure cuts fewer passages than every peer at every size ({detail}): "
                           f"{verdict(info['target'])}")
        problem_lines = []
        for name in OURS:
            for s in SIZES:
                note = info["notes"].get((name, s))
                if note and note["n_problems"]:
                    problem_lines.append(f"- {LABEL[name]} @{s}: {note['n_problems']} invariant violations, e.g. "
                                         + "; ".join(note["problems"][:3]))
        parts += [
            f"### Clause integrity on CUAD{' (quick: 40 contracts)' if quick else ''}\n",
            f"{stamp}.\n",
            f"Data: `{CUAD}` ({len(data['contracts'])} contracts, `annotations.jsonl`). Every contract is chunked on its own "
            "(rlmpipe from the file, peers from its text); a passage is *cut* when no single chunk's character span "
            "contains it whole. Chunk spans: rlmpipe `char_start/char_end`, chonkie `start_index/end_index`, semchunk "
            "`offsets=True`, langchain `create_documents` with `add_start_index=True`; each is checked against the "
            "chunk text and, where it does not match, the chunk is searched for (table below). Fewer chunks = fewer "
            "LM calls.\n",
            table + "\n",
            "Targets:\n\n" + ("\n".join(targets) if targets else "- n/a") + "\n",
            f"Per category, top 10 by passages, at {SIZES[0]} tokens: rlmpipe structure vs the best peer at that size.\n",
            category_table + "\n",
            "Limits and offsets (chunk counts summed over contracts; 'found by search' = the reported offsets did not "
            "match the chunk text, 'approximated' = the chunk text is not in the contract, e.g. a token split "
            "inside a character decoded as U+FFFD, and was placed by its remaining text):\n",
            offsets_table + "\n",
        ]
        if problem_lines:
            parts.append("rlmpipe invariant violations seen:\n\n" + "\n".join(problem_lines) + "\n")
        print("\n".join(parts[-8:]))

    # ---------------- special tokens
    special = run_child("special", {"names": names})
    if "error" not in special:
        rows = ["| chunker | library defaults | as benchmarked |", "|---|---|---|"]
        for name in names:
            row = special.get(name, {})
            rows.append(f"| {LABEL[name]} | {row.get('default', '?')} | {row.get('as benchmarked', row.get('default', '?'))} |")
        parts += [
            "### Text that looks like a special token\n",
            "A document containing the literal text `<|endoftext|>` (64-token chunks). The corpora above contain none, "
            "so no run was affected; langchain was benchmarked with its documented `disallowed_special=()`, "
            "chonkie has no such option for a tiktoken encoding.\n",
            "\n".join(rows) + "\n",
        ]
        print("\n".join(parts[-3:]))

    finished = version_of("rlmpipe")
    if finished != versions["rlmpipe"]:
        warning = (f"**Warning: rlmpipe's chunking/ingest sources changed during this run** (at the start: "
                   f"{versions['rlmpipe']}, at the end: {finished}); the subprocess measurements may mix the two. "
                   "Rerun for consistent numbers.\n")
        parts.insert(2, warning)
        log(warning.strip())
    log(f"done in {time.perf_counter() - started:.0f} s")
    if not args.no_write:
        from _results import write_section

        target = write_section("chunking-quick" if quick else "chunking", "\n".join(parts))
        log(f"wrote {target}")


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    main()
