"""A chaos campaign: runs ``seed, seed+1, …``, a few at a time, and what they add up to.

Run ``i`` of a campaign uses seed ``N + i``. With one scenario every run uses it; with
``all``, run ``i`` takes the scenarios in turn (``seed + i`` modulo their number, so a
seed always maps to the same scenario). Each run's exact reproduction is one command
(:attr:`RunResult.repro`).
"""

from __future__ import annotations

import asyncio
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec

from simulations.chaos.run import RunResult, run_one
from simulations.chaos.schedule import SCENARIOS

__all__ = ["ALL", "CampaignReport", "FailedRun", "run_campaign", "scenario_for"]

ALL = "all"
_ROTATION = sorted(SCENARIOS)


class FailedRun(msgspec.Struct, frozen=True):
    seed: int
    invariant: str
    detail: str
    scenario: str
    repro: str


class CampaignReport(msgspec.Struct, kw_only=True):
    runs: int
    seed: int
    scenarios: dict[str, int]
    faults_injected: dict[str, int]
    violations: list[FailedRun]
    seeds_failed: list[int]
    converged_s_max: float | None
    orders: int
    fills: int
    wall_s: float
    workdirs_kept: list[str]


def scenario_for(seed: int, scenario: str) -> str:
    return _ROTATION[seed % len(_ROTATION)] if scenario == ALL else scenario


async def run_campaign(
    seed: int,
    runs: int,
    scenario: str,
    duration_s: float,
    root: Path,
    *,
    jobs: int = 1,
    keep: bool = False,
    progress: Callable[[RunResult, int, int], None] | None = None,
) -> CampaignReport:
    if scenario != ALL and scenario not in SCENARIOS:
        raise KeyError(scenario)
    loop = asyncio.get_running_loop()
    began = loop.time()
    gate = asyncio.Semaphore(max(1, jobs))
    results: list[RunResult] = []
    kept: list[str] = []

    async def one(i: int) -> None:
        run_seed = seed + i
        name = scenario_for(run_seed, scenario)
        workdir = root / f"seed-{run_seed}-{name}"
        async with gate:
            result = await run_one(run_seed, name, duration_s, workdir)
        results.append(result)
        if result.violations or keep:
            kept.append(str(workdir))
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        if progress is not None:
            progress(result, len(results), runs)

    await asyncio.gather(*(one(i) for i in range(runs)))
    results.sort(key=lambda r: r.seed)
    injected: Counter[str] = Counter()
    for r in results:
        injected.update(r.faults_injected)
    failed = [
        FailedRun(seed=r.seed, invariant=v.invariant, detail=v.detail, scenario=r.scenario, repro=r.repro)
        for r in results
        for v in r.violations
    ]
    converged = [r.converged_s for r in results if r.converged_s is not None]
    return CampaignReport(
        runs=len(results),
        seed=seed,
        scenarios=dict(Counter(r.scenario for r in results)),
        faults_injected=dict(sorted(injected.items())),
        violations=failed,
        seeds_failed=sorted({f.seed for f in failed}),
        converged_s_max=max(converged) if converged else None,
        orders=sum(r.orders for r in results),
        fills=sum(r.fills for r in results),
        wall_s=round(loop.time() - began, 2),
        workdirs_kept=sorted(kept),
    )
