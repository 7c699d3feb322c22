"""Measure how long a cpu-backend worker takes from launch to ready, per variant the built-in apps use.

Each worker is started exactly as the serving shim starts it (``CpuBackend.start``: a ``jigsaw.serving_shim.worker``
process that imports torch, builds the variant's plain-torch stand-in from ``profiles.models``, warms it up and
binds its socket) and is polled with ``Backend.health`` as the reconciler's ``_until_ready`` does, until it
answers. The cpu backend runs the stand-in named after the plan's variant (``CpuBackend.place``: model =
variant unless ``--model`` is given), so that is what is measured. One worker at a time, ``--repeats``
launches per variant interleaved across variants; the median is kept. A ``noop`` worker (torch import and
socket only) is measured too, as the floor, and not written to the catalog.

The catalog's ``default`` is the median over the variants. A variant gets a figure of its own only when *every*
launch of it was more than ``--min-diff-s`` slower (or faster) than the default: the launches of one variant
spread by a few tenths of a second (page cache, scheduling) while the stand-ins' build and warm-up differ by
tens of milliseconds, so a median alone would write noise into the catalog as per-variant differences.

    python scripts/measure_startup.py [--repeats 3] [--threads 1] [--batch 1] [--min-diff-s 0.1] [--write]

Stderr: a table (seconds). Last stdout line: one JSON object {"startup_s": {variant: median}, "default_s",
"overrides_s", "noop_s", "samples_s", ...}. ``--write`` replaces the ``cpu_workers:`` block of the catalog file
(default: the built-in one) with the default and the overrides; without it the block is printed on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from jigsaw.profiles.catalog import DEFAULT_CATALOG, load_catalog
from jigsaw.profiles.errors import JigsawError
from jigsaw.serving_shim.backends.base import WorkerSpec
from jigsaw.serving_shim.backends.cpu import CpuBackend
from jigsaw.serving_shim.reconciler import READY_TIMEOUT_S

POLL_S = 0.02  # finer than the reconciler's 0.1 s: the poll interval bounds the measurement's resolution
FLOOR = "noop"


def app_variants(catalog_path: Path) -> list[str]:
    """Every variant of the catalog's apps, in first-seen order (these are what the cpu backend runs)."""
    catalog = load_catalog(catalog_path)
    seen: dict[str, None] = {}
    for app in catalog.apps.values():
        for task in app.tasks:
            seen.update((v.name, None) for v in task.variants)
    return list(seen)


async def launch_to_ready_s(backend: CpuBackend, model: str, threads: int, batch: int) -> float:
    """Seconds from asking the backend to start a worker of ``model`` until its health check answers ready."""
    spec = WorkerSpec("measure", "startup", model, model, threads, "cpu", place=f"cpu x{threads}", batch=batch)
    t0 = time.monotonic()
    handle = backend.start(spec)
    try:
        while time.monotonic() - t0 < READY_TIMEOUT_S:
            health = await backend.health(handle)
            if health.ready:
                return time.monotonic() - t0
            if not health.alive:
                raise RuntimeError(f"worker for {model} exited ({health.detail}); see {handle.log}")
            await asyncio.sleep(POLL_S)
        raise RuntimeError(f"worker for {model} not ready in {READY_TIMEOUT_S:g} s; see {handle.log}")
    finally:
        backend.stop(handle)


def overrides(samples: dict[str, list[float]], medians: dict[str, float], default_s: float,
              min_diff_s: float) -> dict[str, float]:
    """The variants every launch of which differed from ``default_s`` by more than ``min_diff_s``, one way."""
    return {v: medians[v] for v, s in samples.items()
            if min(s) > default_s + min_diff_s or max(s) < default_s - min_diff_s}


