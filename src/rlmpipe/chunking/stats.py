"""Counts and token distribution of a chunk stream (constant memory per chunk: one int)."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field


@dataclass
class ChunkStats:
    documents: int = 0
    failed: int = 0
    chunks: int = 0
    characters: int = 0
    tokens: array = field(default_factory=lambda: array("l"))

    def add(self, token_count: int, characters: int) -> None:
        self.chunks += 1
        self.characters += characters
        self.tokens.append(token_count)

    def summary(self) -> dict:
        ordered = sorted(self.tokens)

        def quantile(q: float) -> int:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0

        total = sum(ordered)
        return {
            "documents": self.documents,
            "failed": self.failed,
            "chunks": self.chunks,
            "characters": self.characters,
            "tokens": total,
            "tokens_min": ordered[0] if ordered else 0,
            "tokens_p10": quantile(0.10),
            "tokens_p50": quantile(0.50),
            "tokens_p90": quantile(0.90),
            "tokens_max": ordered[-1] if ordered else 0,
            "tokens_mean": round(total / len(ordered), 1) if ordered else 0.0,
        }

    def histogram(self, bins: int = 8) -> list[tuple[int, int, int]]:
        """(low, high, count) rows over the token counts."""
        if not self.tokens:
            return []
        low, high = min(self.tokens), max(self.tokens)
        width = max(1, -(-(high - low + 1) // bins))
        counts = [0] * bins
        for value in self.tokens:
            counts[min(bins - 1, (value - low) // width)] += 1
        return [(low + k * width, low + (k + 1) * width - 1, counts[k]) for k in range(bins) if counts[k]]
