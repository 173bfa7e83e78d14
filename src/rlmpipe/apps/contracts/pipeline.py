"""The contract analyzer as a pipeline of the run engine, in three modes.

- ``finder`` (no LM): the trained clause finder scores every passage; the passages that clear a
  category's F1 threshold hold its clauses, each narrowed to the sentences that make it (the
  contract's own words, verified by construction, with the passage kept as context); the
  rubric scores the risk; the summary is composed from found passages (:mod:`.digest`). Risks and
  obligations need an LM and are left empty, saying so.
- ``cascade`` (the default with an LM): the finder chooses what the LM reads (:mod:`.cascade`):
  windows around passages above a recall-oriented threshold, asked only about their suspected
  categories; then the LM's quotes are verified, merged, scored, and summarised in one more call.
- ``full``: structure-aware chunks of the whole contract, one extraction call per chunk.

Every LM call is a checkpointed step, so a corpus run resumes where it stopped; a call that fails
(a chunk's, a batch's or the summary's) is listed in the record (``failed_chunks``; ``"summary"``
for the summary's) and makes the contract *partial* rather than failing it whole.
"""

from __future__ import annotations

import functools
import hashlib
import re
import zipfile
from dataclasses import asdict
from pathlib import Path

from rlmpipe.apps.contracts.cascade import batches, candidate_windows, excerpts_text
from rlmpipe.apps.contracts.categories import NAMES, category_guide, normalize_category
from rlmpipe.apps.contracts.digest import compose_summary
from rlmpipe.apps.contracts.evidence import NormalizedText, clip, locate
from rlmpipe.apps.contracts.extract import Extractor
from rlmpipe.apps.contracts.merge import Verified, merge_findings, verify_chunk
from rlmpipe.apps.contracts.risk import risk_score
from rlmpipe.apps.contracts.schema import CategoryResult, Clause, ContractRecord, Evidence, EvidenceStats
from rlmpipe.chunking import Chunk, ChunkingConfig, chunk_document, get_tokenizer
from rlmpipe.ingest import Document
from rlmpipe.patterns import map_chunks
from rlmpipe.runtime.fingerprint import digest
from rlmpipe.runtime.runner import Partial, StepFailed

MODES = ("finder", "cascade", "full")
#: the full read's and the cascade's defaults, chosen by bench/contracts_cost.py on CUAD with an oracle
#: LM (bench/RESULTS.md, "contracts-cost"): the full read's 4,096-token chunks without overlap reach as
#: many annotated passages as 1,024/128 at half the prompt tokens (the category guide travels once per
#: call); the cascade's lowest level that keeps >= 95% of them, with 150 characters of context
#: (300 kept no more) and 8,000 tokens of excerpts a call (the instructions travel once per call).
DEFAULT_CHUNKING = ChunkingConfig(strategy="structure", chunk_tokens=4096, overlap=0)
DEFAULT_RECALL = "recall0.95"
DEFAULT_CONTEXT_CHARS = 150
DEFAULT_BATCH_TOKENS = 8000
#: the most context a flagged passage gets on each side: a candidate of the longest passage
#: (passages.MAX_CHARS) with this much on both sides still fits the cascade's window limit
#: (cascade.MAX_WINDOW_CHARS); 13x the default, whose double kept no more clauses. More only makes
#: the calls larger: 1,000,000 read a 25 MB contract in 654 calls and 7.1 M prompt tokens (24x).
MAX_CONTEXT_CHARS = 2000
#: the finder alone keeps each category's best passages only (Parties clears its threshold often)
FINDINGS_PER_CATEGORY = 3
MAX_FINDING_LINES = 60
HEAD_CHARS = 3000  # where a title is looked for
NOTHING_TO_SUMMARIZE = "(no summary: no finding could be verified in this contract)"
NEEDS_LM = ["risks", "obligations"]


