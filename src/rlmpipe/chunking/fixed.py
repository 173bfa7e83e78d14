"""Fixed token windows: each chunk is the longest run of whole words that fits in ``chunk_tokens``;
the next one starts up to ``overlap`` tokens before it ends.

Windows end on word or line boundaries (a word longer than a window is cut between tokens), which
keeps every count exact without re-tokenizing chunks.
"""

from __future__ import annotations

import numpy as np

from rlmpipe.chunking.cuts import Cuts


class FixedStrategy:
    structure = False
    lookahead = 1

    def end(self, cuts: Cuts, start: int, lo: int, hi: int, chunk_tokens: int = 0, horizon: int = -1,
            floor: int = 0) -> int:
        return hi

    def next_start(self, cuts: Cuts, start: int, end: int, overlap: int) -> int:
        if overlap <= 0:
            return end
        first = int(np.searchsorted(cuts.tokens, cuts.tokens[end] - overlap, side="left"))
        return max(first, start + 1) if first < end else end
