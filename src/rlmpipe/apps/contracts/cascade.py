"""The cascade: the clause finder reads the whole contract, a language model reads only what it must.

The finder scores every passage for every category. A passage whose best score over the categories
clears the *selection* threshold (the one score that kept, say, 95% of the experts' passages in
cross-validation) is a candidate; it is asked about the categories whose scores clear that
threshold or a generous per-category one (``ClauseFinder.cascade_thresholds``). Each candidate is
shown to the LM inside a window of the contract around it (``context_chars`` on each side, cut at spaces), windows that
touch are merged (up to ``max_window_chars``), and windows are packed into calls of at most
``batch_tokens`` tokens of text. The LM is asked only about each window's candidate categories: it
confirms or rejects each, quotes the shortest passage that shows it, and adds the risks and
obligations it sees there. Everything it quotes is verified against the window it was shown.

Streaming: passages are scored as the document's blocks arrive, and a window is complete as soon as
the next passage starts beyond its right context; memory holds the recent text, not the contract.
A window's text is the contract's own text (the blocks as read), so offsets and quotes are exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from rlmpipe.apps.contracts.categories import NAMES, code

NONE = np.zeros(0, dtype=np.int64)
#: a window grows by merging candidates within reach of each other up to about this many characters
MAX_WINDOW_CHARS = 6000


@dataclass
class Window:
    """A stretch of the contract shown to the LM, with the categories suspected in it."""

    char_start: int
    char_end: int
    text: str
    categories: dict[str, float] = field(default_factory=dict)  # category -> best finder score inside

    def key(self) -> list:
        """What identifies the window's question (for the step key): its offsets and categories."""
        return [self.char_start, self.char_end, sorted(self.categories)]


class _Text:
    """The text of a document's blocks as they are read, by absolute offsets, with what no window
    can need any more dropped."""

    def __init__(self) -> None:
        self.start = 0  # absolute offset of self.text[0]
        self.text = ""

    def tee(self, blocks: Iterable) -> Iterator:
        """``blocks`` unchanged, their text kept as they pass (blocks are contiguous)."""
        for block in blocks:
            if not self.text:
                self.start = block.char_start
            self.text += block.text
            yield block

    def end(self) -> int:
        return self.start + len(self.text)

    def slice(self, start: int, end: int) -> str:
        return self.text[start - self.start:end - self.start]

    def forget_before(self, offset: int) -> None:
        offset = min(offset, self.end())
        if offset > self.start:
            self.text = self.text[offset - self.start:]
            self.start = offset

    def snap_left(self, offset: int) -> int:
        """``offset`` moved left to the start of its word (never before the text kept)."""
        offset = max(offset, self.start)
        while offset > self.start and not self.text[offset - self.start - 1].isspace():
            offset -= 1
        return offset

    def snap_right(self, offset: int) -> int:
        """``offset`` moved right to the end of the word it cuts, if it cuts one."""
        offset = min(offset, self.end())
        if offset <= self.start or self.text[offset - self.start - 1].isspace():
            return offset
        while offset < self.end() and not self.text[offset - self.start].isspace():
            offset += 1
        return offset


def candidate_windows(blocks: Iterable, score: Callable[[Iterable], Iterable], categories: tuple[str, ...],
                      thresholds: np.ndarray, *, ask: np.ndarray | None = None, context_chars: int = 300,
                      max_window_chars: int = MAX_WINDOW_CHARS) -> Iterator[Window]:
    """Windows around the passages with a score clearing ``thresholds``, in document order.

    ``score(blocks)`` yields ``(passage, scores)`` (:meth:`ClauseFinder.score`), ``scores`` in
    ``categories`` order. A candidate is asked about the categories clearing ``thresholds`` or
    ``ask`` (default: ``thresholds`` alone). A candidate whose left context touches the current
    window's right context joins it, unless the window would pass ``max_window_chars``. Windows
    never overlap."""
    text = _Text()
    current: Window | None = None
    reach = 0  # where the current window's right context ends
    last_end = 0  # where the previous window ended
    asked = thresholds if ask is None else np.minimum(thresholds, ask)
    for passage, scores in score(text.tee(blocks)):
        hits = np.flatnonzero(scores >= asked) if (scores >= thresholds).any() else NONE
        if current is not None and (  # a candidate whose left context touches the right context joins
                passage.char_start > reach + context_chars or passage.char_end - current.char_start > max_window_chars
                if len(hits) else passage.char_start >= reach):
            limit = passage.char_start if len(hits) else reach
            yield _finish(current, text, min(reach, limit))
            last_end = current.char_end
            current = None
        if not len(hits):
            if current is None:  # keep only what the next candidate's left context may need
                text.forget_before(passage.char_end - context_chars - 1)
            continue
        if current is None:
            start = max(last_end, text.snap_left(passage.char_start - context_chars))
            current = Window(start, passage.char_end, "", {})
            text.forget_before(start)
        for k in hits:
            name = categories[k]
            current.categories[name] = max(float(scores[k]), current.categories.get(name, 0.0))
        current.char_end = passage.char_end
        reach = passage.char_end + context_chars
    if current is not None:
        yield _finish(current, text, reach)


def _finish(window: Window, text: _Text, right: int) -> Window:
    """The window with its right context up to ``right`` (snapped to a word's end, never past
    what was read) and its text."""
    end = max(window.char_end, text.snap_right(min(right, text.end())))
    window.char_end = end
    window.text = text.slice(window.char_start, window.char_end)
    return window


def batches(windows: Iterable[Window], count_tokens, batch_tokens: int) -> Iterator[list[Window]]:
    """Windows packed, in order, into groups of at most ``batch_tokens`` tokens of text (a window
    larger than that is a group of its own)."""
    group: list[Window] = []
    size = 0
    for window in windows:
        tokens = count_tokens(window.text)
        if group and size + tokens > batch_tokens:
            yield group
            group, size = [], 0
        group.append(window)
        size += tokens
    if group:
        yield group


def excerpts_text(group: list[Window]) -> str:
    """The numbered excerpts of one call, each with the codes of the categories suspected in it
    (``categories.code``; the call's guide explains each code once)."""
    parts = []
    for number, window in enumerate(group, start=1):
        suspected = ", ".join(code(name) for name in NAMES if name in window.categories)
        parts.append(f"### Excerpt {number} (suspected: {suspected})\n{window.text.strip()}")
    return "\n\n".join(parts)
