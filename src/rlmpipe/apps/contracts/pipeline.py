"""The contract analyzer as a pipeline of the run engine.

Per contract: structure-aware chunks -> one extraction step per chunk (in parallel) -> every quote
verified against the chunk it came from -> findings merged across chunks -> risk score (rubric,
no model) -> one summary step over the verified findings (none when nothing was verified). Each step is checkpointed, so a corpus
run resumes where it stopped; a chunk whose extraction fails is skipped and listed in the record
rather than failing the whole contract.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

from rlmpipe.apps.contracts.categories import NAMES
from rlmpipe.apps.contracts.extract import Extractor
from rlmpipe.apps.contracts.merge import Verified, merge_findings, verify_chunk
from rlmpipe.apps.contracts.risk import risk_score
from rlmpipe.apps.contracts.schema import CategoryResult, ContractRecord
from rlmpipe.chunking import ChunkingConfig, chunk_document
from rlmpipe.ingest import Document
from rlmpipe.patterns import map_chunks
from rlmpipe.runtime.fingerprint import digest
from rlmpipe.runtime.runner import Partial, StepFailed

DEFAULT_CHUNKING = ChunkingConfig(strategy="structure", chunk_tokens=1024, overlap=128)
MAX_FINDING_LINES = 60
NOTHING_TO_SUMMARIZE = "(no summary: no finding could be verified in this contract)"


class ContractsPipeline:
    name = "contracts"

    def __init__(self, chunking: ChunkingConfig | None = None, extractor: Extractor | None = None):
        self.chunking = chunking or DEFAULT_CHUNKING
        self.extractor = extractor or Extractor()

    def config(self) -> dict:
        return {"chunking": self.chunking.key()}

    def settings(self) -> dict:
        """What rebuilds this pipeline (``rlmpipe resume``)."""
        return {"chunking": asdict(self.chunking)}

    @classmethod
    def from_settings(cls, settings: dict) -> "ContractsPipeline":
        return cls(ChunkingConfig(**settings["chunking"]))

    def programs(self) -> dict:
        return {"extract": self.extractor.extract, "summarize": self.extractor.summarize}

    def process(self, run, document: Document) -> dict:
        verified = Verified()
        chunks, failed, last_error = 0, [], ""
        for chunk, _key, result in map_chunks(
            run, document.doc_id, chunk_document(document, self.chunking), "extract",
            lambda chunk: self.extractor.findings(chunk.text), failures="yield",
        ):
            chunks += 1
            if isinstance(result, StepFailed):
                failed.append(chunk.chunk_id)
                last_error = _clip(str(result.cause), 160)
                continue
            verify_chunk(result, chunk.text, chunk.char_start, verified)
        if chunks and len(failed) == chunks:
            raise RuntimeError(f"extraction failed on all {chunks} chunks (last: {last_error})")
        text = document.text()
        clauses, risks, obligations = merge_findings(verified, lambda start, end: text[start:end])
        score, breakdown = risk_score(clauses, risks)
        title = next((c.evidence.quote for c in clauses if c.category == "Document Name"), "") or _title_line(text)
        title = " ".join(title.split())[:200] or Path(document.path).stem.replace("_", " ")
        findings = _findings_text(clauses, risks, obligations)
        if not (clauses or risks or obligations):  # a summary of nothing could only be invented
            summary = NOTHING_TO_SUMMARIZE
        else:
            try:
                summary = run.step("summary", lambda: self.extractor.summary(title, findings),
                                   doc_id=document.doc_id, inputs=[digest(findings)])["summary"]
            except StepFailed as failure:
                summary = f"(no summary: {failure.cause})"
        present = {clause.category for clause in clauses}
        record = ContractRecord(
            doc_id=document.doc_id,
            path=str(document.path),
            title=title,
            chunks=chunks,
            clauses=clauses,
            categories=[CategoryResult(category=name, present=name in present,
                                       clauses=sum(1 for c in clauses if c.category == name)) for name in NAMES],
            risks=risks,
            obligations=obligations,
            summary=" ".join(str(summary).split()),
            risk_score=score,
            risk_breakdown=breakdown,
            evidence=verified.stats,
            failed_chunks=failed,
            status="partial" if failed else "complete",
        )
        if failed:
            return Partial(record.model_dump(), f"extraction failed on {len(failed)} of {chunks} chunks "
                                                f"(last: {last_error}): findings there are missing")
        return record.model_dump()


TITLE_WORDS = re.compile(r"\b(agreement|contract|amendment|license|licence|lease|addendum|terms|deed)\b", re.I)


def _title_line(text: str) -> str:
    """A line near the top that names the document ('... AGREEMENT'), if there is one."""
    for line in text[:3000].splitlines():
        line = line.strip()
        if 3 < len(line) <= 120 and TITLE_WORDS.search(line) and not line.lower().startswith(("by ", "source:")):
            return line
    return ""


def _findings_text(clauses, risks, obligations) -> str:
    """The verified findings, one per line and bounded in number, as the summary step's input."""
    lines = [f"clause {c.category}: {_clip(c.evidence.quote)}" for c in clauses]
    lines += [f"risk ({r.severity}) {r.what}: {_clip(r.why)}" for r in risks]
    lines += [f"obligation of {o.party}: {_clip(o.action)}" + (f" ({o.due})" if o.due else "") for o in obligations]
    if len(lines) > MAX_FINDING_LINES:
        lines = lines[:MAX_FINDING_LINES] + [f"... and {len(lines) - MAX_FINDING_LINES} more findings"]
    return "\n".join(lines) or "(no verified findings)"


def _clip(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
