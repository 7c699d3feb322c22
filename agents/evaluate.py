"""Head-to-head evaluation of the systems of ``jigsaw.agents.baselines`` on held-out trace segments, in ``sim`` mode,
with plan changes that take time (``jigsaw.env.transitions``).

A segment is one held-out trace (scaled as in training, ``jigsaw.env.gym_env``), intervals ``HISTORY`` to
``HISTORY + intervals``. For each segment and each system (a fresh one, built from the segment's peak interval
demand), the system decides at the start of every interval t, given the measured req/s of interval t-1 (the
trace's mean rate per app over that interval, and that of its busiest trace bin: the same numbers for every
system). The decisions are applied as the reconciler applies them (start-up times, repartitions, make-before-break
with the room there is, one change at a time; the first decision's plan is in force, warm, at the segment's
start), and ``jigsaw.env.sim.simulate_spans`` serves the whole segment in one continuous simulation: queues,
the plan in force and workers still starting carry from one interval to the next. Arrivals are seeded per (seed,
trace), so every system serves the same requests; each seed is one run of every system (the deterministic
systems decide once for all seeds; ``random_actor`` decides anew per seed). An interval before any plan exists
counts every request as violated and 0 slices.

Per system and seed: mean and p95 compute slices held (time-weighted: during a change both the old workers still
there and the new ones starting hold theirs); latency-SLO violation % = violated requests / requests, and over
the servable intervals only: those whose busiest trace bin some plan could serve on the cluster at all (the ILP
finds one at headroom 1), so that demand beyond the cluster is told apart from what the controller got wrong;
the violations of requests that arrived while a change was under way (% of all requests); reconfigurations
per hour (applied changes that start or stop workers); mean accuracy vs best = the mean over intervals of the
mean path accuracy of the plan decided; fallback % = the share of intervals not decided by the proposer, for
systems with one, NaN (JSON null) for the others; decision time p50 / p99 in ms (``Decision.decide_ms``, the
ILP's time limit included where it runs). The summary is the mean over seeds, with the sample standard deviation
beside each figure (``_sd``; NaN with one seed).

``write_outputs`` writes, under a log directory: one TensorBoard run per system (``<logdir>/<system>``, the first
seed) with the tags of TAGS at step = interval index, ``evaluation.png`` (demand, slices and violations over
time), ``summary.md`` / ``summary.csv`` (the table) and ``intervals.csv`` (every system's every interval and seed).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from jigsaw.agents.baselines import ABLATION_GPU_FACTOR, ABLATIONS, SEEDED_SYSTEMS, SystemFactory
from jigsaw.agents.controller import Decision
from jigsaw.agents.ilp import solve
from jigsaw.env.candidates import Features, SolverOptions
from jigsaw.env.gym_env import EnvConfig, JigsawEnv
from jigsaw.env.perf import compile_plan
from jigsaw.env.sim import arrivals_of, simulate_spans
from jigsaw.env.space import HISTORY
from jigsaw.env.transitions import FleetBuilder, schedule
from jigsaw.profiles.catalog import Catalog
from jigsaw.profiles.errors import ConfigError, ensure_writable_dir

TAGS = ("eval/slices", "eval/violation_pct", "eval/accuracy", "eval/decision_ms", "eval/violation_in_transition_pct",
        "eval/changes")
NO_PROPOSER = "no proposer"  # the verdict of a decision made without a proposal (agents.controller)
DEFAULT_SEEDS = (0, 1, 2)
_SEED_STRIDE = 100_003  # seeds per trace: segments of different traces never share one
# servable: some plan holds the interval's busiest bin with no headroom (a timeout counts as servable)
SERVABLE_OPTS = SolverOptions(headroom=1.0, time_limit_s=10.0)


@dataclass(frozen=True)
class Segment:
    trace: int  # index into the config's traces
    start: int  # first interval evaluated (>= HISTORY)
    end: int  # one past the last


@dataclass(frozen=True)
class IntervalResult:
    """One system's one interval under one seed."""

    seed: int
    step: int  # interval index over all segments (the TensorBoard step)
    slices: float  # compute slices held, time-weighted over the interval
    requests: int
    violated: float  # requests
    violated_in_transition: float  # of those, requests that arrived while a change was under way
    changes: int  # changes applied in the interval that started or stopped workers
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
    violation_pct_in_transition: float  # violated requests that arrived during a change, % of all requests
    reconfigs_per_h: float
    accuracy_mean: float
    fallback_pct: float  # nan for systems without a proposer
    decide_ms_p50: float
    decide_ms_p99: float

    @classmethod
    def of(cls, rows: list[IntervalResult], interval_s: float) -> Summary:
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
                   100.0 * sum(r.violated_in_transition for r in rows) / requests if requests else 0.0,
                   sum(r.changes for r in rows) / (len(rows) * interval_s / 3600.0),
                   float(np.nanmean(accuracy)) if np.isfinite(accuracy).any() else math.nan,
                   100.0 * float(np.mean([r.source != "policy" for r in rows])) if proposed else math.nan,
                   float(np.percentile(ms, 50)), float(np.percentile(ms, 99)))


