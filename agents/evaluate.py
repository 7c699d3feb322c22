"""Head-to-head evaluation of the systems of ``jigsaw.agents.baselines`` on held-out trace segments, in ``sim`` mode.

A segment is one held-out trace (scaled as in training, ``jigsaw.env.gym_env``), intervals ``HISTORY`` to
``HISTORY + intervals``. For each segment, each system in turn (a fresh one, built from the segment's peak
interval demand), and each interval t: ``decide`` gets the measured req/s of interval t-1 (the trace's mean
rate per app over that interval, and that of its busiest trace bin: the same numbers for every system), then
``jigsaw.env.sim.simulate_trace`` serves
interval t with the decided plan. Arrivals are seeded per (seed, trace, interval), so every system serves the
same requests. An interval without any plan (the ILP never found one) counts every request as violated and
0 slices.

Per system: mean and p95 compute slices; latency-SLO violation % = violated requests / requests over all
intervals, and over the servable intervals only: those whose busiest trace bin some plan could serve on the
cluster at all (the ILP finds one at headroom 1), so that demand beyond the cluster (a spike bigger than the
GPUs) is told apart from what the controller got wrong; mean accuracy vs best = the mean over intervals of
the mean path accuracy (the product of the chosen variants' accuracies, the best variant being 1.0);
fallback % = the share of intervals not decided by the proposer, for systems with one (policy,
policy_alone, greedy), NaN (JSON null) for the others;
decision time p50 / p99 in ms (``Decision.decide_ms``, the ILP's time limit included where it runs).

``write_outputs`` writes, under a log directory: one TensorBoard run per system (``<logdir>/<system>``) with
the tags of TAGS at step = interval index, ``evaluation.png`` (demand, slices and violations over time),
``summary.md`` / ``summary.csv`` (the table) and ``intervals.csv`` (every system's every interval).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from jigsaw.agents.baselines import SystemFactory
from jigsaw.agents.ilp import solve
from jigsaw.env.candidates import Features, SolverOptions
from jigsaw.env.gym_env import EnvConfig, JigsawEnv
from jigsaw.env.sim import simulate_trace
from jigsaw.env.space import HISTORY
from jigsaw.profiles.catalog import Catalog
from jigsaw.profiles.errors import ConfigError, ensure_writable_dir

TAGS = ("eval/slices", "eval/violation_pct", "eval/accuracy", "eval/decision_ms")
NO_PROPOSER = "no proposer"  # the verdict of a decision made without a proposal (agents.controller)
_SEED_STRIDE = 100_003  # seeds per trace: intervals of different traces never share one
# servable: some plan holds the interval's busiest bin with no headroom (a timeout counts as servable)
SERVABLE_OPTS = SolverOptions(headroom=1.0, time_limit_s=10.0)


@dataclass(frozen=True)
class Segment:
    trace: int  # index into the config's traces
    start: int  # first interval evaluated (>= HISTORY)
    end: int  # one past the last


@dataclass(frozen=True)
class IntervalResult:
    """One system's one interval."""

    step: int  # interval index over all segments (the TensorBoard step)
    slices: float
    requests: int
    violated: float  # requests
    accuracy: float  # mean path accuracy, nan without a plan
    source: str  # policy | ilp | hold | static
    proposed: bool  # a proposer was asked
    decide_ms: float
    servable: bool  # the cluster could serve the interval's busiest trace bin at all (see the module docstring)

    @property
    def violation_pct(self) -> float:
        return 100.0 * self.violated / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Summary:
    slices_mean: float
    slices_p95: float
    violation_pct: float
    violation_pct_servable: float  # over the servable intervals only (nan if there are none)
    accuracy_mean: float
    fallback_pct: float  # nan for systems without a proposer
    decide_ms_p50: float
    decide_ms_p99: float

    @classmethod
    def of(cls, rows: list[IntervalResult]) -> Summary:
        slices = np.array([r.slices for r in rows])
        requests = sum(r.requests for r in rows)
        accuracy = np.array([r.accuracy for r in rows])
        ms = np.array([r.decide_ms for r in rows])
        proposed = any(r.proposed for r in rows)
        servable = [r for r in rows if r.servable]
        servable_requests = sum(r.requests for r in servable)
        return cls(float(slices.mean()), float(np.percentile(slices, 95)),
                   100.0 * sum(r.violated for r in rows) / requests if requests else 0.0,
                   (100.0 * sum(r.violated for r in servable) / servable_requests if servable_requests
                    else 0.0 if servable else math.nan),
                   float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else math.nan,
                   100.0 * float(np.mean([r.source != "policy" for r in rows])) if proposed else math.nan,
                   float(np.percentile(ms, 50)), float(np.percentile(ms, 99)))


