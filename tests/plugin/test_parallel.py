"""Tensor parallelism: every rank keeps rank 0's rows, whatever scores it computed itself.

Two processes over gloo with vLLM's own `GroupCoordinator` (the group `TensorParallel.current`
returns in a worker): rank 1 gets scores that rank differently, so its own choice differs, and
`agree` must replace it with rank 0's.
"""

from __future__ import annotations

import multiprocessing

import pytest
import torch

from aim_vllm.core.importance import select_kept_tokens

IS_VISUAL = torch.tensor([False, True, True, True, True, True, True, False])
KEEP = 3


def _scores(rank: int) -> torch.Tensor:
    base = torch.tensor([0.0, 0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.0])
    return base if rank == 0 else base.flip(0)  # rank 1 prefers the other visual tokens


def _rank(rank: int, init_file: str, results) -> None:
    import torch.distributed as dist

    from aim_vllm.pruning.parallel import TensorParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        from vllm.distributed.parallel_state import GroupCoordinator

        group = GroupCoordinator([[0, 1]], rank, "gloo", use_device_communicator=False, group_name="tp")
        tp = TensorParallel(group.world_size, group.rank_in_group, group)
        own = select_kept_tokens(_scores(rank), IS_VISUAL, KEEP)
        results.put((rank, own.tolist(), tp.agree(own.clone()).tolist(), tp.is_reporter))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(300)
def test_every_rank_keeps_rank_zeros_rows(tmp_path) -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=_rank, args=(r, str(tmp_path / "init"), results)) for r in (0, 1)]
    for process in ranks:
        process.start()
    got = {}
    for _ in ranks:
        rank, own, agreed, reporter = results.get(timeout=240)
        got[rank] = (own, agreed, reporter)
    for process in ranks:
        process.join(60)
        assert process.exitcode == 0
    assert got[0][0] != got[1][0], "the test needs ranks whose own choices differ"
    assert got[0][1] == got[1][1] == got[0][0] == [0, 1, 3, 5, 7]
    assert (got[0][2], got[1][2]) == (True, False)


def test_one_rank_keeps_its_own_rows() -> None:
    from aim_vllm.pruning.parallel import TensorParallel

    kept = select_kept_tokens(_scores(1), IS_VISUAL, KEEP)
    assert TensorParallel().agree(kept) is kept and TensorParallel().head_sum is None