@dataclass(frozen=True)
class SeededSummary:
    """A system's summary: the mean over seeds and the sample standard deviation of each figure."""

    mean: Summary
    sd: Summary  # nan with one seed

    @classmethod
    def of(cls, per_seed: list[Summary]) -> SeededSummary:
        names = [f.name for f in fields(Summary)]
        values = np.array([[getattr(s, n) for n in names] for s in per_seed], dtype=float)
        with np.errstate(all="ignore"):
            mean = [float(np.mean(values[:, i])) for i in range(len(names))]
            sd = [float(np.std(values[:, i], ddof=1)) if len(per_seed) > 1 else math.nan for i in range(len(names))]
        return cls(Summary(*mean), Summary(*sd))


@dataclass
class Evaluation:
    config: EnvConfig
    segments: list[Segment]
    seeds: tuple[int, ...]
    demand_rps: np.ndarray  # [steps, n_apps] the measured (mean) req/s of each evaluated interval
    results: dict[str, list[IntervalResult]]  # system -> one per (seed, step), seed by seed
    summaries: dict[str, SeededSummary]
    capacity_slices: float  # the cluster's compute slices
    instant_changes: bool = False  # plan changes were free and instant (the comparison world)

    def rows(self, system: str, seed: int | None = None) -> list[IntervalResult]:
        """One system's intervals under ``seed`` (default: the first seed)."""
        seed = self.seeds[0] if seed is None else seed
        return [r for r in self.results[system] if r.seed == seed]


def evaluate_systems(catalog: Catalog, config: EnvConfig, systems: Mapping[str, SystemFactory],
                     intervals: int | None = None, seeds: Sequence[int] = DEFAULT_SEEDS,
                     progress: Callable[[Iterable[Any], str], Iterable[Any]] = lambda jobs, _what: jobs,
                     part: str = "held_out", instant_changes: bool = False) -> Evaluation:
    """Run every system on every held-out segment of ``config``'s traces (see the module docstring).

    :param intervals: intervals evaluated per trace (default: all of its held-out part after HISTORY).
    :param progress: wraps an iteration, given what it is (e.g. ``tqdm``): over the intervals checked for
        servability, then over the (seed, segment, system) runs.
    :param part: the traces' part to run on: held_out, or train to tune a baseline on (never to report).
    :param instant_changes: every change free and instant (no start-up, repartition or room needed), to compare
        with the world before transitions were modelled.
    """
    if intervals is not None and intervals < 1:
        raise ConfigError(f"{intervals} intervals", field="--intervals", fix="give at least 1 interval per trace")
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {list(seeds)}", field="--seeds", fix="give distinct whole numbers >= 0")
    env = JigsawEnv(replace(config, part=part, mode="sim"))
    cfg = env.config
    segments = [Segment(i, HISTORY, len(d) if intervals is None else min(len(d), HISTORY + intervals))
                for i, d in enumerate(env.interval_demand)]
    offsets = np.cumsum([0] + [s.end - s.start for s in segments])
    busiest = {(si, t): dict(zip(cfg.apps, env.demand[seg.trace][t].max(axis=0).tolist(), strict=True))
               for si, seg in enumerate(segments) for t in range(seg.start - 1, seg.end)}  # req/s of the busiest bin
    keys = [(si, t) for si, seg in enumerate(segments) for t in range(seg.start, seg.end)]
    servable = {k: solve(catalog, cfg.gpu_type, busiest[k], cfg.gpus, Features(), SERVABLE_OPTS).status != "infeasible"
                for k in progress(keys, "servable intervals")}
    builder = FleetBuilder(catalog, catalog.gpu(cfg.gpu_type), cfg.apps)
    results: dict[str, list[IntervalResult]] = {name: [] for name in systems}
    decided: dict[tuple[int, str], list[Decision]] = {}
    jobs = [(seed, si, name) for seed in seeds for si in range(len(segments)) for name in systems]
    for seed, si, name in progress(jobs, "evaluating"):
        seg = segments[si]
        demand = env.interval_demand[seg.trace]
        if (si, name) not in decided or name in SEEDED_SYSTEMS:
            system = systems[name](dict(zip(cfg.apps, demand[seg.start:seg.end].max(axis=0).tolist(), strict=True)),
                                   seed)
            decided[(si, name)] = [system.decide(dict(zip(cfg.apps, demand[t - 1].tolist(), strict=True)),
                                                 busiest[(si, t - 1)]) for t in range(seg.start, seg.end)]
        rows = _serve_segment(catalog, env, seg, decided[(si, name)], builder, seed, instant_changes)
        results[name] += [IntervalResult(seed, int(offsets[si]) + i, *row, d.source, d.verdict != NO_PROPOSER,
                                         d.decide_ms, servable[(si, seg.start + i)])
                          for i, (row, d) in enumerate(zip(rows, decided[(si, name)], strict=True))]
    demand_rps = np.concatenate([env.interval_demand[s.trace][s.start:s.end] for s in segments])
    for rows in results.values():
        rows.sort(key=lambda r: (seeds.index(r.seed), r.step))
    summaries = {n: SeededSummary.of([Summary.of([r for r in rows if r.seed == s], cfg.interval_s) for s in seeds])
                 for n, rows in results.items()}
    return Evaluation(cfg, segments, tuple(seeds), demand_rps, results, summaries,
                      float(cfg.gpus * catalog.gpu(cfg.gpu_type).compute_slices), instant_changes)


