"""Model Runner V2 glue: the step context through vLLM's `ModelState` (vllm==0.32.0 `v1/worker/gpu`).

Under Model Runner V2 the V1 `_model_forward` patch never runs. V2 asks the model for its state
class (`get_model_state_cls`, `model_states.resolve_model_state_cls`); this subclass of
`DefaultModelState`:
1. keeps each request's `RequestStep` from `add_request` (V2 re-adds a resumed request as new,
   so a recompute starts from fresh data) and forgets it in `remove_request`;
2. returns `aim_step` from `prepare_inputs`, which V2 passes to `model.forward` with its own
   inputs. Dummy and capture batches carry random request ids: unknown ids get no schedule and
   run unpruned.
Pruning itself stays off under V2 (`pruning.support`) until it has run on a GPU; with the step
context every request still reports it (`usage.aim.pruning = "skipped: Model Runner V2 ..."`),
and merging works as on V1.
"""

from __future__ import annotations

from typing import Any

from aim_vllm.compat import DefaultModelState
from aim_vllm.pruning.runner_context import request_step
from aim_vllm.pruning.state import RequestStep, StepContext


class AimModelState(DefaultModelState):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aim_requests: dict[str, RequestStep] = {}

    def add_request(self, req_index: int, new_req_data: Any) -> None:
        super().add_request(req_index, new_req_data)
        prompt = new_req_data.prompt_token_ids
        self.aim_requests[new_req_data.req_id] = request_step(
            new_req_data.req_id,
            len(prompt) if prompt is not None else 0,
            new_req_data.mm_features,
            new_req_data.sampling_params,
        )

    def remove_request(self, req_id: str) -> None:
        super().remove_request(req_id)
        self.aim_requests.pop(req_id, None)

    def prepare_inputs(self, input_batch: Any, req_states: Any) -> dict[str, Any]:
        steps = tuple(
            self.aim_requests.get(req_id) or RequestStep(req_id, 0) for req_id in input_batch.req_ids
        )
        return {
            **super().prepare_inputs(input_batch, req_states),
            "aim_step": StepContext(steps, frozenset(self.aim_requests)),
        }
