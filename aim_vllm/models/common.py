"""Glue shared by the AIM model files: resolving a request's level in the multimodal processor.

Flow (vllm==0.32.0, `BaseMultiModalProcessor.apply`):
1. `AimProcessorMixin.apply` reads the AIM keys of the request's `mm_processor_kwargs` (or the
   server default), resolves them against the model and this prompt into an `AimSchedule`, and
   replaces them by the canonical explicit keys, so processor/encoder/prefix caches key on the
   schedule applied. AIM off leaves the kwargs exactly as stock vLLM sees them.
2. The model file's processor strips AIM keys before the HF processor runs, adds one per-item
   tensor field `aim_<modality>` (`core.item_params.ItemParams`), and sizes the placeholders
   with the merged count.
3. The model's `embed_multimodal` merges each item with its `ItemParams`; the runner reads the
   pruning layers from the same field.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from functools import cached_property

from aim_vllm.compat import MultiModalFieldConfig
from aim_vllm.config import default_level
from aim_vllm.core.budget import EncoderCost, VisualLayout, solve_budget, solve_prefill_budget
from aim_vllm.core.encoder_flops import VisionShape
from aim_vllm.core.flops import LLMShape
from aim_vllm.core.item_params import ItemParams, field_name
from aim_vllm.core.level import (
    BUDGET_OF,
    AimLevel,
    LevelError,
    budget_note,
    parse_engine_kwargs,
    schedule_kwargs,
    without_engine_keys,
)
from aim_vllm.core.schedule import OFF, VIDEO_ONLY_METHODS, AimSchedule
from aim_vllm.kv.spec import install_stage_specs
from aim_vllm.pruning.decoder import PruningDecoder
from aim_vllm.pruning.parallel import TensorParallel
from aim_vllm.pruning.support import prepare_engine
from aim_vllm.usage import StatsStore, UsageReporter

logger = logging.getLogger(__name__)


def schedule_from_kwargs(kwargs: dict) -> AimSchedule:
    """The schedule of canonical kwargs (as written by `AimProcessorMixin.apply`)."""
    level = parse_engine_kwargs(kwargs)
    return OFF if level is None or level.schedule is None else level.schedule


class AimProcessorMixin:
    """Resolves the AIM level once per request in `apply` (put before vLLM's processor class)."""

    aim_merge_methods: tuple[str, ...] = ("aim",)  # token reductions the model file implements
    aim_encoder_merging = False  # whether the model file merges inside its vision encoder

    def aim_layout(self, mm_items) -> VisualLayout:
        """The request's visual tokens as the merger sees them (model specific)."""
        raise NotImplementedError

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        """vLLM's fields, plus each modality's per-item `aim_<modality>` parameters (kept on the CPU)."""
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        for modality in ("image", "video"):
            if field_name(modality) in hf_inputs:
                fields[field_name(modality)] = MultiModalFieldConfig.batched(modality, keep_on_cpu=True)
        return fields

    def apply(self, inputs, timing_ctx):  # overrides BaseMultiModalProcessor.apply
        if BUDGET_OF in inputs.hf_processor_mm_kwargs:
            raise ValueError(f"{BUDGET_OF} is written by the engine; send aim_budget instead")
        level = parse_engine_kwargs(inputs.hf_processor_mm_kwargs) or default_level()
        kwargs = without_engine_keys(inputs.hf_processor_mm_kwargs)
        if level is not None:
            num_layers = self._aim_llm_shape().num_layers
            schedule = level.resolve(num_layers, lambda b, whole: self._solve(b, whole, inputs))
            schedule = fit_first_prune_layer(level, schedule, self.aim_first_prune_layer, num_layers)
            if schedule.merges and schedule.merge_method not in self.aim_merge_methods:
                raise ValueError(
                    f"merge_method {schedule.merge_method!r} is not available for this model "
                    f"(available: {', '.join(self.aim_merge_methods)})"
                )
            if schedule.merges and schedule.merge_method in VIDEO_ONLY_METHODS and _has_images(inputs):
                raise ValueError(
                    f"merge_method {schedule.merge_method!r} applies to videos only (it keeps the tokens "
                    "that change from one frame to the next); send images with another method"
                )
            if schedule.merges_in_encoder and not self.aim_encoder_merging:
                raise ValueError(
                    "encoder_keep (merging inside the vision encoder) is not available for this model "
                    "(available for LLaVA-OneVision, LLaVA-1.5, Qwen2.5-VL and Qwen3-VL)"
                )
            kwargs.update(schedule_kwargs(schedule))
            if not schedule.is_off:
                kwargs.update(budget_note(level))
        return super().apply(replace(inputs, hf_processor_mm_kwargs=kwargs), timing_ctx)

    def aim_text_in_items(self, mm_items) -> int:
        """Text tokens inside the items' placeholder ranges, never merged or pruned (model
        specific; a Qwen3-VL video's timestamps)."""
        return 0

    @property
    def aim_first_prune_layer(self) -> int:
        """The earliest layer whose output may lose rows (model specific; Qwen3-VL: DeepStack)."""
        return 0

    def _aim_llm_shape(self) -> LLMShape:
        return LLMShape.from_hf_config(self.info.get_hf_config().to_dict())

    @cached_property
    def _aim_tower(self) -> VisionShape | None:
        return VisionShape.from_hf_config(self.info.get_hf_config().to_dict())

    def aim_encoder_flops(self, schedule: AimSchedule, passes: int) -> dict[str, float]:
        """`ItemParams`' encoder FLOPs of an item that is `passes` frames / crops of a LLaVA-style
        tower (`core.encoder_flops`), stock and at the schedule's keep; {} for other towers."""
        return encoder_flops_fields(self._aim_tower_cost(passes), schedule.encoder_keep)

    def _solve(self, budget: float, whole_prefill: bool, inputs) -> AimSchedule:
        """The budget's schedule; with merging alone where the engine cannot prune (its reason,
        written by the model at start-up: `usage.StatsStore.engine_pruning_off`), so the request
        stays within the budget whenever merging alone can reach it, and where the solver's
        window starts before `aim_first_prune_layer` (its windows may start at any layer)."""
        num_items = sum(len(items) for items in inputs.mm_data_items.values())
        text_tokens = max(0, len(inputs.prompt) - num_items)  # one placeholder token per item
        text_tokens += self.aim_text_in_items(inputs.mm_data_items)
        shape, layout = self._aim_llm_shape(), self.aim_layout(inputs.mm_data_items)
        store = StatsStore.from_env()
        cost = self.aim_encoder_cost(inputs.mm_data_items) if whole_prefill else None

        def solve(prune: bool) -> AimSchedule:
            if cost is not None:
                return solve_prefill_budget(budget, shape, layout, text_tokens, cost, prune)
            return solve_budget(budget, shape, layout, text_tokens, prune)

        schedule = solve(not (store is not None and store.engine_pruning_off()))
        if schedule.prunes and schedule.prune_layers[0] < self.aim_first_prune_layer:
            return solve(False)
        return schedule

    def aim_encoder_cost(self, mm_items) -> EncoderCost:
        """The prompt's vision-encoder FLOPs at a keep: its frames / crops through a LLaVA-style
        tower (`aim_encoder_passes`); 0 where the tower has no FLOPs model."""
        return self._aim_tower_cost(self.aim_encoder_passes(mm_items))

    def _aim_tower_cost(self, passes: int) -> EncoderCost:
        tower = self._aim_tower
        return lambda keep: 0.0 if tower is None else passes * tower.pass_flops(keep)

    def aim_encoder_passes(self, mm_items) -> int:
        """Frames and crops the tower encodes for these items (model specific)."""
        raise NotImplementedError


def fit_first_prune_layer(level: AimLevel, schedule: AimSchedule, first: int, num_layers: int) -> AimSchedule:
    """`schedule` without pruning before layer `first` (0 for most models; Qwen3-VL: its DeepStack
    levels, `models/qwen3_vl.py`), where a layer that late exists (else the engine reports
    pruning skipped with its reason).

    - explicit pruning layers that start earlier: a LevelError (400) naming the earliest layer:
      the client chose those layers, and another schedule under its name would be a silent
      change (and the caches key on the schedule);
    - a preset: its window moved to start at `first`, width kept within the depth: a preset is
      the engine's choice of layers for this model, so it should fit the model;
    - a budget: solved that way already (`AimProcessorMixin._solve`).
    """
    if not schedule.prunes or schedule.prune_layers[0] >= first or first >= num_layers:
        return schedule
    l1, l2 = schedule.prune_layers
    if level.preset is not None:
        return replace(schedule, prune_layers=(first, min(num_layers, l2 + first - l1)))
    raise LevelError(
        f"prune_layers {schedule.prune_layers} start before layer {first}: this model adds DeepStack "
        f"features to the visual rows after layers 0..{first - 1}, so pruning starts at l1 >= {first}",
        "prune_layers",
    )


def encoder_flops_fields(cost: EncoderCost, keep: float) -> dict[str, float]:
    """`ItemParams`' `encoder_flops_off` / `encoder_flops` of an item whose encoder FLOPs at a keep
    are `cost(keep)`; {} (unknown) when it costs nothing, i.e. the tower has no FLOPs model."""
    stock = cost(1.0)
    return {"encoder_flops_off": stock, "encoder_flops": cost(keep)} if stock > 0 else {}


def decode_items(params) -> list[ItemParams] | None:
    """Each item's `ItemParams` from its modality's `aim_<modality>` field [items, 14], decoded once
    per batch for the tower and the merge (None: the field is absent)."""
    return None if params is None else [ItemParams.from_tensor(values) for values in params]


def item_encoder_keeps(items: list[ItemParams]) -> list[float] | None:
    """Each item's encoder keep fraction; None when every item keeps all its tokens (the stock
    vision tower runs)."""
    keeps = [item.schedule.encoder_keep for item in items]
    return None if all(keep >= 1.0 for keep in keeps) else keeps


def _has_images(inputs) -> bool:
    return any(modality == "image" and len(items) > 0 for modality, items in inputs.mm_data_items.items())


class AimModelMixin:
    """Pruning + usage reporting around the LLM forward (put before vLLM's model class).

    Overrides the model's `__init__` (decides whether this engine can prune and whether pruned KV
    is freed per layer, adds the pruner and the reporter) and `forward`: the runner patch passes
    `aim_step` to models with `aim_accepts_step`; only a step where a prefill prunes runs AIM's
    eager forward, every other step (decodes of pruned requests over their compacted KV, dummy /
    profiling runs) vLLM's own forward, compiled where vLLM compiles it. The LLM decoder is
    `self.language_model.model` in every supported vLLM model class. Under tensor parallelism every
    rank prunes alike; rank 0 reports usage.
    """

    aim_accepts_step = True
    aim_first_prune_layer = 0  # no rows dropped after earlier layers (Qwen3-VL: its DeepStack levels)

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        shape = LLMShape.from_hf_config(self.config.to_dict())
        parallel = TensorParallel.current()
        layers = [layer.self_attn.attn for layer in self.language_model.model.layers]
        first = self.aim_first_prune_layer
        if first >= shape.num_layers:  # e.g. a Qwen3-VL shrunk to fewer layers than DeepStack levels
            unsupported = f"no layer follows the last one that adds DeepStack features (layer {first - 1})"
            if parallel.is_reporter:
                logger.warning(
                    "aim-vllm: pruning is off in this engine (merging still works): %s", unsupported
                )
        else:
            unsupported = prepare_engine(vllm_config, layers, announce=parallel.is_reporter)
        if not unsupported:  # pruned requests then hold only the KV each layer keeps (Design C)
            install_stage_specs(layers, vllm_config, announce=parallel.is_reporter)
        self.aim_pruner = PruningDecoder(shape.num_layers, parallel, unsupported, first)
        store = StatsStore.from_env() if parallel.is_reporter else None
        if store is not None:  # for the processor's budget solver
            store.put_engine_pruning_off(unsupported)
        self.aim_reporter = UsageReporter(shape, store)

    @contextmanager
    def aim_layer_additions(self, inputs_embeds) -> Iterator[list | None]:
        """What the model adds to the hidden states after its first layers in this step (per layer,
        [>= N, d]; None: nothing), as its own forward would (Qwen3-VL: DeepStack), consumed."""
        yield None

    def get_model_state_cls(self) -> type:
        """Model Runner V2's per-model state (`model_state.py`); the V1 runner never asks."""
        from aim_vllm.models.model_state import AimModelState

        return AimModelState

    def forward(
        self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, aim_step=None, **kwargs
    ):
        if aim_step is not None and intermediate_tensors is None:
            hidden = self._aim_forward(input_ids, positions, inputs_embeds, aim_step)
            if hidden is not None:
                return hidden
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)

    def _aim_forward(self, input_ids, positions, inputs_embeds, aim_step):
        """Hidden states of a step where a prefill prunes (the eager pruning forward), or None to
        run vLLM's own forward: as it is, or over metadata of compacted sequences (`install`)."""
        decoder = self.language_model.model
        plan = self.aim_pruner.plan_step(decoder, aim_step)
        if plan is None:
            return None
        if not plan.pruning:
            if plan.changes_layout():
                self.aim_pruner.install(decoder, plan)
            self.aim_reporter.report(plan.started, None, plan.kv_held, plan.kv_block_size)
            return None
        hidden = inputs_embeds if inputs_embeds is not None else decoder.embed_input_ids(input_ids)
        with self.aim_layer_additions(inputs_embeds) as additions:
            hidden, counts = self.aim_pruner.forward(decoder, positions, hidden, plan, additions)
        self.aim_reporter.report(plan.started, counts, plan.kv_held, plan.kv_block_size)
        return hidden