def _serve_segment(catalog: Catalog, env: JigsawEnv, seg: Segment, decisions: list[Decision], builder: FleetBuilder,
                   seed: int, instant: bool) -> list[tuple[float, int, float, float, int, float]]:
    """Per interval of ``seg``: (slices held, requests, violated, violated in transition, changes, accuracy) when
    ``decisions`` are applied at the interval starts and the segment is simulated at once."""
    cfg = env.config
    trace = env.traces[seg.trace]
    n = seg.end - seg.start
    starts = float(trace.times_s[0]) + (seg.start + np.arange(n + 1)) * cfg.interval_s
    times, mapped = arrivals_of(trace, cfg.apps, np.random.default_rng(seed + cfg.seed_offset + seg.trace * _SEED_STRIDE),
                                float(starts[0]), float(starts[-1]))
    bins = np.clip(np.searchsorted(starts, times, side="right") - 1, 0, n - 1)
    requests = np.bincount(bins, minlength=n)
    first = next((i for i, d in enumerate(decisions) if d.plan is not None), n)
    if first == n:
        return [(0.0, int(requests[i]), float(requests[i]), 0.0, 0, math.nan) for i in range(n)]
    plans = [d.plan for d in decisions[first:] if d.plan is not None]
    fleets = [builder.fleet(p) for p in plans]
    spans, applied = schedule(starts[first:n], fleets,
                              [builder.startup_s(p) * (not instant) for p in plans], builder.repartition_s * (not instant),
                              builder.instance_slices, math.inf if instant else float(cfg.gpus * builder.gpu.compute_slices))
    outcomes = simulate_spans(catalog, plans, spans, times, mapped, cfg.apps, seed + 1, float(starts[-1]))
    violated = np.zeros(n)
    in_change = np.zeros(n)
    windows = [(s.start_s, spans[j + 1].start_s) for j, s in enumerate(spans[:-1]) if s.in_transition]
    for arrival, bad in outcomes:
        b = np.clip(np.searchsorted(starts, arrival, side="right") - 1, 0, n - 1)
        violated += np.bincount(b, weights=bad, minlength=n)
        during = np.zeros(arrival.size, dtype=bool)
        for lo, hi in windows:
            during |= (arrival >= lo) & (arrival < hi)
        in_change += np.bincount(b, weights=bad & during, minlength=n)
    violated[:first] = requests[:first]
    compiled = [compile_plan(catalog, p) for p in plans]
    slices = [c.slices_used for c in compiled]  # held while a plan serves; Change.held_slices during a change
    edges, held = [], []
    for j, s in enumerate(spans):
        change = applied[spans[j + 1].source].change if s.in_transition else None
        edges.append(s.start_s)
        held.append(slices[s.source] if change is None else
                    change.held_slices(slices[s.source], fleets[s.source], fleets[spans[j + 1].source]))
    held_mean = _time_average(np.array(edges), np.array(held), starts)
    held_mean[:first] = 0.0
    changes = np.zeros(n, dtype=np.int64)
    for a in applied[1:]:
        if a.change is not None and a.change.workers_changed:
            changes[min(n - 1, max(0, int(np.searchsorted(starts, a.applied_s, side="right")) - 1))] += 1
    accuracy = [math.nan] * first + [float(c.path_accuracy.mean()) for c in compiled]
    return [(float(held_mean[i]), int(requests[i]), float(violated[i]), float(in_change[i]), int(changes[i]),
             accuracy[i]) for i in range(n)]


