"""Structure-aware chunks: cut at the strongest boundary that leaves a well-filled chunk.

Boundaries, strongest first: headings ("ARTICLE IV", "Section 5", all-caps titles, document
headings), numbered sections ("12."), numbered clauses ("12.3"), lettered items ("(a)", "(iv)"),
paragraphs, lines, sentences, clause punctuation, words; a single unit larger than the limit is
cut between tokens. Among the places where the chunk would hold between ``min_fill`` and all of
``max_tokens``, the strongest boundary wins, the later one among equals: so small neighbours are
merged up to the limit and oversize sections are split at their own inner structure.
"""

from __future__ import annotations

import numpy as np

from rlmpipe.chunking.cuts import Cuts


class StructureStrategy:
    structure = True

    def end(self, cuts: Cuts, start: int, lo: int, hi: int) -> int:
        window = cuts.strength[lo : hi + 1]
        return hi - int(np.argmax(window[::-1]))  # strongest; the latest among equals

    def next_start(self, cuts: Cuts, start: int, end: int, overlap: int) -> int:
        if overlap <= 0:
            return end
        first = int(np.searchsorted(cuts.tokens, cuts.tokens[end] - overlap, side="left"))
        first = max(first, start + 1)
        if first >= end:
            return end
        window = cuts.strength[first:end]
        return first + int(np.argmax(window))  # strongest; the earliest (most overlap) among equals
