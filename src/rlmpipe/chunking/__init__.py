"""Chunking: token-exact chunks of a block stream, fixed windows or structure-aware.

    >>> from rlmpipe.chunking import ChunkingConfig, chunk_text
    >>> chunks = chunk_text("1. Term. This Agreement ...", ChunkingConfig(chunk_tokens=512))

Every chunk satisfies ``chunk.text == source[chunk.char_start:chunk.char_end]`` and
``chunk.token_count == len(tokenizer.encode(chunk.text)) <= chunk_tokens``; together the chunks cover
the source in order, overlapping only by the requested overlap.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterator

from rlmpipe.chunking.chunk import ALGORITHM_VERSION, STRATEGIES, Chunk, ChunkingConfig, make_chunk_id
from rlmpipe.chunking.engine import chunk_blocks
from rlmpipe.chunking.tokenizers import DEFAULT_TOKENIZER, Tokenizer, get_tokenizer
from rlmpipe.ingest import Block, Document, DocumentError, ReadLimits, open_document, open_documents
from rlmpipe.ingest.document import doc_id_from_digest
from rlmpipe.ingest.text import runs

__all__ = [
    "ALGORITHM_VERSION", "STRATEGIES", "DEFAULT_TOKENIZER", "Chunk", "ChunkingConfig", "Tokenizer",
    "chunk", "chunk_blocks", "chunk_document", "chunk_text", "chunk_paths", "get_tokenizer", "make_chunk_id",
]


def chunk_document(document: Document, config: ChunkingConfig | None = None) -> Iterator[Chunk]:
    """Chunks of a validated document, streamed."""
    return chunk_blocks(document.blocks(), document.doc_id, config)


def chunk(source, config: ChunkingConfig | None = None, **settings) -> Iterator[Chunk]:
    """Chunks of a document, streamed: ``source`` is a :class:`~rlmpipe.ingest.Document` or the path
    of a file (``str`` or ``Path``); ``settings`` are :class:`ChunkingConfig` fields
    (``chunk_tokens=512, overlap=64, strategy="fixed"``). For a string of text, use :func:`chunk_text`."""
    config = config or ChunkingConfig(**settings)
    if isinstance(source, Document):
        return chunk_document(source, config)
    if isinstance(source, str) and not os.path.exists(source):
        raise ValueError(f"no such file: {source[:80]!r} (to chunk a string of text, use rlmpipe.chunk_text)")
    return chunk_document(open_document(source), config)


def chunk_text(text: str, config: ChunkingConfig | None = None, doc_id: str | None = None) -> list[Chunk]:
    """Chunks of an in-memory string (its id, unless given, is the hash of its UTF-8 bytes)."""
    if doc_id is None:
        doc_id = doc_id_from_digest(hashlib.sha256(text.encode("utf-8", "surrogatepass")))
    # blocks of bounded size, as a reader makes them: a section never grows past what one
    # tokenizer call handles (tiktoken overflows its stack on a million spaces in one piece)
    blocks = (Block(part, start) for start, part in runs(iter([text]), ReadLimits().max_block_chars))
    return list(chunk_blocks(blocks, doc_id, config))


def chunk_paths(paths, config: ChunkingConfig | None = None, limits=None):
    """Every file under ``paths``, in order: its :class:`~rlmpipe.ingest.Document`, then its chunks.

    A file that cannot be read yields its :class:`~rlmpipe.ingest.DocumentError` (in place of its
    chunks, or after those streamed before the problem showed) and the others go on. Files of
    unsupported types inside a folder are reported once per folder as a ``SkippedFiles`` notice.
    """
    config = config or ChunkingConfig()
    get_tokenizer(config.tokenizer)  # fail on a bad tokenizer name before reading anything
    for item in open_documents(paths, limits):
        yield item  # a Document, a DocumentError or a Notice
        if isinstance(item, Document):
            try:
                yield from chunk_document(item, config)
            except DocumentError as error:  # found while streaming (e.g. a corrupt PDF page)
                yield error