def _time_average(edges: np.ndarray, values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The mean over each [bounds[i], bounds[i+1]) of the step function ``values[j]`` from ``edges[j]`` on."""
    points = np.union1d(edges, bounds)
    points = points[(points >= bounds[0]) & (points <= bounds[-1])]
    level = values[np.clip(np.searchsorted(edges, points[:-1], side="right") - 1, 0, values.size - 1)]
    area = np.concatenate([[0.0], np.cumsum(level * np.diff(points))])
    at = np.interp(bounds, points, area)
    return np.diff(at) / np.diff(bounds)


# ---- reports


def summary_document(ev: Evaluation) -> dict[str, Any]:
    """``{"seeds": [...], "systems": {name: {field: mean over seeds, field_sd: its sample sd}}, "by_trace": {trace:
    {name: the same, over that trace's intervals}}}``, NaN as null."""
    trace_of = np.concatenate([np.full(s.end - s.start, s.trace) for s in ev.segments])
    by_trace = {}
    for k in sorted(set(trace_of.tolist())):
        by_trace[Path(ev.config.traces[k]).stem] = {name: _fields(SeededSummary.of([Summary.of(
            [r for r in ev.rows(name, seed) if trace_of[r.step] == k], ev.config.interval_s) for seed in ev.seeds]))
            for name in ev.summaries}
    return {"seeds": list(ev.seeds), "systems": {name: _fields(s) for name, s in ev.summaries.items()},
            "by_trace": by_trace}


def _fields(s: SeededSummary) -> dict[str, float | None]:
    return {k: _finite(v) for f in fields(Summary)
            for k, v in ((f.name, getattr(s.mean, f.name)), (f"{f.name}_sd", getattr(s.sd, f.name)))}


def _finite(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


_COLUMNS = (("slices mean", "slices_mean", "{:.2f}"), ("slices p95", "slices_p95", "{:.2f}"),
            ("violation %", "violation_pct", "{:.3f}"), ("violation % servable", "violation_pct_servable", "{:.3f}"),
            ("in transitions %", "violation_pct_in_transition", "{:.3f}"),
            ("reconfigs / h", "reconfigs_per_h", "{:.1f}"), ("accuracy", "accuracy_mean", "{:.4f}"),
            ("fallback %", "fallback_pct", "{:.1f}"), ("decide p50 ms", "decide_ms_p50", "{:.2f}"),
            ("decide p99 ms", "decide_ms_p99", "{:.2f}"))
_WITH_SPREAD = ("slices_mean", "violation_pct", "violation_pct_servable", "violation_pct_in_transition",
                "reconfigs_per_h")


def _cell(fmt: str, mean: float, sd: float, spread: bool) -> str:
    if math.isnan(mean):
        return "-"
    return fmt.format(mean) + (f" ± {fmt.format(sd)}" if spread and math.isfinite(sd) else "")


def markdown_table(ev: Evaluation) -> str:
    cfg = ev.config
    steps = sum(s.end - s.start for s in ev.segments)
    lines = [f"{steps} intervals of {cfg.interval_s:g} s on the held-out parts of {len(ev.segments)} trace(s), "
             f"{cfg.gpus} x {cfg.gpu_type} ({ev.capacity_slices:g} slices), apps {', '.join(cfg.apps)}, load "
             f"{cfg.load:g}; "
             + ("plan changes free and instant (--instant-changes)" if ev.instant_changes else
                "plan changes take time (jigsaw.env.transitions)") + "; mean ± sd over seeds "
             f"{', '.join(map(str, ev.seeds))}; fallback % '-' for systems without a proposer",
             "", "| system | " + " | ".join(c for c, _, _ in _COLUMNS) + " |",
             "|---|" + "|".join("---" for _ in _COLUMNS) + "|"]
    for name, s in ev.summaries.items():
        shown = f"{name} ({ABLATION_GPU_FACTOR}× GPUs)" if name in ABLATIONS else name  # not on the header's cluster
        lines.append(f"| {shown} | " + " | ".join(_cell(fmt, getattr(s.mean, key), getattr(s.sd, key), key in _WITH_SPREAD)
                                                 for _, key, fmt in _COLUMNS) + " |")
    return "\n".join(lines)


def write_outputs(ev: Evaluation, logdir: Path) -> None:
    """TensorBoard runs, the plot and the tables under ``logdir`` (see the module docstring)."""
    from tensorboard.summary import Writer  # the package's own writer: no torch here

    ensure_writable_dir(logdir, "--logdir")
    for name in ev.results:
        writer = Writer(str(logdir / name))
        for r in ev.rows(name):
            in_change = 100.0 * r.violated_in_transition / r.requests if r.requests else 0.0
            for tag, value in zip(TAGS, (r.slices, r.violation_pct, r.accuracy, r.decide_ms, in_change, r.changes),
                                  strict=True):
                if math.isfinite(value):
                    writer.add_scalar(tag, value, r.step)
        writer.close()
    _plot(ev, logdir / "evaluation.png")
    (logdir / "summary.md").write_text(markdown_table(ev) + "\n")
    doc = summary_document(ev)["systems"]
    with open(logdir / "summary.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        keys = list(next(iter(doc.values()))) if doc else []
        out.writerow(["system", *keys])
        out.writerows([name, *(row[k] for k in keys)] for name, row in doc.items())
    names = [f.name for f in fields(IntervalResult)]
    with open(logdir / "intervals.csv", "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["system", *names, *(f"demand_rps_{a}" for a in ev.config.apps)])
        out.writerows([name, *(getattr(r, n) for n in names), *ev.demand_rps[r.step].round(3)]
                      for name, rows in ev.results.items() for r in rows)


# the systems a reader compares first get their own colours and solid lines; the rest are thin and dashed
_FOREGROUND = ("policy", "zero_actor", "random_actor", "ilp", "ilp_sticky", "static_peak")


def _plot(ev: Evaluation, path: Path) -> None:
    """Demand, slices held and violations over the evaluated intervals (the first seed). The slices axis ends just
    above the cluster's capacity (a dashed line); systems that ran on more GPUs than the cluster (the ablations)
    are named in the legend with their mean instead of squeezing the others into one band. Each held-out trace
    is named above its part."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, (ax_d, ax_s, ax_v) = plt.subplots(3, 1, figsize=(12, 10), sharex=True)
    steps = np.arange(len(ev.demand_rps))
    for j, app in enumerate(ev.config.apps):
        ax_d.step(steps, ev.demand_rps[:, j], where="mid", label=app)
    capacity = ev.capacity_slices
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for name in ev.results:
        rows = ev.rows(name)
        slices = np.array([r.slices for r in rows])
        main = name in _FOREGROUND
        style = {"color": next(colours) if main else "grey", "linewidth": 1.6 if main else 0.8,
                 "linestyle": "-" if main else "--", "alpha": 1.0 if main else 0.6}
        beyond = slices.mean() > capacity
        label = f"{name} (mean {slices.mean():.0f}: more GPUs, off the axis)" if beyond else name
        ax_s.step(steps, slices, where="mid", label=label, **style)
        ax_v.step(steps, [r.violation_pct for r in rows], where="mid", label=name, **style)
    ax_s.axhline(capacity, color="black", linestyle="--", linewidth=1.0)
    ax_s.text(0, capacity, f" cluster: {capacity:g} slices", va="bottom", fontsize="small")
    ax_s.set_ylim(0, capacity * 1.15)
    ends = np.cumsum([s.end - s.start for s in ev.segments])
    for boundary in ends[:-1]:
        for ax in (ax_d, ax_s, ax_v):
            ax.axvline(boundary - 0.5, color="grey", linestyle=":")
    for seg, end in zip(ev.segments, ends, strict=True):
        name = Path(ev.config.traces[seg.trace]).stem
        ax_d.text(end - (seg.end - seg.start) / 2 - 0.5, 1.01, name, transform=ax_d.get_xaxis_transform(),
                  ha="center", va="bottom", fontsize="small")
    ax_d.set_ylabel("demand (req/s)")
    ax_s.set_ylabel("compute slices held")
    ax_v.set_ylabel("SLO violations (%)")
    world = "changes free and instant" if ev.instant_changes else "changes take time"
    ax_v.set_xlabel(f"interval ({ev.config.interval_s:g} s; {world}; seed {ev.seeds[0]}; dotted: next held-out trace)")
    ax_d.legend(fontsize="small", loc="upper right")
    ax_s.legend(fontsize="x-small", ncol=3, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