class ContractsPipeline:
    name = "contracts"

    def __init__(self, chunking: ChunkingConfig | None = None, extractor: Extractor | None = None, *,
                 mode: str = "full", finder_model: str | Path | None = None,
                 recall: str = DEFAULT_RECALL, context_chars: int = DEFAULT_CONTEXT_CHARS,
                 batch_tokens: int = DEFAULT_BATCH_TOKENS):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r} (choose from: {', '.join(MODES)})")
        if not 0 <= context_chars <= MAX_CONTEXT_CHARS:
            raise ValueError(f"context_chars must be from 0 to {MAX_CONTEXT_CHARS} (got {context_chars})")
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be at least 1 (got {batch_tokens})")
        self.mode = mode
        self.chunking = chunking or DEFAULT_CHUNKING
        self.extractor = extractor or Extractor()
        self.finder_model = str(Path(finder_model).resolve()) if finder_model else None
        self.recall = recall_level(recall)
        self.context_chars = context_chars
        self.batch_tokens = batch_tokens
        self._finder = None
        if mode != "full":
            self.finder()  # a missing or bad model file is an error before the run, not per document
        else:  # the full read uses no finder, but a level it would refuse is refused in every mode
            from rlmpipe.apps.contracts.finder import RECALL_LEVELS

            _check_recall(self.recall, [f"recall{level:.2f}" for level in RECALL_LEVELS])

    @property
    def works_without_lm(self) -> bool:
        return self.mode == "finder"

    def finder(self):
        """The clause finder (loaded once; the shipped model unless ``finder_model``)."""
        if self._finder is None:
            from rlmpipe.apps.contracts.finder import ClauseFinder, ModelFileError

            try:
                finder = ClauseFinder.load(self.finder_model)
            except ModelFileError as exc:  # the file is checked as untrusted input; the message names it
                raise ValueError(f"clause finder model {exc}") from None
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                raise ValueError(f"clause finder model {self.finder_model or 'shipped with rlmpipe'}: cannot load it "
                                 f"({exc.strerror if isinstance(exc, OSError) and exc.strerror else exc})") from None
            _check_recall(self.recall, finder.recall_levels())
            self._finder = finder
        return self._finder

    def finder_for(self, document: Document):
        """The finder that scores ``document`` (one for every document; a benchmark that must
        score each contract with a model that never saw it overrides this)."""
        return self.finder()

    def __getstate__(self) -> dict:  # (Ray ships the pipeline to workers: not the loaded model)
        return {**self.__dict__, "_finder": None}

    def config(self) -> dict:
        """What the results depend on (the run's fingerprint)."""
        if self.mode == "full":
            return {"mode": "full", "chunking": self.chunking.key()}
        config = {"mode": self.mode, "finder": _file_digest(self.finder_model)}
        if self.mode == "finder":
            config["per_category"] = FINDINGS_PER_CATEGORY
        else:
            config.update(recall=self.recall, context_chars=self.context_chars, batch_tokens=self.batch_tokens,
                          tokenizer=self.chunking.tokenizer)
        return config

    def settings(self) -> dict:
        """What rebuilds this pipeline (``rlmpipe resume``)."""
        return {"mode": self.mode, "chunking": asdict(self.chunking), "finder_model": self.finder_model,
                "recall": self.recall, "context_chars": self.context_chars, "batch_tokens": self.batch_tokens}

    @classmethod
    def from_settings(cls, settings: dict) -> "ContractsPipeline":
        return cls(ChunkingConfig(**settings["chunking"]), mode=settings.get("mode", "full"),
                   finder_model=settings.get("finder_model"),
                   recall=settings.get("recall", DEFAULT_RECALL),
                   context_chars=settings.get("context_chars", DEFAULT_CONTEXT_CHARS),
                   batch_tokens=settings.get("batch_tokens", DEFAULT_BATCH_TOKENS))

    def programs(self) -> dict:
        """The DSPy programs each mode calls (their instructions are part of the fingerprint)."""
        return {"finder": {}, "cascade": {"review": self.extractor.review, "summarize": self.extractor.summarize},
                "full": {"extract": self.extractor.extract, "summarize": self.extractor.summarize}}[self.mode]

    def process(self, run, document: Document) -> dict:
        return {"finder": self._finder_only, "cascade": self._cascade, "full": self._full_read}[self.mode](
            run, document)

    # -- finder: no LM ----------------------------------------------------------------------------
    def _finder_only(self, run, document: Document) -> dict:
        head = _Head()
        findings = self.finder_for(document).find(head.tee(document.blocks()), per_category=FINDINGS_PER_CATEGORY)
        clauses = [Clause(category=f.category, score=round(f.score, 4), confirmed=None,
                          evidence=Evidence(quote=f.text, char_start=f.char_start, char_end=f.char_end),
                          passage=Evidence(quote=f.passage.text, char_start=f.passage.char_start,
                                           char_end=f.passage.char_end))
                   for f in findings]
        clauses.sort(key=lambda c: (c.evidence.char_start, NAMES.index(c.category)))
        title = _title(clauses, head.text, document)
        stats = EvidenceStats(proposed=len(clauses), verified=len(clauses), rejected=0)
        record = _record(document, title, 0, clauses, [], [], compose_summary(title, clauses), stats, [],
                         mode="finder", needs_lm=NEEDS_LM)
        return record.model_dump()

    # -- cascade: the finder chooses what the LM reads --------------------------------------------
    def _cascade(self, run, document: Document) -> dict:
        finder = self.finder_for(document)
        head = _Head()
        tokenizer = get_tokenizer(self.chunking.tokenizer)
        select, ask = finder.cascade_thresholds(self.recall)
        windows = candidate_windows(head.tee(document.blocks()), finder.score, finder.categories, select,
                                    ask=ask, context_chars=self.context_chars)
        groups: dict[str, list] = {}

        def calls():
            for index, group in enumerate(batches(windows, tokenizer.count, self.batch_tokens)):
                keys = digest([window.key() for window in group])[:12]
                chunk_id = f"excerpts-{group[0].char_start}-{group[-1].char_end}-{keys}"
                groups[chunk_id] = group
                text = excerpts_text(group)
                yield Chunk(chunk_id, document.doc_id, index, text, group[0].char_start, group[-1].char_end,
                            tokenizer.count(text))

        def ask(chunk: Chunk) -> dict:
            group = groups[chunk.chunk_id]
            names = sorted({name for window in group for name in window.categories})
            return self.extractor.reviewed(category_guide(names, codes=True), chunk.text)

        verified = Verified()
        texts = _Pieces()
        calls_made, failed, last_error = 0, [], ""
        for chunk, _key, result in map_chunks(run, document.doc_id, calls(), "review", ask, failures="yield"):
            calls_made += 1
            group = groups.pop(chunk.chunk_id)
            for window in group:
                texts.add(window.char_start, window.text)
            if isinstance(result, StepFailed):
                failed.append(chunk.chunk_id)
                last_error = clip(str(result.cause), 160)
                continue
            verify_reviewed(result, group, verified)
        if calls_made and len(failed) == calls_made:
            raise RuntimeError(f"the LM's review failed on all {calls_made} batches of excerpts (last: {last_error})")
        clauses, risks, obligations = merge_findings(verified, texts.text)
        title = _title(clauses, head.text, document)
        summary, summary_failed = self._summary(run, document, title, clauses, risks, obligations)
        record = _record(document, title, calls_made, clauses, risks, obligations, summary, verified.stats,
                         failed + ["summary"] * bool(summary_failed), mode="cascade")
        return _partial_if_failed(record, failed, calls_made, last_error, "batches of excerpts", summary_failed)

    # -- full: the LM reads every chunk --------------------------------------------------------
    def _full_read(self, run, document: Document) -> dict:
        verified = Verified()
        chunks, failed, last_error = 0, [], ""
        for chunk, _key, result in map_chunks(
            run, document.doc_id, chunk_document(document, self.chunking), "extract",
            lambda chunk: self.extractor.findings(chunk.text), failures="yield",
        ):
            chunks += 1
            if isinstance(result, StepFailed):
                failed.append(chunk.chunk_id)
                last_error = clip(str(result.cause), 160)
                continue
            verify_chunk(result, chunk.text, chunk.char_start, verified)
        if chunks and len(failed) == chunks:
            raise RuntimeError(f"extraction failed on all {chunks} chunks (last: {last_error})")
        text = document.text()
        clauses, risks, obligations = merge_findings(verified, lambda start, end: text[start:end])
        title = _title(clauses, text[:HEAD_CHARS], document)
        summary, summary_failed = self._summary(run, document, title, clauses, risks, obligations)
        record = _record(document, title, chunks, clauses, risks, obligations, summary, verified.stats,
                         failed + ["summary"] * bool(summary_failed), mode="full")
        return _partial_if_failed(record, failed, chunks, last_error, "chunks", summary_failed)

    def _summary(self, run, document, title, clauses, risks, obligations) -> tuple[str, str]:
        """The summary, and why its call failed ("" if it did not): a contract without its summary is
        partial, like one with a failed chunk (a resume makes the call again)."""
        if not (clauses or risks or obligations):  # a summary of nothing could only be invented
            return NOTHING_TO_SUMMARIZE, ""
        findings = _findings_text(clauses, risks, obligations)
        try:
            return run.step("summary", lambda: self.extractor.summary(title, findings),
                            doc_id=document.doc_id, inputs=[digest(findings)])["summary"], ""
        except StepFailed as failure:
            return f"(no summary: {failure.cause})", clip(str(failure.cause), 160)