@dataclass
class Evaluation:
    config: EnvConfig
    segments: list[Segment]
    demand_rps: np.ndarray  # [steps, n_apps] the measured (mean) req/s of each evaluated interval
    results: dict[str, list[IntervalResult]]  # system -> one per step
    summaries: dict[str, Summary]


def evaluate_systems(catalog: Catalog, config: EnvConfig, systems: Mapping[str, SystemFactory],
                     intervals: int | None = None, seed: int = 0,
                     progress: Callable[[Iterable[Any]], Iterable[Any]] = lambda jobs: jobs) -> Evaluation:
    """Run every system on every held-out segment of ``config``'s traces (see the module docstring).

    :param intervals: intervals evaluated per trace (default: all of its held-out part after HISTORY).
    :param progress: wraps the iteration over (segment, system) runs (e.g. ``tqdm``).
    """
    if intervals is not None and intervals < 1:
        raise ConfigError(f"{intervals} intervals", field="--intervals", fix="give at least 1 interval per trace")
    if seed < 0:
        raise ConfigError(f"seed {seed}", field="--seed", fix="give a whole number >= 0")
    env = JigsawEnv(replace(config, part="held_out", mode="sim"))
    cfg = env.config
    segments = [Segment(i, HISTORY, len(d) if intervals is None else min(len(d), HISTORY + intervals))
                for i, d in enumerate(env.interval_demand)]
    offsets = np.cumsum([0] + [s.end - s.start for s in segments])
    busiest = {(si, t): dict(zip(cfg.apps, env.demand[seg.trace][t].max(axis=0).tolist(), strict=True))
               for si, seg in enumerate(segments) for t in range(seg.start - 1, seg.end)}  # req/s of the busiest bin
    servable = {(si, t): solve(catalog, cfg.gpu_type, busiest[(si, t)], cfg.gpus, Features(), SERVABLE_OPTS).status
                != "infeasible" for si, seg in enumerate(segments) for t in range(seg.start, seg.end)}
    results: dict[str, list[IntervalResult]] = {name: [] for name in systems}
    for si, name in progress([(si, name) for si in range(len(segments)) for name in systems]):
        seg = segments[si]
        demand, trace = env.interval_demand[seg.trace], env.traces[seg.trace]
        system = systems[name](dict(zip(cfg.apps, demand[seg.start:seg.end].max(axis=0).tolist(), strict=True)))
        for t in range(seg.start, seg.end):
            decision = system.decide(dict(zip(cfg.apps, demand[t - 1].tolist(), strict=True)), busiest[(si, t - 1)])
            start_s = float(trace.times_s[0]) + t * cfg.interval_s
            interval_seed = seed + cfg.seed_offset + seg.trace * _SEED_STRIDE + t
            if decision.plan is None:
                _, app = trace.arrivals(np.random.default_rng(interval_seed), start_s, start_s + cfg.interval_s)
                requests = int(np.isin(np.asarray(trace.apps)[app], cfg.apps).sum())
                slices, violated, accuracy = 0.0, float(requests), math.nan
            else:
                m = simulate_trace(catalog, decision.plan, trace, start_s, start_s + cfg.interval_s, interval_seed)
                requests = int(m.requests.sum())
                slices, violated, accuracy = m.slices_used, m.violation * requests, float(m.path_accuracy.mean())
            results[name].append(IntervalResult(int(offsets[si]) + t - seg.start, slices, requests, violated, accuracy,
                                                decision.source, decision.verdict != NO_PROPOSER, decision.decide_ms,
                                                servable[(si, t)]))
    demand_rps = np.concatenate([env.interval_demand[s.trace][s.start:s.end] for s in segments])
    for rows in results.values():
        rows.sort(key=lambda r: r.step)
    return Evaluation(cfg, segments, demand_rps, results, {n: Summary.of(rows) for n, rows in results.items()})


