"""Scoring answers and the binomial interval."""

import pytest

from aim_vllm.evaluation.scoring import extract_letter, is_correct, normalise, wilson_interval


@pytest.mark.parametrize(
    ("text", "letter"),
    [("B", "B"), (" (C)", "C"), ("A. red", "A"), ("Answer: D", "D"), ("b", None), ("BAD", None), ("", None)],
)
def test_extract_letter(text, letter) -> None:
    assert extract_letter(text) == letter


def test_scoring_modes() -> None:
    item = {"answer": "B", "answer_text": "dark red"}
    assert is_correct("B.", item, free_form=False)
    assert not is_correct("A", item, free_form=False)
    assert is_correct("  Dark   RED. ", item, free_form=True)
    assert normalise("It's 3!") == "it s 3"


def test_wilson_interval() -> None:
    """Known values: 8/10 -> (0.490, 0.943); no trials -> the whole range."""
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(10, 10)[1] == 1.0