def recall_level(value: str) -> str:
    """A recall level as the finder names it: "0.9", "recall0.9" and "recall0.90" are "recall0.90"
    (anything else is returned as it is, to be refused with the levels there are)."""
    text = str(value).strip()
    try:
        level = float(text.removeprefix("recall"))
    except ValueError:
        return text
    name = f"recall{level:.2f}"
    return name if float(name.removeprefix("recall")) == level else text


def _check_recall(level: str, levels: list[str]) -> None:
    if level not in levels:
        raise ValueError(f"unknown recall level {level!r} (--recall; choose from: {', '.join(levels)})")


def verify_reviewed(result: dict, group: list, verified: Verified) -> None:
    """Verify the LM's review of a batch of excerpts: each finding against the excerpt it names (or,
    when the number is wrong, the one it is found in); a clause only if its category was suspected
    in that excerpt."""
    stats = verified.stats
    per_window: list[dict] = [{"clauses": [], "risks": [], "obligations": []} for _ in group]
    for kind in ("clauses", "risks", "obligations"):
        for item in result.get(kind) or []:
            if kind == "clauses":
                category = normalize_category(item.get("category", ""))
                if category is None:
                    stats.proposed += 1
                    stats.unknown_category += 1
                    continue
                item = {**item, "category": category}
            index = _excerpt_of(item, group)
            if kind == "clauses" and category not in group[index].categories:
                stats.proposed += 1
                stats.not_asked += 1
                continue
            per_window[index][kind].append(item)
    for window, findings in zip(group, per_window):
        before = len(verified.clauses)
        verify_chunk(findings, window.text, window.char_start, verified)
        for item in verified.clauses[before:]:
            item["score"] = round(window.categories[item["category"]], 4)


