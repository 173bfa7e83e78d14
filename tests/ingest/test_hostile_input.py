"""Input built to hurt: zip bombs, huge paragraphs and style sheets, FIFOs, unreadable folders, paths
given twice, names with control characters, misnamed files, UTF-16/32. Each gets one clear line (or
is read correctly), memory stays bounded (the child's own peak RSS), and the other files go on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import pytest

from rlmpipe.ingest import (
    CorruptDocument,
    Document,
    DocumentError,
    Notice,
    UnreadablePath,
    expand_paths,
    open_document,
    open_documents,
)
from tests.support.documents import write_pdf

ROOT = Path(__file__).resolve().parents[2]
W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def write_raw_docx(path: Path, body: bytes | None = None, *, paragraphs=None, styles: bytes | None = None,
                   compression=zipfile.ZIP_DEFLATED) -> Path:
    """A minimal .docx written by hand (python-docx would build it in memory)."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        if body is None:
            runs = "".join(f"<w:p><w:r><w:t>{text}</w:t></w:r></w:p>" for text in paragraphs or ["Hello."])
            body = f'<w:document xmlns:w="{W}"><w:body>{runs}</w:body></w:document>'.encode()
        archive.writestr("word/document.xml", body)
        if styles is not None:
            archive.writestr("word/styles.xml", styles)
        archive.writestr("[Content_Types].xml", "<Types/>")
    return path


def child(code: str, *args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; it may print JSON. ``peak_mb()`` there is its own peak RSS."""
    prelude = textwrap.dedent("""
        import json, sys
        import rlmpipe
        def peak_mb():  # VmHWM: this process's own peak (ru_maxrss carries the parent's over exec)
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, **kwargs)


# --- zip containers ----------------------------------------------------------------------------------
def test_a_docx_zip_bomb_is_refused_before_it_unpacks(tmp_path):
    # 200 MB of one repeated paragraph packs to a few hundred KB: the ratio gives it away
    paragraph = b"<w:p><w:r><w:t>" + b"A" * 1000 + b"</w:t></w:r></w:p>"
    body = b'<w:document xmlns:w="' + W.encode() + b'"><w:body>' + paragraph * 200_000 + b"</w:body></w:document>"
    path = write_raw_docx(tmp_path / "bomb.docx", body)
    assert path.stat().st_size < 2_000_000
    result = child("""
        from rlmpipe.ingest import open_document, DocumentError
        try:
            open_document(sys.argv[1]); print(json.dumps({"error": None}))
        except DocumentError as e:
            print(json.dumps({"error": str(e), "peak": peak_mb()}))
    """, str(path))
    outcome = json.loads(result.stdout)
    assert "zip bomb" in outcome["error"] and "word/document.xml" in outcome["error"], outcome
    assert outcome["peak"] < 150, outcome  # the interpreter and imports alone are ~40 MB


def test_a_styles_part_bomb_is_refused_too(tmp_path):
    styles = b'<w:styles xmlns:w="' + W.encode() + b'">' + b'<w:style w:styleId="x"/>' * 400_000 + b"</w:styles>"
    path = write_raw_docx(tmp_path / "styles.docx", styles=styles)
    with pytest.raises(CorruptDocument, match="word/styles.xml unpacks to .* times its packed size"):
        open_document(path)


@pytest.mark.parametrize("level", ["\u00b2", "\u0663", "-1", "12", ""])
def test_an_outline_level_that_is_not_0_to_8_is_body_text_not_a_crash(tmp_path, level):
    """``w:outlineLvl`` must be 0-8; anything else ("²" passes ``str.isdigit`` but not ``int``) makes
    the paragraph body text, on a paragraph and on a style alike."""
    styles = (f'<w:styles xmlns:w="{W}"><w:style w:styleId="odd"><w:name w:val="Odd"/>'
              f'<w:pPr><w:outlineLvl w:val="{level}"/></w:pPr></w:style></w:styles>').encode()
    body = (f'<w:document xmlns:w="{W}"><w:body>'
            f'<w:p><w:pPr><w:outlineLvl w:val="{level}"/></w:pPr><w:r><w:t>Own level.</w:t></w:r></w:p>'
            f'<w:p><w:pPr><w:pStyle w:val="odd"/></w:pPr><w:r><w:t>Style level.</w:t></w:r></w:p>'
            '</w:body></w:document>').encode()
    blocks = list(open_document(write_raw_docx(tmp_path / "odd.docx", body, styles=styles)).blocks())
    assert "".join(b.text for b in blocks).split() == ["Own", "level.", "Style", "level."]
    assert all(b.kind == "text" and b.heading_path == () for b in blocks)


