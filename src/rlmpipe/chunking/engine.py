"""The streaming chunker: blocks in, chunks out, in memory bounded by one section of text.

Blocks are gathered into sections of about ``SECTION_CHARS`` characters. Each section is tokenized
once (see :mod:`rlmpipe.chunking.cuts`); the strategy picks each chunk's end among the safe cuts that
keep it within ``chunk_tokens``. A chunk is only emitted when everything it could have ended on lies
inside the section; the rest of the section is carried into the next one and tokenized again
from its own start, which is itself a safe cut.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Iterable, Iterator

import numpy as np

from rlmpipe.chunking.chunk import Chunk, ChunkingConfig, make_chunk_id
from rlmpipe.chunking.cuts import Cuts, find_cuts, line_start, utf8_widths
from rlmpipe.chunking.fixed import FixedStrategy
from rlmpipe.chunking.structure import StructureStrategy
from rlmpipe.chunking.tokenizers import Tokenizer, get_tokenizer
from rlmpipe.ingest.document import Block

SECTION_CHARS = 1 << 18
#: A run this long with no safe cut in it (no spaces, no line breaks) is cut between tokens
#: rather than carried on: this is what bounds memory on pathological input.
MAX_UNCUT_CHARS = 1 << 17


class _Marks:
    """Page and heading path in effect from each block start on, for the text not yet emitted.

    Only changes are kept (a plain-text file has one mark), plus where heading blocks start.
    """

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.pages: list[int | None] = []
        self.paths: list[tuple[str, ...]] = []
        self.headings: list[int] = []

    def add(self, block: Block) -> None:
        if block.kind == "heading":
            self.headings.append(block.char_start)
        if self.starts and self.pages[-1] == block.page and self.paths[-1] == block.heading_path:
            return
        self.starts.append(block.char_start)
        self.pages.append(block.page)
        self.paths.append(block.heading_path)

    def at(self, offset: int) -> int:
        return max(0, bisect.bisect_right(self.starts, offset) - 1)

    def drop_before(self, offset: int) -> None:
        keep = self.at(offset)
        if keep:
            del self.starts[:keep], self.pages[:keep], self.paths[:keep]
        del self.headings[: bisect.bisect_left(self.headings, offset)]

    def headings_in(self, base: int) -> np.ndarray | None:
        if not self.headings:
            return None
        return np.asarray(self.headings, dtype=np.int64) - base


def hard_split(text: str, limit: int, tokenizer: Tokenizer) -> list[tuple[int, int, int]]:
    """Cut ``text`` (no safe cut inside) between tokens into verified pieces of at most ``limit`` tokens.

    Each piece is re-counted on its own, so the limit holds even where cutting a word changes how
    its halves tokenize. Returns (start, end, token_count) relative to ``text``.
    """
    lengths = tokenizer.token_byte_lengths()
    pieces: list[tuple[int, int, int]] = []
    position = 0
    window_chars = max(limit * 32, 1 << 16)
    while position < len(text):
        # One tokenization per window serves every piece cut from it (not one per piece: a long
        # line of base64 or "1.1.1..." would be tokenized ~30 times over).
        rest = text[position : position + window_chars]
        last_window = position + len(rest) >= len(text)
        ids = np.asarray(tokenizer.encode(rest), dtype=np.int64)
        token_end_bytes = np.cumsum(lengths[ids])
        # the character offset at which each token ends (rounded down to a whole character)
        points = np.frombuffer(rest.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        token_end_chars = np.searchsorted(np.cumsum(utf8_widths(points)), token_end_bytes, side="right")
        first_token, local = 0, 0
        while True:
            left = len(ids) - first_token
            if last_window and left <= limit:
                count = tokenizer.count(rest[local:])
                if count <= limit:
                    pieces.append((position + local, len(text), count))
                    return pieces
            elif not last_window and left <= 2 * limit and local:
                break  # near the window's end tokens may change with what follows: re-tokenize from here
            take = min(limit, left)
            while True:
                cut = int(token_end_chars[first_token + take - 1])
                if cut <= local:  # one character that needs more tokens than allowed: take it anyway
                    cut, count = local + 1, tokenizer.count(rest[local : local + 1])
                    break
                count = tokenizer.count(rest[local:cut])
                if count <= limit or take == 1:
                    break
                take -= 1
            if "\ud800" <= rest[cut - 1] <= "\udbff" and cut < len(rest):  # never split a surrogate pair
                cut += 1
                count = tokenizer.count(rest[local:cut])
            pieces.append((position + local, position + cut, count))
            local = cut
            first_token = int(np.searchsorted(token_end_chars, local, side="right"))
            if local >= len(rest):
                break
        position += local
    return pieces


#: Sections tokenized ahead of the one being cut.
PREFETCH = 2
#: Give freed memory back to the system every this many sections (see _release_free_memory).
TRIM_EVERY = 16


def _encode_array(encode, fallback, text: str) -> np.ndarray:
    try:
        return np.asarray(encode(text), dtype=np.int64)
    except BaseException as exc:  # tiktoken's Rust regex panics (a BaseException) on some inputs
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        return np.asarray(fallback(text), dtype=np.int64)


def _release_free_memory() -> None:
    """Ask glibc to return freed heap pages to the system.

    Each section allocates a few MB of short-lived buffers (its text, UTF-32 copy, numpy arrays);
    glibc keeps freed blocks in the heap rather than returning them, so a 1 GB document's resident
    size would creep up to ~550 MB although little is live (measured in bench/chunking.py).
    ``malloc_trim`` releases them; it is cheap every few MB of text. Elsewhere it does nothing.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


