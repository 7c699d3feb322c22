"""The ``jigsaw`` command. Each verb is a thin shell over the library; ``main`` is the one place where a
``JigsawError`` becomes one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from jigsaw.agents.capacity import PAPER_AST_OVER_AT, PAPER_RATIOS, ablation, expected_checks
from jigsaw.agents.ilp import SolveResult, solve
from jigsaw.env.candidates import Features, SolverOptions
from jigsaw.env.plan import MIG_CONFIG_NAME
from jigsaw.env.traces import Trace, load_trace
from jigsaw.profiles import handlers
from jigsaw.profiles.catalog import Catalog, load_catalog, parse_handler
from jigsaw.profiles.errors import (
    ConfigError,
    JigsawError,
    OutputError,
    ShimError,
    SolverError,
    ensure_writable_dir,
    write_text,
)
from jigsaw.profiles.profile_plan import ProfileSettings, parse_colocation, parse_positive_ints, parse_shares
from jigsaw.profiles.profiler import run_profile
from jigsaw.profiles.progress import clock_bar, progress_bar
from jigsaw.profiles.types import HandlerSpec
from jigsaw.serving_shim.backends import BACKENDS

EXIT_INFEASIBLE = 1
EXIT_BAD_INPUT = 2
EVAL_TIME_LIMIT_S = 5.0  # per ILP solve during evaluation


def _solver_options(args: argparse.Namespace) -> SolverOptions:
    return SolverOptions(headroom=args.headroom, time_limit_s=args.time_limit, mip_gap=args.gap)


def _split(text: str, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise SolverError(f"empty {what} list", field=f"--{what}", fix="give comma-separated values")
    return items


def _rates(text: str, apps: list[str]) -> list[float]:
    try:
        rates = [float(x) for x in _split(text, "rps")]
    except ValueError:
        raise SolverError(f"'{text}' is not a list of numbers", field="--rps", fix="e.g. --rps 200,50") from None
    if len(rates) == 1:
        rates *= len(apps)
    if len(rates) != len(apps):
        raise SolverError(f"{len(rates)} rates for {len(apps)} apps", field="--rps",
                          fix="give one rate, or one per app in --app order")
    return rates


def solve_document(result: SolveResult, catalog: Catalog) -> dict[str, Any]:
    doc: dict[str, Any] = {"status": result.status, "reason": result.reason, "slices_used": result.slices_used,
                           "gpus_used": result.gpus_used, "solve_seconds": round(result.solve_seconds, 3), "apps": {},
                           "gpus": []}
    for c in result.choices:
        app = doc["apps"].setdefault(c.app, {"tasks": {}, "paths": {}})
        app["tasks"][c.task] = {"variant": c.variant, "segment": c.segment.mig_profile.name,
                                "mps_workers": c.segment.mps_workers, "batch": c.batch, "replicas": c.replicas,
                                "budget_ms": round(c.budget_ms, 3), "p95_ms": round(c.p95_ms, 3),
                                "demand_rps": round(c.demand_rps, 3), "profile": c.kind}
    for name, paths in result.path_latency_ms.items():
        doc["apps"][name]["paths"] = {p: {"latency_ms": round(v, 3), "accuracy": round(result.path_accuracy[name][p], 5)}
                                      for p, v in paths.items()}
    if result.plan is not None:
        doc["gpus"] = [{"partition": list(g.partition), "workers": [list(w) for w in g.workers]}
                       for g in result.plan.gpus]
        doc["plan"] = result.plan.to_dict()  # what `jigsaw daemon --plan` reads
    return doc


def _print_solve(result: SolveResult, catalog: Catalog, gpus: int, gpu_type: str) -> None:
    print(f"status: {result.status} ({result.reason})  solve {result.solve_seconds:.2f} s")
    if result.plan is None:
        return
    total = gpus * catalog.gpus[gpu_type].compute_slices
    print(f"slices used: {result.slices_used} of {total} ({gpus} x {gpu_type}); GPUs used: {result.gpus_used}")
    header = f"  {'task':16} {'variant':34} {'segment':8} {'mps':>3} {'batch':>5} {'repl':>4} {'budget ms':>9} " \
             f"{'p95 ms':>7} {'items/s':>8}  profile"
    for name in result.path_latency_ms:
        app = catalog.apps[name]
        print(f"\n{name}: latency SLO {app.latency_slo_ms:g} ms (p95), accuracy SLO {app.accuracy_slo:g}")
        print(header)
        for c in (c for c in result.choices if c.app == name):
            print(f"  {c.task:16} {c.variant:34} {c.segment.mig_profile.name:8} {c.segment.mps_workers:>3} "
                  f"{c.batch:>5} {c.replicas:>4} {c.budget_ms:>9.1f} {c.p95_ms:>7.2f} {c.demand_rps:>8.1f}  {c.kind}")
        for p, v in result.path_latency_ms[name].items():
            print(f"  path {p}: 2xp95 sum {v:.1f} ms, accuracy {result.path_accuracy[name][p]:.4f}")
    print("\nMIG layout ([workers] per instance, - = idle):")
    for i, g in enumerate(result.plan.gpus):
        cells = [f"{p}[{','.join(w) if w else '-'}]" for p, w in zip(g.partition, g.workers, strict=True)]
        print(f"  GPU {i}: " + "  ".join(cells))


def cmd_solve(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    apps = _split(args.app, "app")
    demand = dict(zip(apps, _rates(args.rps, apps), strict=True))
    mig_config = Path(args.mig_config) if args.mig_config else None
    if mig_config is not None:
        ensure_writable_dir(mig_config.parent, "--mig-config")  # fail before the solve, not after it
    features, opts = Features.parse(args.features), _solver_options(args)
    with clock_bar(f"solving (at most {opts.time_limit_s:g} s)", opts.time_limit_s):
        result = solve(catalog, args.gpu_type, demand, args.gpus, features, opts)
    if mig_config is not None and result.plan is not None:
        write_text(mig_config, yaml.safe_dump(result.plan.mig_parted_config(args.gpus), sort_keys=False), "--mig-config")
        _wrote(f"{mig_config} (apply: nvidia-mig-parted apply -f {mig_config} -c {MIG_CONFIG_NAME})")
    if args.json:
        print(json.dumps(solve_document(result, catalog), indent=1))
    else:
        _print_solve(result, catalog, args.gpus, args.gpu_type)
    return 0 if result.plan is not None else EXIT_INFEASIBLE


def cmd_capacity(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    gpu = catalog.gpu(args.gpu_type)
    apps = _split(args.app, "app") if args.app else catalog.apps_for(gpu.name)
    for a in apps:
        catalog.app(a)
    with progress_bar(desc="feasibility checks", unit="MILP", total=expected_checks(args.tolerance)) as bar:
        results = ablation(catalog, gpu.name, apps, args.gpus, _solver_options(args), args.tolerance, bar.update)
        bar.total = bar.n  # the total was an estimate: the bar ends full
    base = results["none"].max_rps
    ratio = {n: (r.max_rps / base if base > 0 else None) for n, r in results.items()}  # None: nothing fits S off
    at = results["A+T"].max_rps
    ast_over_at = results["A+S+T"].max_rps / at if at > 0 else None
    if args.json:
        doc = {"gpus": args.gpus, "gpu_type": gpu.name, "apps": apps, "ast_over_at": ast_over_at,
               "paper": {"ratio_to_none": PAPER_RATIOS, "ast_over_at": PAPER_AST_OVER_AT},
               "feature_sets": {n: {"max_rps": round(r.max_rps, 3), "ratio_to_none": ratio[n], "checks": r.checks,
                                    "undecided_checks": r.undecided, "configs": r.configs,
                                    "whole_gpu_configs": r.whole_gpu_configs, "reason": r.reason}
                                for n, r in results.items()}}
        print(json.dumps(doc, indent=1))
        return 0
    print(f"maximum serviceable demand on {args.gpus} x {gpu.name} ({args.gpus * gpu.compute_slices} slices), "
          f"apps {', '.join(apps)} at equal rates; bisection to {args.tolerance:.0%}")
    print(f"{'features':8} {'max req/s':>11} {'x none':>8} {'paper':>6}  configurations used (whole-GPU)")
    for n, r in results.items():
        kinds = ", ".join(f"{v} {k}" for k, v in r.configs.items())
        note = f"  [{r.undecided} checks hit the time limit: a lower bound]" if r.undecided else ""
        note += f"  [{r.reason}]" if r.reason else ""
        shown = f"{ratio[n]:>8.2f}" if ratio[n] is not None else f"{'-':>8}"
        print(f"{n:8} {r.max_rps:>11.1f} {shown} {PAPER_RATIOS[n]:>6.2f}  {kinds} ({r.whole_gpu_configs}){note}")
    shown = f"{ast_over_at:.2f}x" if ast_over_at is not None else "- (A+T serves nothing)"
    print(f"A+S+T over A+T: {shown} (paper {PAPER_AST_OVER_AT}x)")
    print("ours come from this catalog's profiles, batching included; the paper's from its analytical model: they "
          "differ by construction (README: capacity)")
    return 0


def plot_trace(trace: Trace, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    for j, app in enumerate(trace.apps):
        ax.step(trace.times_s, trace.rates_rps[:, j], where="post", label=app)
    train, _ = trace.split()
    ax.axvline(train.end_s, color="grey", linestyle="--", label="held-out from here")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("rate (req/s)")
    ax.set_title(trace.source)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    except (OSError, ValueError) as e:  # ValueError: a suffix matplotlib cannot write
        raise OutputError(f"cannot write the plot ({e})", file=path, field="--plot",
                          fix="give a .png path in an existing, writable directory") from None
    finally:
        plt.close(fig)


def cmd_trace_show(args: argparse.Namespace) -> int:
    if args.plot:  # say so before the work, not after it
        plot = Path(args.plot)
        if plot.suffix.lower() not in (".png", ".svg", ".pdf") or plot.is_dir():
            raise OutputError("not a .png, .svg or .pdf file name", file=args.plot, field="--plot",
                              fix="e.g. --plot rates.png")
        if not plot.parent.is_dir():
            raise OutputError("no such directory", file=str(plot.parent), field="--plot",
                              fix="create it, or give a path in an existing directory")
    trace = load_trace(args.file, time_scale=args.time_scale, rate_scale=args.rate_scale)
    train, held_out = trace.split()
    print(f"{trace.source}: {len(trace.times_s)} bins of {trace.bin_s:g} s = {trace.duration_s:g} s; "
          f"train {train.duration_s:g} s, held out {held_out.duration_s:g} s (last quarter)")
    print(f"  {'app':20} {'mean req/s':>11} {'p95 req/s':>10} {'peak req/s':>11} {'peak/mean':>9}")
    for j, app in enumerate(trace.apps):
        rates = trace.rates_rps[:, j]
        mean = rates.mean()
        ratio = f"{rates.max() / mean:9.2f}" if mean > 0 else f"{'-':>9}"
        print(f"  {app:20} {mean:11.2f} {np.percentile(rates, 95):10.2f} {rates.max():11.2f} {ratio}")
    if args.plot:
        plot_trace(trace, args.plot)
        _wrote(args.plot)
    return 0


def _handler_spec(args: argparse.Namespace) -> HandlerSpec | None:
    """``--handler``/``--handler-options``/``--weights`` as a spec, checked as a catalog's are; None without."""
    if args.handler is None:
        return None
    try:
        options = json.loads(args.handler_options)
    except ValueError as e:
        raise ConfigError(f"--handler-options is not JSON ({e})", field="--handler-options",
                          fix='a JSON object, e.g. {"threshold": 0.5}') from None
    doc = {"factory": args.handler, "options": options, **({"weights": args.weights} if args.weights else {})}
    spec = parse_handler(doc, Path("command line"), "--handler")  # weights: from the current folder
    handlers.importable(spec)  # refused here, in one line, not in every worker
    return spec