def _linear_in_size(code: str, sizes: tuple[int, int], tmp_path: Path) -> list[dict]:
    results = []
    for size in sizes:
        result = child(code, str(tmp_path), str(size))
        assert result.returncode == 0, result.stderr[-2000:]
        results.append(json.loads(result.stdout))
    return results


def test_one_huge_paragraph_streams_in_bounded_memory_and_linear_work(tmp_path):
    """A 10 or 40 MB paragraph (many runs, and one giant run), read within generous limits: peak
    memory does not follow the paragraph's size, and the work per MB does not grow with it."""
    code = """
        import os, random, time, zipfile
        from pathlib import Path
        from rlmpipe.ingest import open_document, ReadLimits
        folder, size = Path(sys.argv[1]), int(sys.argv[2])
        W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
        words = [''.join(random.Random(i).choice('abcdefghij') for _ in range(7)) for i in range(5000)]
        rnd = random.Random(0)
        def text(n):
            out, total = [], 0
            while total < n:
                w = rnd.choice(words); out.append(w); total += len(w) + 1
            return ' '.join(out)
        runs = ''.join('<w:r><w:t xml:space="preserve">' + text(4000) + ' </w:t></w:r>' for _ in range(size // 4000))
        giant = '<w:r><w:t>' + text(size // 4) + '</w:t></w:r>'
        body = f'<w:document xmlns:w="{W}"><w:body><w:p>{runs}</w:p><w:p>{giant}</w:p></w:body></w:document>'
        path = folder / f"huge-{size}.docx"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("word/document.xml", body)
        del body, runs, giant
        import gc; gc.collect()
        before = peak_mb()
        started = time.process_time()
        document = open_document(path, ReadLimits(max_unpack_ratio=1e9))
        characters = blocks = largest = 0
        for block in document.blocks():
            characters += len(block.text); blocks += 1; largest = max(largest, len(block.text))
        seconds = time.process_time() - started
        print(json.dumps({"characters": characters, "blocks": blocks, "largest": largest,
                          "seconds": seconds, "peak": peak_mb(), "before": before}))
    """
    small, large = _linear_in_size(code, (10_000_000, 40_000_000), tmp_path)
    for result in (small, large):
        assert result["largest"] <= 1 << 16  # every block within max_block_chars
    assert large["characters"] > 3.5 * small["characters"]
    per_mb = [r["seconds"] / (r["characters"] / 1e6) for r in (small, large)]
    assert per_mb[1] <= 2.5 * max(per_mb[0], 0.01), per_mb  # 4x the text: linear is ~1x, quadratic ~4x
    # memory: what the parser holds is the giant run's text (expat hands it over whole) plus a few
    # blocks, not the paragraph's XML tree (the old reader peaked at 704 MB on 100 MB)
    assert large["peak"] - large["before"] < 250, large


def test_a_huge_styles_part_streams(tmp_path):
    code = """
        import zipfile
        from pathlib import Path
        from rlmpipe.ingest import open_document, ReadLimits
        folder, size = Path(sys.argv[1]), int(sys.argv[2])
        W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
        styles = f'<w:styles xmlns:w="{W}">' + ''.join(
            f'<w:style w:styleId="s{i}"><w:name w:val="style number {i}"/></w:style>' for i in range(size)) + '</w:styles>'
        styles += ''
        body = f'<w:document xmlns:w="{W}"><w:body><w:p><w:r><w:t>Hi.</w:t></w:r></w:p></w:body></w:document>'
        path = folder / f"styles-{size}.docx"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("word/document.xml", body); archive.writestr("word/styles.xml", styles)
        del styles
        import gc; gc.collect()
        before = peak_mb()
        text = open_document(path, ReadLimits(max_unpack_ratio=1e9)).text()
        print(json.dumps({"text": text, "peak": peak_mb(), "before": before}))
    """
    result = _linear_in_size(code, (500_000, 500_000), tmp_path)[0]
    assert result["text"] == "Hi.\n\n"
    assert result["peak"] - result["before"] < 150, result  # the old reader parsed it whole: GBs