def _excerpt_of(item: dict, group: list) -> int:
    """The index of the excerpt a finding is about: the one it names if its quote is there, else
    the first whose text holds the quote, else the one it names (its quote will be rejected)."""
    try:
        named = int(item.get("excerpt")) - 1
    except (TypeError, ValueError):
        named = -1
    named = named if 0 <= named < len(group) else 0
    quote = item.get("quote", "")
    if len(group) == 1 or locate(quote, NormalizedText(group[named].text)) is not None:
        return named
    for index, window in enumerate(group):
        if index != named and locate(quote, NormalizedText(window.text)) is not None:
            return index
    return named


def _record(document, title, calls, clauses, risks, obligations, summary, stats, failed, *, mode,
            needs_lm=()) -> ContractRecord:
    score, breakdown = risk_score(clauses, risks)
    present = {clause.category for clause in clauses}
    return ContractRecord(
        doc_id=document.doc_id, path=str(document.path), title=title, chunks=calls, clauses=clauses,
        categories=[CategoryResult(category=name, present=name in present,
                                   clauses=sum(1 for c in clauses if c.category == name)) for name in NAMES],
        risks=risks, obligations=obligations, summary=" ".join(str(summary).split()), risk_score=score,
        risk_breakdown=breakdown, evidence=stats, failed_chunks=failed,
        status="partial" if failed else "complete", mode=mode, needs_lm=list(needs_lm))


def _partial_if_failed(record: ContractRecord, failed: list, calls: int, last_error: str, what: str,
                       summary_failed: str = ""):
    problems = [f"the LM failed on {len(failed)} of {calls} {what} (last: {last_error}): findings there are "
                "missing"] if failed else []
    if summary_failed:
        problems.append(f"the summary call failed ({summary_failed}): the summary is missing")
    if problems:
        return Partial(record.model_dump(), "; ".join(problems))
    return record.model_dump()


