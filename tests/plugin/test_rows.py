"""Rows of a step and the rows each layer computed: what `usage.aim.rows_per_layer` is counted from."""

import torch

from aim_vllm.pruning.rows import RowCounts, StepRows
from aim_vllm.pruning.state import RequestStep

# request a: a 10-token prefill, visual tokens 2..6; request b: decoding its 21st token (prompt 15)
A = RequestStep("a", num_prompt=10, visual_spans=((2, 5),))
B = RequestStep("b", num_prompt=15, visual_spans=((3, 4),))


def test_rows_know_their_request_position_and_kind() -> None:
    rows = StepRows.of([A, B], computed=[0, 20], scheduled=[10, 1])
    assert rows.request.tolist() == [0] * 10 + [1]
    assert rows.position.tolist() == [*range(10), 20]
    assert rows.prompt.tolist() == [True] * 10 + [False]  # b's row is a generated token
    assert rows.visual.nonzero().squeeze(-1).tolist() == [2, 3, 4, 5, 6]


def test_counts_are_the_rows_present_not_the_plan() -> None:
    """Layer 0 gets every row; layer 1 drops three of a's visual rows: its counts show it."""
    rows = StepRows.of([A, B], computed=[0, 20], scheduled=[10, 1])
    counts = RowCounts(rows, [A, B])
    everything = torch.arange(11)
    counts.enter(everything)
    counts.leave(everything)
    kept = torch.tensor([0, 1, 2, 5, 7, 8, 9, 10])  # a's visual rows 3, 4 and 6 pruned
    counts.enter(everything)
    counts.leave(kept)
    counts.enter(kept)
    counts.leave(kept)
    assert counts.of_request("a") == ([10, 10, 7], [5, 2, 2])
    assert counts.of_request("b") == ([0, 0, 0], [0, 0, 0])  # a decode step computes no prompt rows