def test_one_style_with_a_million_children_under_the_ratio_limit_is_refused_in_bounded_memory(tmp_path):
    """Issue 28: a styles.xml of one <w:style> with many children, packed under the ratio limit (so the
    zip-bomb check passes), was read whole: 2.7 MB took 3.73 GB. Every part is bounded by what it
    holds too: the style is refused once it holds more than Word ever writes in one."""
    code = """
        import random, zipfile
        from pathlib import Path
        from rlmpipe.ingest import open_document, DocumentError
        folder = Path(sys.argv[1])
        W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
        rnd = random.Random(0)
        children = ''.join(f'<w:rFonts w:ascii="{rnd.getrandbits(32):08x}"/>' for _ in range(1_000_000))
        styles = f'<w:styles xmlns:w="{W}"><w:style w:styleId="s"><w:name w:val="heading 1"/>{children}</w:style></w:styles>'
        body = f'<w:document xmlns:w="{W}"><w:body><w:p><w:r><w:t>Hi.</w:t></w:r></w:p></w:body></w:document>'
        path = folder / "one-style.docx"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("word/document.xml", body); archive.writestr("word/styles.xml", styles)
        info = zipfile.ZipFile(path).getinfo("word/styles.xml")
        ratio = info.file_size / info.compress_size
        del styles, children
        import gc; gc.collect()
        before = peak_mb()
        try:
            text, error = open_document(path).text(), None
        except DocumentError as e:
            text, error = None, str(e)
        print(json.dumps({"ratio": ratio, "text": text, "error": error, "peak": peak_mb(), "before": before}))
    """
    result = child(code, str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout)
    assert outcome["ratio"] < 100, "under the zip-bomb ratio: only the element bound can catch it"
    assert outcome["error"] is not None and "word/styles.xml" in outcome["error"], outcome
    assert "<w:style> holding more than 10,000 elements" in outcome["error"] and "refused" in outcome["error"]
    assert outcome["peak"] - outcome["before"] < 100, outcome


def _docx_text(path: Path, **limits) -> str:
    from rlmpipe.ingest import ReadLimits

    return open_document(path, ReadLimits(**limits)).text()


def test_a_part_nested_too_deep_or_with_too_many_elements_is_refused(tmp_path):
    deep = (f'<w:document xmlns:w="{W}"><w:body>' + "<w:sdt><w:sdtContent>" * 5_000
            + "<w:p><w:r><w:t>Deep.</w:t></w:r></w:p>" + "</w:sdtContent></w:sdt>" * 5_000
            + "</w:body></w:document>").encode()
    path = write_raw_docx(tmp_path / "deep.docx", deep)
    with pytest.raises(CorruptDocument, match=r"word/document.xml has XML nested more than 256 levels deep"):
        open_document(path).text()
    many = write_raw_docx(tmp_path / "many.docx", paragraphs=[f"Paragraph {i}." for i in range(500)])
    assert _docx_text(many, max_xml_elements=2_100).count("Paragraph") == 500  # 4 elements a paragraph, +3
    with pytest.raises(CorruptDocument, match=r"word/document.xml has more than 1,000 XML elements"):
        _docx_text(many, max_xml_elements=1_000)
    properties = (f'<w:document xmlns:w="{W}"><w:body><w:p><w:pPr>' + "<w:tab/>" * 20_000
                  + "</w:pPr><w:r><w:t>Tabs.</w:t></w:r></w:p></w:body></w:document>").encode()
    with pytest.raises(CorruptDocument, match=r"a <w:pPr> holding more than 10,000 elements"):
        open_document(write_raw_docx(tmp_path / "tabs.docx", properties)).text()
    headings = (f'<w:styles xmlns:w="{W}">' + "".join(
        f'<w:style w:styleId="h{i}"><w:name w:val="heading 1"/></w:style>' for i in range(200)) + "</w:styles>")
    styled = write_raw_docx(tmp_path / "headings.docx", styles=headings.encode())
    assert _docx_text(styled, max_xml_kept=300) == "Hello.\n\n"
    with pytest.raises(CorruptDocument, match=r"word/styles.xml has more than 100 heading styles"):
        _docx_text(styled, max_xml_kept=100)


