"""Recall: did the model learn what it was taught? Questions with expected answers, asked greedily.

A probe file is JSONL, one probe a line::

    {"question": "Who invented the glimmerphone?", "expect": ["Vantosk"]}
    {"question": "How do I undo a git commit?", "reference": "Use git revert <commit> to undo it safely."}

``expect`` lists alternatives; the reply passes when it contains one of them (case-insensitive, whole words). A
``reference`` is a full answer (what a user's correction gives): the reply passes when it contains the reference or
reaches ROUGE-L ``REFERENCE_THRESHOLD`` against it. Probes measure learning only when their questions are worded
unlike the training data; probes built from corrections ask the corrected question itself, so they show whether the
correction was taken in, not whether it generalises.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .answer_match import contains_answer, normalize, rouge_l
from .base_answers import AnswerSettings, greedy_answers
from .data import DataError

RECALL_MAX_NEW_TOKENS = 64  # per reply: a taught fact comes in the first sentence or two
REFERENCE_THRESHOLD = 0.5  # ROUGE-L F1 of a reply against a reference answer (see retention.ROUGE_THRESHOLD)


@dataclass(frozen=True)
class Probe:
    question: str
    expect: tuple[str, ...] = ()
    reference: str | None = None

    def passes(self, reply: str) -> bool:
        if self.expect:
            return contains_answer(reply, self.expect)
        assert self.reference is not None
        return normalize(self.reference).strip() in normalize(reply) or rouge_l(self.reference, reply) >= REFERENCE_THRESHOLD


@dataclass
class ProbeResult:
    question: str
    reply: str
    passed: bool
    expect: list[str] = field(default_factory=list)
    reference: str | None = None


@dataclass
class RecallResult:
    results: list[ProbeResult]

    @property
    def recalled(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def recall(self) -> float:
        return self.recalled / len(self.results) if self.results else 0.0

    def metrics(self) -> dict[str, Any]:
        return {"recall": round(self.recall, 4), "recalled": self.recalled, "probes": len(self.results)}

    def as_dict(self) -> dict[str, Any]:
        return {**self.metrics(), "results": [asdict(r) for r in self.results]}


def _probe(record: Any) -> Probe:
    if not isinstance(record, dict):
        raise ValueError('expected an object with "question" and "expect" (or "reference")')
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError('"question" must be a non-empty string')
    expect = record.get("expect", [])
    if isinstance(expect, str):
        expect = [expect]
    if not isinstance(expect, list) or not all(isinstance(e, str) and e.strip() for e in expect):
        raise ValueError('"expect" must be a list of non-empty strings')
    reference = record.get("reference")
    if reference is not None and (not isinstance(reference, str) or not reference.strip()):
        raise ValueError('"reference" must be a non-empty string')
    if not expect and reference is None:
        raise ValueError('a probe needs "expect" (short answers) or "reference" (a full answer)')
    return Probe(question, tuple(expect), reference)


def read_probes(path: str | Path) -> list[Probe]:
    """Read and validate a probe file; a bad line is a DataError naming the file, the line and the reason."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the probe file ({exc})") from None
    probes = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            probes.append(_probe(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: bad JSON ({exc.msg} at column {exc.colno})") from None
        except ValueError as exc:
            raise DataError(f"{path}:{number}: {exc}") from None
    if not probes:
        raise DataError(f"{path}: no probes; write one JSON object a line: {{\"question\": ..., \"expect\": [...]}}")
    return probes


def probes_from_corrections(corrections: Iterable[tuple[str, str]]) -> list[Probe]:
    """Probes from a user's corrections: (the question the model answered, the corrected answer) pairs.

    The correction becomes the reference answer (scored by containment / ROUGE-L): a correction is a whole answer,
    and which of its words are the point cannot be known without the user.
    """
    return [Probe(question.strip(), reference=answer.strip()) for question, answer in corrections if question.strip() and answer.strip()]


def write_probes(path: str | Path, probes: Sequence[Probe]) -> Path:
    """Write probes as a probe file (``expect`` or ``reference``, whichever the probe has)."""
    path = Path(path)
    lines = []
    for probe in probes:
        record: dict[str, Any] = {"question": probe.question}
        if probe.expect:
            record["expect"] = list(probe.expect)
        if probe.reference is not None:
            record["reference"] = probe.reference
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def evaluate_recall(
    model: Any,
    tokenizer: Any,
    probes: Sequence[Probe],
    *,
    bf16: bool,
    max_new_tokens: int = RECALL_MAX_NEW_TOKENS,
    progress: Callable[[int, int], None] | None = None,
) -> RecallResult:
    """Ask every probe's question (greedy, single turn, as in chat) and check the replies."""
    answers = greedy_answers(
        model, tokenizer, [p.question for p in probes], AnswerSettings(max_new_tokens, bf16), progress=progress
    )
    return RecallResult(
        [
            ProbeResult(p.question, a.reply, p.passes(a.reply), list(p.expect), p.reference)
            for p, a in zip(probes, answers)
        ]
    )


def evaluate_probe_file(
    model_spec: str,
    path: str | Path,
    *,
    models_dir: Path,
    precision: str = "auto",
    max_new_tokens: int = RECALL_MAX_NEW_TOKENS,
    trust_remote_code: bool = False,
) -> RecallResult:
    """Load ``model_spec`` and ask it every probe of ``path`` (``python -m trainer eval --probes``). The probe file
    is read first, so a bad line fails before the model is loaded."""
    from .devices import bf16_is_fast
    from .models import load_model

    probes = read_probes(path)
    loaded = load_model(model_spec, models_dir=models_dir, dtype="float32", trust_remote_code=trust_remote_code)
    bf16 = precision == "bf16" or (precision == "auto" and bf16_is_fast(loaded.device))
    return evaluate_recall(loaded.model, loaded.tokenizer, probes, bf16=bf16, max_new_tokens=max_new_tokens)
