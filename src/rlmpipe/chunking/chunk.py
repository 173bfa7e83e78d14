"""The Chunk record and the configuration that produces it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from rlmpipe.chunking.tokenizers import DEFAULT_TOKENIZER

#: Bumped whenever the same configuration could cut differently, so stored chunk ids never lie.
ALGORITHM_VERSION = 1
STRATEGIES = ("structure", "fixed")


@dataclass(frozen=True, slots=True)
class Chunk:
    chunk_id: str
    doc_id: str
    index: int
    text: str
    char_start: int
    char_end: int
    token_count: int
    page_start: int | None = None
    page_end: int | None = None
    heading_path: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        record = asdict(self)
        record["heading_path"] = list(self.heading_path)
        return record


@dataclass(frozen=True, slots=True)
class ChunkingConfig:
    """How to cut. ``min_fill`` (structure only): a chunk is not closed at a natural boundary
    before it holds this share of ``chunk_tokens``, unless there is no other boundary."""

    strategy: str = "structure"
    chunk_tokens: int = 512  # the most tokens a chunk may have
    overlap: int = 0
    tokenizer: str = DEFAULT_TOKENIZER
    min_fill: float = 0.4

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r} (choose from: {', '.join(STRATEGIES)})")
        if self.chunk_tokens < 8:
            raise ValueError(f"chunk_tokens must be at least 8 (got {self.chunk_tokens})")
        if self.overlap < 0:
            raise ValueError(f"overlap must not be negative (got {self.overlap})")
        if self.overlap >= self.chunk_tokens:
            raise ValueError(
                f"overlap ({self.overlap}) must be smaller than chunk_tokens ({self.chunk_tokens}): "
                "otherwise the window never advances"
            )
        if not 0.0 <= self.min_fill < 1.0:
            raise ValueError(f"min_fill must be in [0, 1) (got {self.min_fill})")

    def key(self) -> str:
        """Canonical text of everything that decides the cuts (part of every chunk id)."""
        fields = {
            "v": ALGORITHM_VERSION,
            "strategy": self.strategy,
            "max_tokens": self.chunk_tokens,  # the key's own name: chunk ids stay what they were
            "overlap": self.overlap,
            "tokenizer": self.tokenizer,
        }
        if self.strategy == "structure":
            fields["min_fill"] = self.min_fill
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def make_chunk_id(doc_id: str, config_key: str, char_start: int, char_end: int) -> str:
    """Stable across processes and machines: a hash of document, configuration and offsets."""
    material = f"{doc_id}\x1f{config_key}\x1f{char_start}\x1f{char_end}".encode()
    return hashlib.sha256(material).hexdigest()[:24]