# --- files that are not files ------------------------------------------------------------------------
def test_a_fifo_in_a_folder_gets_one_line_and_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe.txt")
    (tmp_path / "good.txt").write_text("Section 1. Payment is due in 30 days.\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "rlmpipe.cli", "chunk", str(tmp_path)], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {tmp_path / 'pipe.txt'}: not a regular file (a named pipe): not read"], result.stderr
    assert "Payment is due" in result.stdout


def test_open_document_refuses_a_device():
    with pytest.raises(UnreadablePath, match="not a regular file \\(a character device\\)"):
        open_document("/dev/zero.txt" if Path("/dev/zero.txt").exists() else _device_alias())


def _device_alias() -> Path:
    folder = Path(tempfile.mkdtemp())
    alias = folder / "zero.txt"
    alias.symlink_to("/dev/zero")
    return alias


def test_an_unreadable_folder_is_reported_not_skipped_silently(tmp_path, monkeypatch):
    """The tests run as root, whom no permission stops: the listing of one folder is made to fail as
    it does for an ordinary user (os.walk lists folders with os.scandir)."""
    (tmp_path / "good.txt").write_text("Readable text.\n", encoding="utf-8")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "secret.txt").write_text("Hidden.\n", encoding="utf-8")
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == tmp_path / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    items = list(expand_paths([tmp_path]))
    assert [str(i) for i in items if isinstance(i, DocumentError)] == [
        f"{tmp_path / 'locked'}: cannot read folder: Permission denied"]
    assert [p.name for p in items if isinstance(p, Path)] == ["good.txt"]


# --- the same input twice ----------------------------------------------------------------------------
def test_a_file_reached_twice_is_read_once(tmp_path):
    (tmp_path / "a.txt").write_text("One.\n", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("Two.\n", encoding="utf-8")
    (tmp_path / "link.txt").symlink_to(tmp_path / "a.txt")
    items = list(expand_paths([tmp_path, tmp_path, tmp_path / "a.txt", tmp_path / "sub"]))
    assert sorted(p.name for p in items) == ["a.txt", "b.txt"]


# --- what a file is, and how its name is shown ---------------------------------------------------------
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
def test_utf16_and_utf32_with_a_byte_order_mark_are_text(tmp_path, encoding):
    text = "1. Term.\r\nThis Agreement — «un an» — lasts one year.\n\n2. Fees. 𝔉ees are due.\n"
    mark = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff", "utf-32-le": b"\xff\xfe\x00\x00",
            "utf-32-be": b"\x00\x00\xfe\xff"}.get(encoding, b"")
    path = tmp_path / "wide.txt"
    path.write_bytes(mark + text.encode(encoding))
    document = open_document(path)
    assert document.format == "txt"
    assert document.text() == text


def test_a_text_file_named_pdf_is_read_as_text_with_a_note(tmp_path):
    (tmp_path / "contract.pdf").write_text("This Agreement is governed by the laws of Texas.\n", encoding="utf-8")
    items = list(open_documents([tmp_path / "contract.pdf"]))
    notes = [str(i) for i in items if isinstance(i, Notice)]
    documents = [i for i in items if isinstance(i, Document)]
    assert notes == [f"{tmp_path / 'contract.pdf'}: the file is plain text, not a PDF as its name says: "
                     "read as plain text"]
    assert documents[0].format == "txt" and "laws of Texas" in documents[0].text()


def test_a_pdf_named_txt_is_read_as_a_pdf(tmp_path):
    path = write_pdf(tmp_path / "real.pdf", ["Hello from a PDF"])
    misnamed = tmp_path / "misnamed.txt"
    path.rename(misnamed)
    document = open_document(misnamed)
    assert document.format == "pdf" and "Hello from a PDF" in document.text()


def test_a_file_name_with_control_characters_cannot_split_or_forge_an_error_line(tmp_path):
    name = "evil\nerror: forged.txt\x1b[2J.txt"
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(DocumentError) as caught:
        open_document(tmp_path / name)
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message
    assert "evil\\nerror: forged.txt\\x1b[2J.txt: file is empty" in message
    result = subprocess.run([sys.executable, "-m", "rlmpipe.cli", "chunk", str(tmp_path)], capture_output=True,
                            text=True, timeout=60, cwd=ROOT)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and "\\n" in result.stderr