def cmd_profile(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    settings = ProfileSettings(args.family, tuple(_split(args.variants, "variants")),
                               parse_positive_ints(args.batches, "--batches", "1,2,4,8"), parse_shares(args.sm_shares),
                               Path(args.out), parse_colocation(args.colocation), args.device, args.min_iters,
                               args.time_per_config, _handler_spec(args))
    s = run_profile(settings, catalog, args.gpu_type)
    print(f"{s.device_type} ({s.device_name}): measured {s.measured}, skipped {s.skipped}, "
          f"{s.already} already in {s.out}")
    if s.noisy:
        print(f"warning: {len(s.noisy)} configuration(s) measured noisy ({s.noisy[0]}{', ...' if len(s.noisy) > 1 else ''}"
              f"): something else ran on the device; measure on an idle one (delete those rows to re-measure)",
              file=sys.stderr)
    for c in s.colocation:
        print(f"  co-location {c['segment']} x{c['workers']} ({c['worker_units']} per worker): "
              f"p50 x{c['median_p50_factor']:.2f}, items/s per worker / {c['median_slowdown']:.2f} "
              "against one worker alone (medians)")
    _wrote(", ".join(map(str, s.files)))
    return 0


def cmd_daemon(args: argparse.Namespace) -> int:
    import os

    from jigsaw.serving_shim.daemon import DaemonConfig, serve
    from jigsaw.serving_shim.http import AUTH_TOKEN_ENV

    token = args.auth_token if args.auth_token is not None else os.environ.get(AUTH_TOKEN_ENV) or None
    return serve(DaemonConfig(
        backend=args.backend, apps=tuple(_split(args.app, "app")), run_dir=Path(args.run_dir), host=args.host,
        port=args.port, interval_s=args.interval, min_rps=args.min_rps, catalog=args.catalog, gpu_type=args.gpu_type,
        gpus=args.gpus, policy=args.policy, plan_file=args.plan, max_workers=args.max_workers, model=args.model,
        ray_address=args.ray_address,
        solver=SolverOptions(headroom=args.headroom, time_limit_s=args.time_limit),
        max_connections=args.max_connections, auth_token=token, insecure=args.insecure, advisory=args.advisory))


def cmd_loadgen(args: argparse.Namespace) -> int:
    import asyncio

    from jigsaw.serving_shim.http import Client
    from jigsaw.serving_shim.loadgen import replay, request_bodies, trace_arrivals

    Client(args.url)  # a malformed URL is refused before anything else is said
    trace = load_trace(args.trace, time_scale=args.time_scale, rate_scale=args.rate_scale)
    times, apps = trace_arrivals(trace, args.duration, args.seed)
    bodies = request_bodies(load_catalog(args.catalog), trace.apps, Path(args.images) if args.images else None)
    span_s = float(times[-1]) if len(times) else 0.0
    with ExitStack() as bar:
        def started(n: int) -> None:  # once the daemon answers: a URL where none does stays one line
            print(f"replaying {n} of the trace's {len(times)} requests over {span_s:.1f} s against {args.url}",
                  file=sys.stderr)
            bar.enter_context(clock_bar("replaying", span_s))

        s = asyncio.run(replay(args.url, times, apps, trace.apps, bodies, timeout_s=args.timeout,
                               on_start=started)).summary()
    if s["skipped"]:
        print("skipped the requests of apps the daemon does not serve: "
              + ", ".join(f"{a} ({n})" for a, n in s["skipped"].items()), file=sys.stderr)
    if args.json:
        print(json.dumps(s))
    else:
        print(f"sent {s['sent']}, answered {s['answered']} (ok {s['ok']}, violated {s['violated']}, dropped "
              f"{s['dropped']}, errors {s['errors']}), lost {s['lost']}")
        print("latency of served requests: " + ", ".join(f"{q} {s[f'{q}_ms']} ms" for q in ("p50", "p95", "p99")))
    return 0 if s["lost"] == 0 else 1


def cmd_train(args: argparse.Namespace) -> int:
    from jigsaw.agents.ppo import DEFAULT_HYPERPARAMS, TrainSettings, train

    settings = TrainSettings.from_yaml(args.hyperparams or DEFAULT_HYPERPARAMS)
    overrides = {k: v for k, v in (("n_timesteps", args.timesteps), ("n_envs", args.n_envs)) if v is not None}
    env = {**settings.env_kwargs, **({"gpus": args.gpus} if args.gpus is not None else {}),
           **({"traces": args.trace} if args.trace is not None else {})}
    settings = replace(settings, **overrides, env_kwargs=env)
    try:
        summary = train(settings, Path(args.out), catalog_path=args.catalog, seed=args.seed,
                        logdir=Path(args.logdir) if args.logdir else None,
                        resume=Path(args.resume) if args.resume else None, progress=not args.no_progress)
    except KeyboardInterrupt as e:
        print(str(e) or "training interrupted", file=sys.stderr)
        return 130
    print(json.dumps(summary))
    tensorboard = f" and TensorBoard logs in {args.logdir}/ (tensorboard --logdir {args.logdir})" if args.logdir else ""
    _wrote(f"{summary['out']} and {summary['settings']} (the policy), {summary['run_dir']}/ (SB3's model.zip and "
           f"checkpoints/){tensorboard}")
    return 0


def cmd_ray_resources(args: argparse.Namespace) -> int:
    from jigsaw.serving_shim.backends.nvidia import discover

    try:
        from jigsaw.serving_shim.backends.ray import node_resources
    except ImportError:
        raise ShimError("Ray is not installed", field="ray-resources", fix="pip install 'jigsaw[ray]'") from None
    try:
        gpus = discover("ray")
    except ShimError as e:
        raise ShimError(e.message, field="ray-resources", fix="run it on a GPU node; a node without GPUs offers "
                        "slices by hand: ray start --resources '{\"jigsaw_slices\": N}'") from None
    print(json.dumps(node_resources(gpus, load_catalog(args.catalog).gpu(args.gpu_type))))
    return 0


def cmd_export_policy(args: argparse.Namespace) -> int:
    from jigsaw.agents.ppo import export_policy

    doc = export_policy(Path(args.checkpoint), Path(args.out), Path(args.settings) if args.settings else None)
    print(json.dumps(doc))
    _wrote(f"{doc['out']} and {doc['settings']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import time

    from jigsaw.agents.baselines import POLICY_SYSTEMS, SYSTEM_NAMES, build_systems
    from jigsaw.agents.evaluate import evaluate_systems, markdown_table, summary_document, write_outputs
    from jigsaw.env.gym_env import DEFAULT_TRACES, EnvConfig

    catalog = load_catalog(args.catalog)
    policy, config = None, EnvConfig()
    gpus = EnvConfig.gpus if args.gpus is None else args.gpus  # 0 is refused by EnvConfig, not read as the default
    if args.policy:
        from jigsaw.agents.ppo import load_policy

        policy = load_policy(args.policy, catalog)
        config = policy.env_config
        policy.check_serves(tuple(_split(args.app, "app")) if args.app else config.apps, gpus,
                            config.gpu_type, args.policy)
    overrides = {k: v for k, v in (("apps", args.app), ("traces", args.trace or DEFAULT_TRACES)) if v is not None}
    config = EnvConfig.from_dict({**config.to_dict(), **overrides, "gpus": gpus, "max_gpus": None,
                                  "catalog": args.catalog, "part": "held_out", "mode": "sim"}, "command line")
    names = _split(args.systems, "systems") if args.systems else [
        n for n in SYSTEM_NAMES if policy is not None or n not in POLICY_SYSTEMS]
    logdir = Path(args.logdir or time.strftime("runs/evaluate/%Y%m%d-%H%M%S"))
    ensure_writable_dir(logdir, "--logdir")  # fail before the long part, not after it
    systems = build_systems(catalog, config, names, SolverOptions(headroom=args.headroom, time_limit_s=args.time_limit),
                            policy)
    seeds = _seeds(args.seeds)
    intro = ("no --policy: the policy systems are skipped; " if policy is None else "") + \
        f"evaluating {len(systems)} systems on the held-out part of {len(config.traces)} trace(s) x {len(seeds)} " \
        "seed(s); a first run on this machine compiles the simulator's kernels first (~1 min)"

    def stage(jobs: Iterable[Any], what: str) -> Iterable[Any]:
        nonlocal intro
        if intro:  # said when the first stage starts: the inputs are read by then, and a bad one stays one line
            print(intro, file=sys.stderr)
            intro = ""
        return progress_bar(jobs, desc=what)

    ev = evaluate_systems(catalog, config, systems, args.intervals, seeds, stage, instant_changes=args.instant_changes)
    write_outputs(ev, logdir)
    print(json.dumps(summary_document(ev)) if args.json else markdown_table(ev))
    _wrote(f"{logdir}/: evaluation.png, summary.md, summary.csv, intervals.csv and a TensorBoard run per system "
           f"(tensorboard --logdir {logdir})")
    return 0


def _wrote(files: str) -> None:
    """The last line of a command that wrote files: which (stderr, so that stdout stays its table or JSON)."""
    print(f"wrote {files}", file=sys.stderr)


def _seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in _split(text, "seeds")]
    except ValueError:
        raise ConfigError(f"seeds {text!r}", field="--seeds", fix="give whole numbers, e.g. 0,1,2") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jigsaw", description="Autoscaling for compound inference on partitioned GPUs.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def common(p: argparse.ArgumentParser, time_limit_s: float) -> None:
        p.add_argument("--catalog", default=None, help="catalog directory or file (default: the built-in one)")
        p.add_argument("--gpu-type", default="h100", help="GPU type from the catalog (default h100)")
        p.add_argument("--headroom", type=float, default=SolverOptions.headroom,
                       help="capacity provisioned per unit of demand (default %(default)s)")
        p.add_argument("--time-limit", type=float, default=time_limit_s,
                       help="hard wall-clock bound per MILP, seconds (default %(default)s)")
        p.add_argument("--gap", type=float, default=SolverOptions.mip_gap, help="relative MIP gap (default %(default)s)")
        p.add_argument("--json", action="store_true", help="print one JSON document")

    p = verbs.add_parser("solve", help="one exact plan for a demand")
    common(p, SolverOptions.time_limit_s)
    p.add_argument("--app", required=True, help="app name(s), comma-separated")
    p.add_argument("--rps", required=True, help="req/s per app, comma-separated (one value = every app)")
    p.add_argument("--gpus", type=int, required=True, help="GPUs in the cluster")
    p.add_argument("--features", default="A,S,T", help="levers: A accuracy, S spatial, T budgeting (default A,S,T)")
    p.add_argument("--mig-config", default=None, metavar="FILE",
                   help="also write the plan's MIG layout as an nvidia-mig-parted config (YAML) for the fleet's tools")
    p.set_defaults(run=cmd_solve)

    p = verbs.add_parser("capacity", help="maximum serviceable demand for all eight feature sets")
    common(p, 10.0)  # per feasibility check; a check that hits it counts as infeasible (reported)
    p.add_argument("--gpus", type=int, default=120, help="GPUs in the cluster (default 120)")
    p.add_argument("--app", default=None, help="app name(s), comma-separated (default: every app of the GPU type)")
    p.add_argument("--tolerance", type=float, default=0.01, help="relative bisection tolerance (default 0.01)")
    p.set_defaults(run=cmd_capacity)

    p = verbs.add_parser("trace", help="inspect a demand trace")
    trace_verbs = p.add_subparsers(dest="trace_verb", required=True, metavar="VERB")
    p = trace_verbs.add_parser("show", help="summary of a trace (CSV, Azure LLM or Azure Functions format)")
    p.add_argument("file", help="trace file")
    p.add_argument("--plot", metavar="PNG", help="also write a plot of the rates")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply the time axis (0.5 = twice as fast)")
    p.add_argument("--rate-scale", type=float, default=1.0, help="multiply the rates")
    p.set_defaults(run=cmd_trace_show)

    p = verbs.add_parser("train", help="train the MaskablePPO policy on JigsawServe-v0")
    p.add_argument("--out", default="runs/policy.npz", help="policy to write: NAME.npz (the actor's weights), NAME.json "
                   "(its settings) beside it, SB3's model and checkpoints in NAME_run/ (default %(default)s; the "
                   "shipped one is agents/policies/default.npz)")
    p.add_argument("--hyperparams", default=None, help="rl-zoo3-style YAML (default: agents/hyperparams/maskable_ppo.yml)")
    p.add_argument("--timesteps", type=int, default=None, help="override n_timesteps")
    p.add_argument("--n-envs", type=int, default=None, help="override n_envs (subprocesses when > 1)")
    p.add_argument("--gpus", type=int, default=None, help="override env_kwargs.gpus")
    p.add_argument("--trace", default=None, help="trace file(s), comma-separated (default: the shipped 3-app traces)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logdir", default="runs/train", help="TensorBoard log directory (default %(default)s)")
    p.add_argument("--resume", default=None, help="continue from an SB3 checkpoint .zip (NAME_run/model.zip or one in "
                   "NAME_run/checkpoints/); TRUSTED input only: loading it unpickles it, which can run code")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--catalog", default=None, help="catalog directory or file (default: the built-in one)")
    p.set_defaults(run=cmd_train)

    p = verbs.add_parser("evaluate", help="policy vs ILP vs baselines on the held-out traces (sim mode)")
    p.add_argument("--policy", default=None, help="trained policy .npz, its .json beside it (default: none; the policy "
                   "systems are skipped)")
    p.add_argument("--trace", default=None, help="trace file(s), comma-separated (default: the shipped 3-app traces, "
                   "the real Azure one included); each is evaluated on its held-out last quarter")
    p.add_argument("--app", default=None, help="app name(s), comma-separated (default: the policy's, else the 3 H100 apps)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs in the cluster (default 4; a policy must serve it)")
    p.add_argument("--intervals", type=int, default=None,
                   help="only the first N intervals of each held-out trace (default: all of it)")
    p.add_argument("--systems", default=None, help="comma-separated, of policy,policy_alone,zero_actor,random_actor,ilp,"
                   "ilp_sticky,ilp_window,static_peak,a_t,s_t,a_s,greedy (default: all; without --policy all but the "
                   "policy ones)")
    p.add_argument("--logdir", default=None, help="TensorBoard runs, plot and tables (default runs/evaluate/<time>)")
    p.add_argument("--instant-changes", action="store_true", help="make every plan change free and instant (no "
                   "start-up, repartition or room needed): the world before transitions were modelled, to compare")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the simulated arrivals and the random actor, "
                   "comma-separated: one run each, reported as mean and sd (default %(default)s)")
    p.add_argument("--time-limit", type=float, default=EVAL_TIME_LIMIT_S,
                   help="ILP wall-clock bound per decision, s (default %(default)s)")
    p.add_argument("--headroom", type=float, default=SolverOptions.headroom,
                   help="capacity provisioned per unit of demand (default %(default)s)")
    p.add_argument("--catalog", default=None, help="catalog directory or file (default: the built-in one)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=cmd_evaluate)

    p = verbs.add_parser("export-policy", help="SB3 checkpoint .zip -> deployable policy .npz + .json (TRUSTED input)",
                         description="Write the deployable policy (the actor's weights, plain data) of an SB3 "
                         "checkpoint. TRUSTED INPUT ONLY: loading the checkpoint unpickles it, which runs any code it "
                         "holds; convert only files you trust. The policy it writes loads without running anything.")
    p.add_argument("checkpoint", help="MaskablePPO .zip: NAME_run/model.zip or one in NAME_run/checkpoints/ from "
                   "`jigsaw train`, or a policy .zip of before the .npz format")
    p.add_argument("--settings", default=None, help="the policy's settings .json (default: the .json beside the "
                   "checkpoint, or NAME.json for one in NAME_run/)")
    p.add_argument("--out", required=True, help="policy .npz to write, its .json beside it")
    p.set_defaults(run=cmd_export_policy)

    p = verbs.add_parser("profile", help="measure a profile table on this GPU (or CPU)")
    p.add_argument("--family", required=True, help="task family, e.g. classification")
    p.add_argument("--variants", required=True, help="models of the family, comma-separated")
    p.add_argument("--batches", default="1,2,4,8,16,32,64", help="batch sizes (default %(default)s)")
    p.add_argument("--sm-shares", default="mig", help="'mig' (each MIG size's SM count) or percentages of the SMs "
                   "(CPU: cores), comma-separated (default mig)")
    p.add_argument("--out", required=True, help="profile CSV to write; an existing one is resumed")
    p.add_argument("--colocation", default="1", help="MPS workers per segment to measure, e.g. 1,2,4 (default 1: alone "
                   "only; co-location is opt-in, it multiplies the runs)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if visible, else cpu")
    p.add_argument("--min-iters", type=int, default=20, help="timed repetitions at least (default 20)")
    p.add_argument("--time-per-config", type=float, default=0.3, help="timing window per configuration, s (default 0.3)")
    p.add_argument("--catalog", default=None, help="catalog directory or file (default: the built-in one)")
    p.add_argument("--gpu-type", default="h100", help="GPU type whose MIG sizes 'mig' means (default h100)")
    p.add_argument("--handler", default=None, help="time this handler (module:factory) as a worker runs it, "
                   "preprocessing included, instead of the stand-in model alone")
    p.add_argument("--handler-options", default="{}", help="the handler's options as JSON (default {})")
    p.add_argument("--weights", default=None, help="a local weights file for the handler")
    p.set_defaults(run=cmd_profile)

    p = verbs.add_parser("daemon", help="serve apps: the controller loop against live traffic (Ctrl-C/SIGTERM stops)")
    p.add_argument("--backend", choices=BACKENDS, default="cpu", help="where workers run (default cpu; ray: "
                   "actors across a Ray cluster's nodes, `pip install 'jigsaw[ray]'`)")
    p.add_argument("--ray-address", default=None, help="ray backend: the cluster's HOST:PORT, or auto ($RAY_ADDRESS, "
                   "else the cluster `ray start` runs on this machine; the default)")
    p.add_argument("--app", required=True, help="app name(s), comma-separated")
    p.add_argument("--policy", default=None, help="trained policy .npz proposing plans, its .json beside it (default: "
                   "the ILP decides)")
    p.add_argument("--plan", default=None, help="plan JSON to start with, e.g. `jigsaw solve --json` output (default: "
                   "the run dir's, else the controller's)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s); beyond "
                   "loopback a token is required, or --insecure")
    p.add_argument("--auth-token", default=None, help="require 'Authorization: Bearer TOKEN' on every endpoint "
                   "(default: $JIGSAW_AUTH_TOKEN, which keeps it out of `ps`; 16+ visible ASCII characters)")
    p.add_argument("--insecure", action="store_true", help="listen beyond loopback without a token (an "
                   "authenticating proxy in front)")
    p.add_argument("--max-connections", type=int, default=None, help="open HTTP connections at most; at the cap a "
                   "new one closes the one idle longest, or waits (default: half the file limit, at most 1024)")
    p.add_argument("--port", type=int, default=8080, help="port (default %(default)s; 0 = any free port)")
    p.add_argument("--run-dir", default="jigsaw-run", help="plan, logs, sockets, TensorBoard (default ./%(default)s)")
    p.add_argument("--interval", type=float, default=30.0, help="control interval, seconds (default %(default)s)")
    p.add_argument("--min-rps", type=float, default=1.0, help="demand floor per app, req/s (default %(default)s)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs the controller plans for (default %(default)s)")
    p.add_argument("--max-workers", type=int, default=None, help="cpu backend: cap on worker processes "
                   "(default: the core count, at least 2)")
    p.add_argument("--model", default=None, help="cpu and ray backends: run this stand-in in every worker (e.g. noop)")
    p.add_argument("--advisory", action="store_true",
                   help="serve the starting plan (--plan, or the first decision) and only report what the controller "
                        "would change, in /status, /metrics and TensorBoard: how to trust it before it acts")
    p.add_argument("--catalog", default=None, help="catalog directory or file (default: the built-in one)")
    p.add_argument("--gpu-type", default="h100", help="GPU type from the catalog (default h100)")
    p.add_argument("--headroom", type=float, default=SolverOptions.headroom,
                   help="capacity provisioned per unit of demand (default %(default)s)")
    p.add_argument("--time-limit", type=float, default=10.0, help="ILP wall-clock bound per decision, s (default 10)")
    p.set_defaults(run=cmd_daemon)

    p = verbs.add_parser("ray-resources", help="this GPU node's resources for the ray backend, as JSON for "
                         "`ray start --resources` (its compute slices, and each MIG instance)")
    p.add_argument("--catalog", default=None, help="catalog directory or file (default: the built-in one)")
    p.add_argument("--gpu-type", default="h100", help="GPU type from the catalog (default h100)")
    p.set_defaults(run=cmd_ray_resources)

    p = verbs.add_parser("loadgen", help="replay a trace open-loop against a running daemon")
    p.add_argument("--trace", required=True, help="trace file (CSV time_s,app,rps; Azure formats)")
    p.add_argument("--url", required=True, help="the daemon, e.g. http://127.0.0.1:8080")
    p.add_argument("--duration", type=float, default=None, help="replay the first S seconds (default: all)")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply the time axis (0.5 = twice as fast)")
    p.add_argument("--rate-scale", type=float, default=1.0, help="multiply the rates")
    p.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals (default 0)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds before an unanswered request is lost")
    p.add_argument("--images", default=None,
                   help="folder of PNG/JPEG files to send to the image apps (default: 16 generated images)")
    p.add_argument("--catalog", default=None, help="catalog directory or file (default: the built-in one)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(run=cmd_loadgen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except JigsawError as e:
        print(f"jigsaw: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # the reader (e.g. `| head`) left; nothing to report
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("jigsaw: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
