"""Does a reply give an expected answer? Exact short answers (word-bounded containment) and ROUGE-L for longer ones.

Shared by retention (is the base model's answer still given?) and recall (is the taught fact given?). ROUGE-L is
rouge-score's, with a tokenizer that keeps Chinese: each CJK character is a token (rouge-score's default tokenizer
drops every non-ASCII character, so a Chinese reply would score 0 against anything).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable

from rouge_score import rouge_scorer

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_]+")


class _WordsAndHanzi:
    """rouge-score tokenizer: lowercase words and numbers, one token per CJK character."""

    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(normalize(text))


_SCORER = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_WordsAndHanzi())


def normalize(text: str) -> str:
    """NFKC (full-width forms, subscript digits -> ASCII) and lowercase."""
    return unicodedata.normalize("NFKC", text).lower()


def contains_answer(reply: str, expected: Iterable[str]) -> bool:
    """Whether ``reply`` contains any of ``expected``: case-insensitive, and a Latin word or number must stand alone
    ("4" matches "is 4." but not "40"; "Paris" matches "Paris," but not "Parisian"). CJK answers match anywhere."""
    text = normalize(reply)
    for answer in expected:
        wanted = normalize(answer).strip()
        if not wanted:
            continue
        left = r"(?<![^\W_])" if re.match(r"[^\W_]", wanted[0]) and not re.match(f"[{_CJK}]", wanted[0]) else ""
        right = r"(?![^\W_])" if re.match(r"[^\W_]", wanted[-1]) and not re.match(f"[{_CJK}]", wanted[-1]) else ""
        if re.search(left + re.escape(wanted) + right, text):
            return True
    return False


def rouge_l(reference: str, reply: str) -> float:
    """ROUGE-L F1 (0-1) of ``reply`` against ``reference``; 1.0 for two texts without words that are the same."""
    if normalize(reference).strip() == normalize(reply).strip():
        return 1.0
    return _SCORER.score(reference, reply)["rougeL"].fmeasure
