"""Scoring answers: multiple-choice letters and normalised short answers; binomial intervals."""

from __future__ import annotations

import math
import re

_LETTER = re.compile(r"\b([A-D])\b")
_WORD = re.compile(r"[a-z0-9]+")


def extract_letter(text: str) -> str | None:
    """The first standalone option letter A-D ("B", "(B)", "B. red", "Answer: B"), else None."""
    match = _LETTER.search(text.strip())
    return match.group(1) if match else None


def normalise(text: str) -> str:
    """Lower-case words joined by single spaces ("  Red." -> "red")."""
    return " ".join(_WORD.findall(text.lower()))


def is_correct(answer: str, item: dict, free_form: bool) -> bool:
    """Multiple choice: the extracted letter equals `item["answer"]`; free form: normalised match."""
    if free_form:
        return normalise(answer) == normalise(item["answer_text"])
    return extract_letter(answer) == item["answer"]


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion ((0, 1) for no trials)."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
