"""Bad input: one typed error naming the file and the problem, and the other files still go through."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from rlmpipe.chunking import Chunk, ChunkingConfig, chunk_paths
from rlmpipe.ingest import (
    BinaryDocument,
    CorruptDocument,
    Document,
    DocumentError,
    EmptyDocument,
    EncryptedDocument,
    InvalidEncoding,
    LineTooLong,
    NoExtractableText,
    SkippedFiles,
    UnreadablePath,
    UnsupportedFormat,
    open_document,
)
from tests.support.documents import write_encrypted_pdf, write_pdf


def make_bad_files(folder):
    """name -> (bytes or None for special handling, expected error class, words in the message)."""
    (folder / "empty.txt").write_bytes(b"")
    (folder / "blank.md").write_bytes(b"  \n\n\t\n")
    (folder / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (folder / "latin1.txt").write_bytes("Café crème\n".encode("latin-1"))
    (folder / "truncated.txt").write_bytes("ok €".encode("utf-8")[:-1])
    (folder / "notes.rtf").write_bytes(b"{\\rtf1 hello}")
    (folder / "corrupt.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage \x00\x01 trailer")
    (folder / "corrupt.docx").write_bytes(b"PK\x03\x04 this is not a zip file at all")
    with zipfile.ZipFile(folder / "nodoc.docx", "w") as archive:
        archive.writestr("hello.txt", "no word/document.xml here")
    (folder / "legacy.docx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 512)
    write_encrypted_pdf(folder / "locked.pdf", ["secret contract text"])
    write_pdf(folder / "scanned.pdf", ["", ""])
    (folder / "dangling.txt").symlink_to(folder / "missing-target.txt")
    return {
        "empty.txt": (EmptyDocument, "empty"),
        "blank.md": (EmptyDocument, "only whitespace"),
        "binary.txt": (BinaryDocument, "binary"),
        "latin1.txt": (InvalidEncoding, "invalid UTF-8 at byte 3"),
        "truncated.txt": (InvalidEncoding, "ends inside a character"),
        "notes.rtf": (UnsupportedFormat, "unsupported file type .rtf"),
        "corrupt.pdf": (CorruptDocument, "corrupt PDF"),
        "corrupt.docx": (CorruptDocument, "not a zip"),
        "nodoc.docx": (CorruptDocument, "no word/document.xml"),
        "legacy.docx": (EncryptedDocument, "password-protected"),
        "locked.pdf": (EncryptedDocument, "password is required"),
        "dangling.txt": (UnreadablePath, "no such file"),
    }


def test_each_bad_file_gets_one_typed_one_line_error(tmp_path):
    expected = make_bad_files(tmp_path)
    for name, (error_type, words) in expected.items():
        with pytest.raises(error_type) as caught:
            open_document(tmp_path / name)
        message = str(caught.value)
        assert message.startswith(str(tmp_path / name) + ": "), message
        assert words in message, message
        assert "\n" not in message
        assert isinstance(caught.value, DocumentError)


def test_scanned_pdf_without_text_fails_while_streaming_with_a_clear_error(tmp_path):
    path = write_pdf(tmp_path / "scanned.pdf", ["", ""])
    document = open_document(path)
    with pytest.raises(NoExtractableText, match="no extractable text in 2 page"):
        list(document.blocks())


def test_directory_and_missing_path(tmp_path):
    with pytest.raises(UnreadablePath, match="is a directory"):
        open_document(tmp_path)
    with pytest.raises(UnreadablePath, match="no such file"):
        open_document(tmp_path / "nope.txt")


def test_a_100_mb_file_with_no_line_breaks_is_refused_quickly_in_bounded_memory(tmp_path):
    path = tmp_path / "oneline.txt"
    with open(path, "wb") as handle:
        block = b"x" * (1 << 20)
        for _ in range(100):
            handle.write(block)
    with pytest.raises(LineTooLong, match="longer than 8,388,608 bytes"):
        open_document(path)


def test_one_bad_file_never_stops_the_others(tmp_path):
    make_bad_files(tmp_path)
    (tmp_path / "good.txt").write_text("1. Term. This Agreement lasts one year.\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "also-good.md").write_text("# Fees\n\nPay monthly.\n", encoding="utf-8")
    items = list(chunk_paths([tmp_path, tmp_path / "notes.rtf"], ChunkingConfig(chunk_tokens=64)))
    errors = [i for i in items if isinstance(i, DocumentError)]
    documents = [i for i in items if isinstance(i, Document)]
    chunks = [i for i in items if isinstance(i, Chunk)]
    skipped = [i for i in items if isinstance(i, SkippedFiles)]
    assert sorted(d.path.name for d in documents) == ["also-good.md", "good.txt", "scanned.pdf"]
    assert {c.text for c in chunks} == {
        "1. Term. This Agreement lasts one year.\n", "# Fees\n\nPay monthly.\n"
    }
    failed = sorted(e.path.rsplit("/", 1)[-1] for e in errors)
    assert failed == sorted(
        ["empty.txt", "blank.md", "binary.txt", "latin1.txt", "truncated.txt", "corrupt.pdf",
         "corrupt.docx", "nodoc.docx", "legacy.docx", "locked.pdf", "dangling.txt", "scanned.pdf",
         "notes.rtf"]
    )
    # inside a folder an unsupported type is summarised once; named explicitly it is an error
    assert len(skipped) == 1 and skipped[0].suffixes == {".rtf": 1}


def test_cli_prints_one_line_per_bad_file_no_traceback_and_processes_the_rest(tmp_path):
    make_bad_files(tmp_path)
    (tmp_path / "good.txt").write_text("Section 1. Payment is due in 30 days.\n", encoding="utf-8")
    out = tmp_path / "chunks.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "rlmpipe.cli", "chunk", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    error_lines = [line for line in lines if line.startswith("error: ")]
    assert len(error_lines) == 12, result.stderr  # every bad file once (the .rtf is a note, see above)
    assert any("latin1.txt: invalid UTF-8" in line for line in error_lines)
    assert any(line.startswith("note: ") and ".rtf x1" in line for line in lines)
    assert "Payment is due in 30 days" in out.read_text(encoding="utf-8")