class _Head:
    """The first ``HEAD_CHARS`` characters of a document, kept as its blocks stream past."""

    def __init__(self) -> None:
        self.text = ""

    def tee(self, blocks):
        for block in blocks:
            if len(self.text) < HEAD_CHARS:
                self.text += block.text[:HEAD_CHARS - len(self.text)]
            yield block


class _Pieces:
    """The contract's text where the LM was shown it (the windows), by absolute offsets: what a
    merged finding's evidence is cut from (it always lies in windows that touch)."""

    def __init__(self) -> None:
        self.pieces: list[tuple[int, str]] = []

    def add(self, start: int, text: str) -> None:
        self.pieces.append((start, text))

    def text(self, start: int, end: int) -> str:
        out, at = [], start
        for piece_start, piece in sorted(self.pieces):
            piece_end = piece_start + len(piece)
            if piece_start <= at < piece_end:
                stop = min(end, piece_end)
                out.append(piece[at - piece_start:stop - piece_start])
                at = stop
                if at >= end:
                    break
        if at < end:
            raise ValueError(f"no text for [{start}, {end}) in the windows shown")
        return "".join(out)


TITLE_WORDS = re.compile(r"\b(agreement|contract|amendment|license|licence|lease|addendum|terms|deed)\b", re.I)


def _title(clauses, head: str, document: Document) -> str:
    """The Document Name clause (the best-scoring, if several), else a title line near the top,
    else the file's name."""
    names = [c for c in clauses if c.category == "Document Name"]
    best = max(names, key=lambda c: c.score or 0.0).evidence.quote if names else ""
    title = _title_line(best) or _title_phrase(best) or _title_line(head) or _title_phrase(head[:HEAD_CHARS])
    return " ".join(title.split())[:200] or Path(document.path).stem.replace("_", " ")


TITLE_PHRASE = re.compile(
    r"((?:[A-Z][\w&'.-]*,?\s+){0,7}(?:AGREEMENT|Agreement|CONTRACT|Contract|LICENSE|License|LEASE|Lease"
    r"|AMENDMENT|Amendment|ADDENDUM|Addendum)\b)")


def _title_phrase(text: str) -> str:
    """The capitalised name of the document in a sentence ('This Intellectual Property Agreement
    (the "Agreement") is entered into ...' -> 'Intellectual Property Agreement')."""
    match = TITLE_PHRASE.search(text)
    if not match:
        return ""
    words = match.group(1).split()
    while words and words[0].lower().strip(",") in ("this", "the", "exhibit", "an", "a"):
        words = words[1:]
    while words and re.fullmatch(r"[\d.]+,?", words[0]):
        words = words[1:]
    half = len(words) // 2
    if len(words) % 2 == 0 and words[:half] == words[half:]:  # a heading printed twice
        words = words[:half]
    return " ".join(words) if len(words) > 1 else ""


def _title_line(text: str) -> str:
    """A line near the top that names the document ('... AGREEMENT'), if there is one."""
    for line in text[:HEAD_CHARS].splitlines():
        line = line.strip()
        if 3 < len(line) <= 120 and TITLE_WORDS.search(line) and not line.lower().startswith(("by ", "source:")):
            return line
    return ""


def _findings_text(clauses, risks, obligations) -> str:
    """The verified findings, one per line and bounded in number, as the summary step's input."""
    lines = [f"clause {c.category}: {clip(c.evidence.quote, 240)}" for c in clauses]
    lines += [f"risk ({r.severity}) {r.what}: {clip(r.why, 240)}" for r in risks]
    lines += [f"obligation of {o.party}: {clip(o.action, 240)}" + (f" ({o.due})" if o.due else "")
              for o in obligations]
    if len(lines) > MAX_FINDING_LINES:
        lines = lines[:MAX_FINDING_LINES] + [f"... and {len(lines) - MAX_FINDING_LINES} more findings"]
    return "\n".join(lines) or "(no verified findings)"


@functools.cache
def _file_digest(path: str | None) -> str:
    """sha256 of a model file (the shipped one when None), once per process."""
    from rlmpipe.apps.contracts.finder import MODEL_PATH

    with open(path or MODEL_PATH, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