# ---- reports


def summary_document(ev: Evaluation) -> dict[str, Any]:
    """``{"systems": {name: {summary field: value}}}``, NaN as null."""
    return {"systems": {name: {f.name: _finite(getattr(s, f.name)) for f in fields(s)}
                        for name, s in ev.summaries.items()}}


def _finite(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


_COLUMNS = (("system", "{}"), ("slices mean", "{:.2f}"), ("slices p95", "{:.2f}"), ("violation %", "{:.3f}"),
            ("violation % servable", "{:.3f}"),
            ("accuracy", "{:.4f}"), ("fallback %", "{:.1f}"), ("decide p50 ms", "{:.2f}"), ("decide p99 ms", "{:.2f}"))


def markdown_table(ev: Evaluation) -> str:
    cfg = ev.config
    steps = sum(s.end - s.start for s in ev.segments)
    lines = [f"{steps} intervals of {cfg.interval_s:g} s on the held-out parts of {len(ev.segments)} trace(s), "
             f"{cfg.gpus} x {cfg.gpu_type}, apps {', '.join(cfg.apps)}, load {cfg.load:g}; fallback % '-' for systems "
             "without a proposer",
             "", "| " + " | ".join(c for c, _ in _COLUMNS) + " |", "|" + "|".join("---" for _ in _COLUMNS) + "|"]
    for name, s in ev.summaries.items():
        values = [name, *(getattr(s, f.name) for f in fields(s))]
        lines.append("| " + " | ".join(fmt.format(v) if not (isinstance(v, float) and math.isnan(v)) else "-"
                                       for (_, fmt), v in zip(_COLUMNS, values, strict=True)) + " |")
    return "\n".join(lines)


def write_outputs(ev: Evaluation, logdir: Path) -> None:
    """TensorBoard runs, the plot and the tables under ``logdir`` (see the module docstring)."""
    from tensorboard.summary import Writer  # the package's own writer: no torch here

    ensure_writable_dir(logdir, "--logdir")
    for name, rows in ev.results.items():
        writer = Writer(str(logdir / name))
        for r in rows:
            for tag, value in zip(TAGS, (r.slices, r.violation_pct, r.accuracy, r.decide_ms), strict=True):
                if math.isfinite(value):
                    writer.add_scalar(tag, value, r.step)
        writer.close()
    _plot(ev, logdir / "evaluation.png")
    (logdir / "summary.md").write_text(markdown_table(ev) + "\n")
    names = [f.name for f in fields(Summary)]
    with open(logdir / "summary.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["system", *names])
        out.writerows([name, *(getattr(s, n) for n in names)] for name, s in ev.summaries.items())
    names = [f.name for f in fields(IntervalResult)]
    with open(logdir / "intervals.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["system", *names, *(f"demand_rps_{a}" for a in ev.config.apps)])
        out.writerows([name, *(getattr(r, n) for n in names), *ev.demand_rps[r.step].round(3)]
                      for name, rows in ev.results.items() for r in rows)


def _plot(ev: Evaluation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, (ax_d, ax_s, ax_v) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    steps = np.arange(len(ev.demand_rps))
    for j, app in enumerate(ev.config.apps):
        ax_d.step(steps, ev.demand_rps[:, j], where="mid", label=app)
    for name, rows in ev.results.items():
        ax_s.step(steps, [r.slices for r in rows], where="mid", label=name)
        ax_v.step(steps, [r.violation_pct for r in rows], where="mid", label=name)
    for boundary in np.cumsum([s.end - s.start for s in ev.segments])[:-1]:
        for ax in (ax_d, ax_s, ax_v):
            ax.axvline(boundary - 0.5, color="grey", linestyle=":")
    ax_d.set_ylabel("demand (req/s)")
    ax_s.set_ylabel("compute slices")
    ax_v.set_ylabel("SLO violations (%)")
    ax_v.set_xlabel(f"interval ({ev.config.interval_s:g} s; dotted: next held-out trace)")
    ax_d.legend(fontsize="small")
    ax_s.legend(fontsize="small", ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