def yaml_block(startup: dict[str, float], own: dict[str, float], default_s: float, noop_s: float, command: str,
               repeats: int, min_diff_s: float, load: tuple[float, float]) -> str:
    """The catalog's ``cpu_workers:`` block for these figures (``load``: 1-min load average before and after)."""
    spread = f"{min(startup.values()):.2f}-{max(startup.values()):.2f} s"
    source = (f"measured {date.today().isoformat()} on a {os.cpu_count()}-core CPU machine (1-min load average "
              f"{load[0]:.2f} before, {load[1]:.2f} after) by `{command}`: launch -> "
              f"first ready health answer of a cpu-backend worker (the variant's plain-torch stand-in), one at a time, "
              f"median of {repeats}; default = median over the {len(startup)} app variants (medians {spread}; a noop "
              f"worker, torch import + socket only, {noop_s:.2f} s); a variant is listed only if every launch of it "
              f"differed from the default by > {min_diff_s:g} s ({len(own)} did)")
    lines = ["cpu_workers:  # stand-in workers of the cpu backend (serving_shim/backends/cpu.py); see data/README.md",
             f"  source: {json.dumps(source)}", "  startup_s:", f"    default: {default_s:.2f}"]
    lines += [f"    {v}: {s:.2f}" for v, s in own.items()]
    return "\n".join(lines) + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with its top-level ``cpu_workers:`` block (its indented lines) replaced, or ``block`` appended."""
    text = text if text.endswith("\n") else text + "\n"
    match = re.search(r"^cpu_workers:.*\n(?:[ \t]*\n|[ \t]+.*\n)*", text, flags=re.MULTILINE)
    if match is None:
        return text + "\n" + block
    end = match.start() + len(match.group(0).rstrip()) + 1  # blank lines after the block stay where they are
    return text[:match.start()] + block + text[end:]


async def measure(variants: list[str], repeats: int, threads: int, batch: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {m: [] for m in [FLOOR, *variants]}
    with tempfile.TemporaryDirectory(prefix="jigsaw-startup-") as run_dir:
        backend = CpuBackend(Path(run_dir), max_workers=1)
        await launch_to_ready_s(backend, FLOOR, threads, batch)  # unrecorded: brings torch into the page cache
        for r in range(repeats):
            for model in samples:
                s = await launch_to_ready_s(backend, model, threads, batch)
                samples[model].append(s)
                print(f"  [{r + 1}/{repeats}] {model:36s} {s:6.2f} s", file=sys.stderr, flush=True)
    return samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="launches per variant; the median is kept (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1: a worker of a "
                   "2-core machine running two)")
    p.add_argument("--batch", type=int, default=1, help="the plan batch warmed up before ready (default 1)")
    p.add_argument("--min-diff-s", type=float, default=0.1, help="list a variant on its own only if every launch "
                   "of it differed from the default by more than this, one way (default 0.1 s)")
    p.add_argument("--variants", default=None, help="comma-separated variants (default: all of the catalog's apps)")
    p.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG / "catalog.yaml", help="catalog file to read "
                   "(and, with --write, update)")
    p.add_argument("--write", action="store_true", help="replace the catalog's cpu_workers block with the figures")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.threads < 1 or args.batch < 1 or not 0 <= args.min_diff_s < 3600:
        print("measure_startup: --repeats, --threads and --batch must be >= 1, --min-diff-s in 0..3600 s",
              file=sys.stderr)
        return 2
    try:
        known = app_variants(args.catalog)
    except JigsawError as e:
        print(f"measure_startup: {e}", file=sys.stderr)
        return 2
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else known
    unknown = [v for v in variants if v not in known]
    if unknown or not variants:
        print(f"measure_startup: not variants of the catalog's apps: {', '.join(unknown) or '(none given)'}",
              file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    samples = asyncio.run(measure(variants, args.repeats, args.threads, args.batch))
    load = (load_before, os.getloadavg()[0])
    medians = {m: round(statistics.median(s), 2) for m, s in samples.items()}
    startup = {v: medians[v] for v in variants}
    default_s = round(statistics.median(startup.values()), 2)
    own = overrides({v: samples[v] for v in variants}, medians, default_s, args.min_diff_s)
    print(f"\n{'model':36s} {'median_s':>8s} {'min_s':>6s} {'max_s':>6s}", file=sys.stderr)
    for m, s in samples.items():
        print(f"{m:36s} {medians[m]:8.2f} {min(s):6.2f} {max(s):6.2f}", file=sys.stderr)
    command = "python scripts/measure_startup.py " + shlex.join(a for a in (argv if argv is not None else sys.argv[1:]))
    block = yaml_block(startup, own, default_s, medians[FLOOR], command.strip(), args.repeats, args.min_diff_s, load)
    if args.write:
        args.catalog.write_text(replace_block(args.catalog.read_text(), block))
        load_catalog(args.catalog)  # what was written must load
        print(f"wrote the cpu_workers block of {args.catalog}", file=sys.stderr)
    else:
        print("\n" + block, file=sys.stderr)
    print(json.dumps({"date": date.today().isoformat(), "cores": os.cpu_count(), "load_avg_1m_before": round(load[0], 2),
                      "load_avg_1m_after": round(load[1], 2), "repeats": args.repeats,
                      "threads": args.threads, "batch": args.batch, "default_s": default_s, "overrides_s": own,
                      "noop_s": medians[FLOOR],
                      "startup_s": startup, "samples_s": {m: [round(x, 3) for x in s] for m, s in samples.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