class _Chunker:
    def __init__(self, doc_id: str, config: ChunkingConfig, tokenizer: Tokenizer):
        self.doc_id = doc_id
        self.config = config
        self.key = config.key()
        self.tokenizer = tokenizer
        self.strategy = StructureStrategy() if config.strategy == "structure" else FixedStrategy()
        self.marks = _Marks()
        self.index = 0
        self.previous_end = 0  # document offset where the last emitted chunk ended
        self._sections_done = 0

    def run(self, blocks: Iterable[Block]) -> Iterator[Chunk]:
        base = 0  # document offset of the carried text
        carry, carry_ids = "", np.zeros(0, dtype=np.int64)
        for section, section_ids, safe_start, final in self._prefetched(self._sections(blocks)):
            text = carry + section
            ids = None
            if safe_start and carry_ids is not None and section_ids is not None:
                ids = np.concatenate((carry_ids, section_ids))  # additive: the junction is a safe cut
            if final:
                if text:
                    yield from self._section(text, base, final=True, ids=ids)
                return
            consumed, carry_ids = yield from self._section(text, base, final=False, ids=ids)
            carry = text[consumed:]
            base += consumed
            self.marks.drop_before(base)
            self._sections_done += 1
            if self._sections_done % TRIM_EVERY == 0:
                _release_free_memory()

    def _sections(self, blocks: Iterable[Block]) -> Iterator[tuple[str, bool, bool]]:
        """The document as ``(text, starts_safely, final)`` pieces of about ``SECTION_CHARS``.

        A piece ends where a line starts with text (a safe cut for the tokenizers that promise it),
        so that pieces tokenized apart add up to the whole; a piece with no such place is marked,
        and the next piece is tokenized together with what is carried over.
        """
        pending: list[str] = []
        size = 0
        safe = True
        for block in blocks:
            self.marks.add(block)
            pending.append(block.text)
            size += len(block.text)
            if size >= SECTION_CHARS:
                text = "".join(pending)
                cut = line_start(text, len(text) // 2, len(text)) if self.tokenizer.additive else 0
                if cut:
                    yield text[:cut], safe, False
                    pending, size, safe = [text[cut:]], len(text) - cut, True
                else:
                    yield text, safe, False
                    pending, size, safe = [], 0, False
        yield "".join(pending), safe, True

    def _prefetched(self, sections):
        """Tokenize the next section in another thread while this one is cut (the GIL is released by
        tiktoken's encoder), when the tokenizer can; else pass sections through untokenized."""
        encode = getattr(self.tokenizer, "encode_in_thread", None)
        if encode is None or not self.tokenizer.additive:
            for text, safe, final in sections:
                yield text, None, safe, final
            return
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(PREFETCH, thread_name_prefix="rlmpipe-tokenize")
        try:
            ahead: deque = deque()
            for text, safe, final in sections:
                ahead.append((text, pool.submit(_encode_array, encode, self.tokenizer.encode, text), safe, final))
                if len(ahead) > PREFETCH:
                    text0, future, safe0, final0 = ahead.popleft()
                    yield text0, future.result(), safe0, final0
            while ahead:
                text0, future, safe0, final0 = ahead.popleft()
                yield text0, future.result(), safe0, final0
        finally:
            # Never join threads here: a generator left unfinished is closed by the garbage collector, in
            # whatever thread it runs, maybe inside threading's own locks; a join there deadlocked a Ray
            # worker (the threads end by themselves once told).
            pool.shutdown(wait=False, cancel_futures=True)

    def _emit(self, text: str, base: int, start: int, end: int, tokens: int) -> Chunk:
        marks = self.marks
        first = marks.at(base + start)
        last = marks.at(base + end - 1)
        chunk = Chunk(
            chunk_id=make_chunk_id(self.doc_id, self.key, base + start, base + end),
            doc_id=self.doc_id,
            index=self.index,
            text=text[start:end],
            char_start=base + start,
            char_end=base + end,
            token_count=int(tokens),
            page_start=marks.pages[first],
            page_end=marks.pages[last],
            heading_path=marks.paths[first],
        )
        self.index += 1
        self.previous_end = base + end
        return chunk

    def _section(self, text: str, base: int, final: bool, ids: np.ndarray | None = None):
        """Emit the chunks this section decides; return how many characters it consumed and the
        token ids of the rest (None when they must be computed again)."""
        cfg, tokenizer, strategy = self.config, self.tokenizer, self.strategy
        limit_tokens = cfg.chunk_tokens
        cuts = find_cuts(
            text, tokenizer, final=final, structure=strategy.structure,
            headings=self.marks.headings_in(base) if strategy.structure else None, token_ids=ids,
        )
        chars, tokens = cuts.chars.tolist(), cuts.tokens.tolist()  # bisect on lists: per-chunk lookups
        last = len(chars) - 1
        i = 0
        while True:
            if final and i == last:
                return len(text)
            start_tok = tokens[i]
            limit = start_tok + limit_tokens
            # a chunk must end past the previous chunk's end (overlap never repeats a whole chunk)
            fresh = bisect.bisect_right(chars, self.previous_end - base)
            fresh = max(fresh, i + 1)
            if final and tokens[last] <= limit:
                j = last
            else:
                if not final and tokens[last] < start_tok + limit_tokens * strategy.lookahead:
                    if i == last and len(text) - chars[i] > MAX_UNCUT_CHARS:
                        consumed = yield from self._uncut(text, base, chars[i], len(text) - MAX_UNCUT_CHARS // 2)
                        return consumed, None
                    return chars[i], cuts.ids[tokens[i]:]
                hi = bisect.bisect_right(tokens, limit) - 1
                if fresh > hi and fresh - 1 > i:  # nothing new fits after the overlap: drop it
                    i = fresh - 1
                    continue
                if hi <= i:  # the next safe cut is too far: cut that unit between tokens
                    yield from self._hard(text, base, chars[i], chars[i + 1])
                    i += 1
                    continue
                lo = bisect.bisect_left(tokens, start_tok + cfg.min_fill * limit_tokens)
                lo = min(max(lo, fresh), hi)
                horizon = bisect.bisect_right(tokens, start_tok + limit_tokens * strategy.lookahead) - 1
                j = strategy.end(cuts, i, lo, hi, limit_tokens, horizon, min(fresh, hi))
            count = tokens[j] - tokens[i]
            if not tokenizer.additive:
                j, count = self._verified(text, cuts, i, j)
                if j == i:
                    yield from self._hard(text, base, chars[i], chars[i + 1])
                    i += 1
                    continue
            yield self._emit(text, base, chars[i], chars[j], count)
            if final and j == last:
                return len(text)
            i = strategy.next_start(cuts, i, j, cfg.overlap)

    def _hard(self, text: str, base: int, start: int, end: int) -> Iterator[Chunk]:
        for piece_start, piece_end, count in hard_split(text[start:end], self.config.chunk_tokens, self.tokenizer):
            yield self._emit(text, base, start + piece_start, start + piece_end, count)

    def _verified(self, text: str, cuts: Cuts, i: int, j: int) -> tuple[int, int]:
        """For tokenizers whose counts are not additive: shrink the chunk until its own count fits."""
        while j > i:
            count = self.tokenizer.count(text[cuts.chars[i] : cuts.chars[j]])
            if count <= self.config.chunk_tokens:
                return j, count
            j -= 1
        return i, 0

    def _uncut(self, text: str, base: int, start: int, stop: int):
        """A long run with no safe cut: hard-split it up to ``stop`` and go on from there."""
        pieces = hard_split(text[start:stop], self.config.chunk_tokens, self.tokenizer)
        for piece_start, piece_end, count in pieces[:-1]:
            yield self._emit(text, base, start + piece_start, start + piece_end, count)
        return start + pieces[-1][0]  # the last piece may grow with what follows: carry it


def chunk_blocks(blocks: Iterable[Block], doc_id: str,
                 config: ChunkingConfig | None = None) -> Iterator[Chunk]:
    """Chunks of a document given as a block stream (constant memory in document size)."""
    config = config or ChunkingConfig()
    return _Chunker(doc_id, config, get_tokenizer(config.tokenizer)).run(blocks)
