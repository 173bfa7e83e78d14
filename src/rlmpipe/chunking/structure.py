"""Structure-aware chunks: cut at the strongest boundary that leaves a well-filled chunk.

Boundaries, strongest first: headings ("ARTICLE IV", "Section 5", all-caps titles, document
headings), numbered sections ("12."), numbered clauses ("12.3"), lettered items ("(a)", "(iv)"),
paragraphs, lines, sentences, clause punctuation, words; a single unit larger than the limit is
cut between tokens. Among the places where the chunk would hold between ``min_fill`` and all of
``chunk_tokens``, the strongest boundary wins, the later one among equals: so small neighbours are
merged up to the limit and oversize sections are split at their own inner structure.

When only weak boundaries (inside a paragraph) are in reach, the paragraph is too long for one
chunk: it is cut into equal parts rather than filled greedily, so that the last part is not a
scrap and the next chunk starts at the paragraph's end instead of inside it (a greedy cut there
pushes every later chunk off its boundaries, one after another).
"""

from __future__ import annotations

import numpy as np

from rlmpipe.chunking.cuts import PARAGRAPH, Cuts

#: How far past a chunk's limit to look for the end of the paragraph it cuts (in chunk lengths).
LOOKAHEAD = 4


class StructureStrategy:
    structure = True
    lookahead = LOOKAHEAD

    def end(self, cuts: Cuts, start: int, lo: int, hi: int, chunk_tokens: int = 0, horizon: int = -1,
            floor: int = 0) -> int:
        window = cuts.strength[lo : hi + 1]
        best = hi - int(np.argmax(window[::-1]))  # strongest; the latest among equals
        if cuts.strength[best] >= PARAGRAPH or not chunk_tokens:
            return best
        # Only weak boundaries in reach: find where this paragraph ends, and cut it evenly.
        stop = horizon if horizon >= 0 else len(cuts.tokens) - 1
        later = np.flatnonzero(cuts.strength[hi + 1 : stop + 1] >= PARAGRAPH)
        if later.size == 0:
            return best
        unit_end = hi + 1 + int(later[0])
        span = int(cuts.tokens[unit_end] - cuts.tokens[start])
        parts = -(-span // chunk_tokens)
        target = cuts.tokens[start] + span / parts
        slack = chunk_tokens / 4
        first = int(np.searchsorted(cuts.tokens, target - slack, side="left"))
        last = int(np.searchsorted(cuts.tokens, min(target + slack, cuts.tokens[start] + chunk_tokens), side="right")) - 1
        first, last = max(first, start + 1, floor), min(last, hi)
        if first > last:
            return best
        candidates = np.arange(first, last + 1)
        strength = cuts.strength[first : last + 1].astype(np.float64)
        distance = np.abs(cuts.tokens[first : last + 1] - target) / chunk_tokens
        return int(candidates[np.argmax(strength - distance)])  # strongest; the nearest the target

    def next_start(self, cuts: Cuts, start: int, end: int, overlap: int) -> int:
        if overlap <= 0:
            return end
        first = int(np.searchsorted(cuts.tokens, cuts.tokens[end] - overlap, side="left"))
        first = max(first, start + 1)
        if first >= end:
            return end
        window = cuts.strength[first:end]
        return first + int(np.argmax(window))  # strongest; the earliest (most overlap) among equals
