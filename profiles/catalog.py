"""The catalog: GPU types, published model quality, app specs and profile tables, loaded and validated.

``load_catalog(path)`` takes a directory holding ``catalog.yaml`` or the YAML/JSON file itself; every
path inside is relative to that file. Everything is checked at load, so later code can trust it.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import documents
from .errors import CatalogError
from .mig import enumerate_partitions
from .tables import ColocationModel, ProfileRow, ProfileTable, RowKey, build_table, load_profile_csv
from .types import App, GpuType, HandlerSpec, MigProfile, Task, Transitions, Variant

DEFAULT_CATALOG = Path(__file__).parent / "data"
MAX_SLOTS = 16  # compute or memory slices of a GPU type
MAX_MPS_WORKERS = 48  # clients one MPS server takes (Volta and later)
MAX_FANOUT = 1000.0  # items an edge passes on per item (a detector's objects per frame)
_JOINT_SEARCH_LIMIT = 100_000  # variant combinations checked jointly per app
LATENCY_ALLOWANCE = 2.0  # a task's latency budget must cover 2 x its p95 (the paper's queueing allowance)
MAX_TRANSITION_S = 86_400.0  # a start-up or repartition time over a day is a unit slip (ms for s), not a figure
CPU_DEVICE = "cpu"  # Catalog.transitions key of the top-level cpu_workers block (the cpu backend's workers)


def read_document(path: Path) -> Any:
    """A YAML or JSON file of the catalog (by suffix), as plain data."""
    return documents.read_document(path, CatalogError, "catalog file")


def field_of(doc: Any, key: str, kind: type | tuple[type, ...], file: Path, where: str = "") -> Any:
    """``doc[key]``, checked to exist and to be of ``kind``."""
    name = f"{where}.{key}" if where else key
    if not isinstance(doc, dict) or key not in doc:
        raise CatalogError("missing field", file=str(file), field=name, fix=f"add '{key}'")
    value = doc[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise CatalogError(f"expected {' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__}",
                           file=str(file), field=name, fix="correct its type")
    return value


def positive(value: Any, file: Path, name: str, high: float = math.inf) -> float:
    """A finite number > 0 and <= ``high`` (YAML may hand us a string, a list or null: say so instead of crashing)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CatalogError(f"expected a number, got {value!r}", file=str(file), field=name, fix="give a number > 0")
    if not (math.isfinite(value) and 0 < value <= high):
        raise CatalogError(f"{value} is out of range", file=str(file), field=name,
                           fix="give a positive number" + (f" <= {high:g}" if high < math.inf else ""))
    return float(value)


@dataclass
class Catalog:
    root: Path
    gpus: dict[str, GpuType]
    apps: dict[str, App]
    rows: dict[str, dict[RowKey, ProfileRow]]
    colocation: dict[str, ColocationModel]
    cuda_context_mib: dict[str, float]
    transitions: dict[str, Transitions]  # GPU type name, or CPU_DEVICE -> how long plan changes take there
    _tables: dict[tuple[str, str, str], ProfileTable] = field(default_factory=dict, repr=False)

    def table(self, gpu: str, app: str, task: str) -> ProfileTable:
        key = (gpu, app, task)
        if key not in self._tables:
            self._tables[key] = build_table(self.gpus[gpu], self.apps[app].task(task), self.rows[gpu],
                                            self.colocation[gpu], self.cuda_context_mib[gpu])
        return self._tables[key]

    def gpu(self, name: str) -> GpuType:
        if name not in self.gpus:
            raise CatalogError(f"unknown GPU type '{name}'", file=str(self.root), field="gpus",
                               fix=f"use one of {', '.join(self.gpus)}")
        return self.gpus[name]

    def transitions_for(self, device: str) -> Transitions:
        """Start-up and repartition times on ``device``: a GPU type name, or ``"cpu"`` for the cpu backend."""
        if device not in self.transitions:
            raise CatalogError(f"unknown device '{device}'", file=str(self.root), field="transitions",
                               fix=f"use one of {', '.join(self.transitions)}")
        return self.transitions[device]

    def app(self, name: str) -> App:
        if name not in self.apps:
            raise CatalogError(f"unknown app '{name}'", file=str(self.root), field="apps",
                               fix=f"use one of {', '.join(self.apps)}")
        return self.apps[name]

    def serves(self, gpu: str, app: str) -> bool:
        """Whether every task of ``app`` has at least one usable configuration on ``gpu``."""
        return all(self.table(gpu, app, t).usable.any() for t in self.apps[app].task_names)

    def apps_for(self, gpu: str) -> list[str]:
        return [a for a in self.apps if self.serves(gpu, a)]


def seconds(value: Any, file: Path, name: str, high: float = MAX_TRANSITION_S) -> float:
    """A duration: a finite number of seconds in 0..``high`` (not a bool, a string or null)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CatalogError(f"expected a number of seconds, got {value!r:.40}", file=str(file), field=name,
                           fix=f"give seconds in 0..{high:g}")
    if not (math.isfinite(value) and 0 <= value <= high):
        raise CatalogError(f"{value} s is out of range", file=str(file), field=name, fix=f"give seconds in 0..{high:g}")
    return float(value)


def _load_transitions(doc: Any, key: str, file: Path, where: str = "", *, gpu: bool) -> Transitions:
    """``doc[key]``: ``source``, ``startup_s`` ({``default``: s, variant: s, ...}) and, on a GPU, ``repartition_s``.
    Per-variant keys are checked against the apps later, in ``load_catalog``."""
    where_block = f"{where}.{key}" if where else key
    if isinstance(doc, dict) and key not in doc:  # catalogs written before start-up times were required
        raise CatalogError("missing field", file=str(file), field=where_block,
                           fix=f"add '{key}:' with source, {'repartition_s, ' if gpu else ''}startup_s: {{default: "
                           "seconds}} (see profiles/data/catalog.yaml)")
    block = field_of(doc, key, dict, file, where)
    where = where_block
    allowed = ("source", "repartition_s", "startup_s") if gpu else ("source", "startup_s")
    for k in block:
        if k not in allowed:
            raise CatalogError(f"unknown field '{k}'", file=str(file), field=f"{where}.{k}",
                               fix=f"remove it (fields: {', '.join(allowed)})" + (
                                   "; the cpu backend has no MIG geometry" if k == "repartition_s" else ""))
    source = field_of(block, "source", str, file, where).strip()
    if not source:
        raise CatalogError("empty provenance", file=str(file), field=f"{where}.source",
                           fix="say where the figures come from: measured (where, when, how) or estimated (why)")
    repartition = seconds(field_of(block, "repartition_s", (int, float), file, where), file,
                          f"{where}.repartition_s") if gpu else 0.0
    startup = field_of(block, "startup_s", dict, file, where)
    if "default" not in startup:
        raise CatalogError("missing field", file=str(file), field=f"{where}.startup_s.default",
                           fix="add 'default' (seconds for every variant not listed)")
    per_variant: dict[str, float] = {}
    for variant, value in startup.items():
        if not isinstance(variant, str):
            raise CatalogError(f"variant names must be text, got {variant!r:.40}", file=str(file),
                               field=f"{where}.startup_s", fix="quote the name")
        if variant != "default":
            per_variant[variant] = seconds(value, file, f"{where}.startup_s.{variant}")
    return Transitions(repartition, per_variant, seconds(startup["default"], file, f"{where}.startup_s.default"),
                       source)


def _check_transition_variants(transitions: dict[str, Transitions], apps: dict[str, App], file: Path) -> None:
    """Every per-variant start-up time names a variant of some app (a typo would silently get the default)."""
    known = sorted({v.name for app in apps.values() for t in app.tasks for v in t.variants})
    for device, tr in transitions.items():
        where = "cpu_workers" if device == CPU_DEVICE else f"gpus.{device}.transitions"
        for variant in tr.startup_s:
            if variant not in known:
                close = difflib.get_close_matches(variant, known, n=1)
                raise CatalogError(f"no app has a variant '{variant}'", file=str(file),
                                   field=f"{where}.startup_s.{variant}",
                                   fix=(f"did you mean '{close[0]}'? " if close else "") +
                                   "name a variant of the catalog's apps, or remove the line")


def _load_gpu(name: str, doc: Any, file: Path) -> tuple[GpuType, Path, ColocationModel, float, Transitions]:
    where = f"gpus.{name}"
    if name == CPU_DEVICE:
        raise CatalogError(f"a GPU type may not be called '{CPU_DEVICE}'", file=str(file), field=where,
                           fix="rename it: 'cpu' names the cpu_workers figures of the cpu backend")
    compute = int(field_of(doc, "compute_slices", int, file, where))
    slots = int(field_of(doc, "memory_slots", int, file, where))
    for key, value in (("compute_slices", compute), ("memory_slots", slots)):
        if not 1 <= value <= MAX_SLOTS:  # the partitions are enumerated: their number grows exponentially
            raise CatalogError(f"{value} is out of range", file=str(file), field=f"{where}.{key}",
                               fix=f"give 1..{MAX_SLOTS} (MIG GPUs have 7 compute and 8 memory slices)")
    profiles = []
    for i, p in enumerate(field_of(doc, "mig_profiles", list, file, where)):
        w = f"{where}.mig_profiles[{i}]"
        starts = tuple(field_of(p, "starts", list, file, w))
        profile = MigProfile(field_of(p, "name", str, file, w), field_of(p, "compute_slices", int, file, w),
                             field_of(p, "sms", int, file, w),
                             positive(field_of(p, "memory_gib", (int, float), file, w), file, f"{w}.memory_gib"),
                             field_of(p, "width", int, file, w), starts)
        if not (1 <= profile.compute_slices <= compute and 1 <= profile.width <= slots and profile.sms >= 1):
            raise CatalogError(f"compute_slices {profile.compute_slices}, width {profile.width}, sms {profile.sms}",
                               file=str(file), field=w, fix=f"compute_slices in 1..{compute}, width in 1..{slots}, "
                               "sms >= 1")
        if not all(isinstance(s, int) and s >= 0 and s + profile.width <= slots for s in starts):
            raise CatalogError(f"a start slot lies outside the {slots} memory slots", file=str(file),
                               field=f"{w}.starts", fix=f"starts must be in 0..{slots - profile.width}")
        profiles.append(profile)
    if not any(p.compute_slices == compute for p in profiles):
        raise CatalogError("no MIG profile spans the whole GPU", file=str(file), field=f"{where}.mig_profiles",
                           fix=f"add the {compute}g profile (the only segment when S is off)")
    workers = tuple(field_of(doc, "mps_workers", list, file, where))
    if 1 not in workers or not all(isinstance(m, int) and 1 <= m <= MAX_MPS_WORKERS for m in workers):
        raise CatalogError(f"must be whole numbers in 1..{MAX_MPS_WORKERS} and include 1", file=str(file),
                           field=f"{where}.mps_workers", fix="e.g. [1, 2, 4]")
    coloc = field_of(doc, "colocation", dict, file, where)
    measured = bool(field_of(coloc, "measured", bool, file, f"{where}.colocation"))
    slowdown = 1.0 if measured else positive(
        field_of(coloc, "slowdown_at_4_workers", (int, float), file, f"{where}.colocation"), file,
        f"{where}.colocation.slowdown_at_4_workers")
    gpu = GpuType(name, str(doc.get("device_name", name)), compute, slots, tuple(profiles), workers,
                  enumerate_partitions(profiles, compute, slots))
    table = file.parent / field_of(doc, "profiles", str, file, where)
    context = float(doc.get("cuda_context_mib", 0))
    transitions = _load_transitions(doc, "transitions", file, where, gpu=True)
    return gpu, table, ColocationModel(measured, slowdown), context, transitions


def _load_metrics(path: Path) -> dict[str, float]:
    """Published quality per model (``model,metric_value``; blank = not published)."""
    try:
        reader = csv.DictReader(io.StringIO(documents.read_text(path, CatalogError, "model metrics CSV"), newline=""))
        if not {"model", "metric_value"} <= set(reader.fieldnames or []):
            raise KeyError("model/metric_value columns")
        return {r["model"]: float(r["metric_value"]) for r in reader if r.get("metric_value")}
    except (KeyError, ValueError) as e:
        raise CatalogError(f"cannot read model metrics ({e})", file=str(path), field="model,metric_value",
                           fix="a CSV with columns model and metric_value") from None


def load_app(path: Path, metrics: dict[str, float]) -> App:
    """One app spec (YAML or JSON): tasks with their variant ladders, edges with fan-outs, SLOs."""
    doc = read_document(path)
    name = field_of(doc, "name", str, path)
    latency = positive(field_of(doc, "latency_slo_ms", (int, float), path), path, "latency_slo_ms")
    accuracy = field_of(doc, "accuracy_slo", (int, float), path)
    if not 0 < accuracy <= 1:
        raise CatalogError(f"{accuracy} is not in (0, 1]", file=str(path), field="accuracy_slo",
                           fix="a fraction of the best variants' accuracy, e.g. 0.9")
    tasks = []
    for tname, tdoc in field_of(doc, "tasks", dict, path).items():
        where = f"tasks.{tname}"
        if not isinstance(tname, str):
            raise CatalogError("task names must be text", file=str(path), field=where, fix="quote the name")
        family = field_of(tdoc, "family", str, path, where)
        given = field_of(tdoc, "variants", (list, dict), path, where)
        if not given:
            raise CatalogError("no variants", file=str(path), field=f"{where}.variants", fix="list at least one model")
        if isinstance(given, dict):  # {model: published metric}
            raw = {v: positive(m, path, f"{where}.variants.{v}") for v, m in given.items()}
        elif not all(isinstance(v, str) for v in given):
            raise CatalogError("variants must be model names", file=str(path), field=f"{where}.variants",
                               fix="a list of names, or {name: published metric}")
        elif len(given) == 1:
            raw = {given[0]: 1.0}
        else:
            unknown = [v for v in given if v not in metrics]
            if unknown:
                raise CatalogError(f"no published metric for variant(s) {', '.join(map(str, unknown))}",
                                   file=str(path), field=f"{where}.variants",
                                   fix="use models listed in the catalog's models file, or give {model: metric}")
            raw = {v: metrics[v] for v in given}
        best = max(raw.values())
        ladder = sorted(raw, key=lambda v: raw[v])
        handlers = _handlers(tdoc, ladder, path, where)
        tasks.append(Task(tname, family, tuple(Variant(tname, v, raw[v] / best, handlers[v]) for v in ladder)))
    names = {t.name for t in tasks}
    edges: dict[tuple[str, str], float | dict[str, float]] = {}
    labels: dict[tuple[str, str], tuple[str, ...]] = {}
    for i, e in enumerate(doc.get("edges") or []):
        where = f"edges[{i}]"
        u, v = field_of(e, "from", str, path, where), field_of(e, "to", str, path, where)
        for end, t in (("from", u), ("to", v)):
            if t not in names:
                raise CatalogError(f"unknown task '{t}'", file=str(path), field=f"{where}.{end}",
                                   fix=f"use one of {', '.join(sorted(names))}")
        f = field_of(e, "fanout", (int, float, dict), path, where)
        if isinstance(f, dict):
            ladder = {x.name for x in next(t for t in tasks if t.name == u).variants}
            if set(f) != ladder:
                raise CatalogError(f"per-variant fan-out must name exactly the variants of '{u}'", file=str(path),
                                   field=f"{where}.fanout", fix=f"give a factor for each of {', '.join(sorted(ladder))}")
            f = {k: positive(x, path, f"{where}.fanout.{k}", MAX_FANOUT) for k, x in f.items()}
        else:
            f = positive(f, path, f"{where}.fanout", MAX_FANOUT)
        edges[(u, v)] = f
        if "labels" in e:
            given = field_of(e, "labels", list, path, where)
            if not given or not all(isinstance(x, str) and x for x in given):
                raise CatalogError("labels must be a list of names", file=str(path), field=f"{where}.labels",
                                   fix="e.g. [car]: the labels of the parent's outputs this task takes")
            labels[(u, v)] = tuple(given)
    app = App(name, tuple(tasks), edges, latency, float(accuracy), str(path), labels)
    if len(app.topological_order) != len(tasks):
        cyclic = sorted(names - set(app.topological_order))
        raise CatalogError(f"the task graph has a cycle through {', '.join(cyclic)}", file=str(path),
                           field="edges", fix="remove an edge so that requests flow one way")
    for (u, v), f in edges.items():
        feeding = _ancestors(app, u) | {u}
        if isinstance(f, dict) and any(isinstance(g, dict) and b in feeding for (_, b), g in edges.items()):
            raise CatalogError(f"per-variant fan-out on {u}->{v}, but the demand reaching '{u}' already depends on "
                               "a variant", file=str(path), field="edges",
                               fix="only tasks whose demand is fixed may have per-variant fan-outs")
    return app


def with_fanout_ratios(catalog: Catalog, ratios: Mapping[tuple[str, str, str], float]) -> Catalog:
    """``catalog`` with the fan-out of each edge ``(app, u, v)`` in ``ratios`` multiplied by its ratio (every
    variant's alike: a measured fan-out corrects the catalog's figure, the ladder's proportions stay)."""
    apps = dict(catalog.apps)
    for (name, u, v), ratio in ratios.items():
        app = apps[name]
        f = app.edges[(u, v)]
        scaled = ({k: min(MAX_FANOUT, x * ratio) for k, x in f.items()} if isinstance(f, dict)
                  else min(MAX_FANOUT, f * ratio))
        apps[name] = dataclasses.replace(app, edges={**app.edges, (u, v): scaled})
    return dataclasses.replace(catalog, apps=apps, _tables=catalog._tables)  # the tables do not depend on edges


def _handlers(tdoc: dict[str, Any], ladder: list[str], path: Path, where: str) -> dict[str, HandlerSpec]:
    """Per variant its handler: the task's ``handler`` (default the built-in one), or its own in ``handlers``."""
    default = parse_handler(tdoc["handler"], path, f"{where}.handler") if "handler" in tdoc else HandlerSpec()
    own = field_of(tdoc, "handlers", dict, path, where) if "handlers" in tdoc else {}
    unknown = sorted(set(own) - set(ladder))
    if unknown:
        raise CatalogError(f"handlers for unknown variant(s) {', '.join(map(str, unknown))}", file=str(path),
                           field=f"{where}.handlers", fix=f"name variants of the task: {', '.join(ladder)}")
    return {v: parse_handler(own[v], path, f"{where}.handlers.{v}") if v in own else default for v in ladder}


def parse_handler(doc: Any, path: Path, where: str) -> HandlerSpec:
    """``module:factory``, or ``{factory: module:factory, weights: file, options: {...}}`` (factory defaults to
    the built-in one); a relative weights file is taken from the app file's folder and must exist."""
    spec = {"factory": doc} if isinstance(doc, str) else doc
    if not isinstance(spec, dict) or set(spec) - {"factory", "weights", "options"}:
        raise CatalogError("a handler is 'module:factory' or a mapping of factory, weights and options",
                           file=str(path), field=where, fix="e.g. handler: mypkg.models:make_detector")
    factory = spec.get("factory", HandlerSpec.factory)
    module, _, name = factory.partition(":") if isinstance(factory, str) else ("", "", "")
    if not all(part.isidentifier() for part in (*module.split("."), *name.split("."))):
        raise CatalogError(f"{factory!r} is not module:factory", file=str(path), field=f"{where}.factory",
                           fix="a module path, a colon and a callable's name, e.g. mypkg.models:make_detector")
    weights = spec.get("weights")
    if weights is not None:
        if not isinstance(weights, str):
            raise CatalogError("weights must be a file name", file=str(path), field=f"{where}.weights",
                               fix="a local file, relative to this app file's folder or absolute")
        weights = str((path.parent / weights).resolve())
        if not Path(weights).is_file():
            raise CatalogError(f"no weights file {weights}", file=str(path), field=f"{where}.weights",
                               fix="give a local file (nothing is downloaded)")
    options = spec.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise CatalogError("options must be a mapping of names to values", file=str(path), field=f"{where}.options",
                           fix="e.g. options: {threshold: 0.5}")
    return HandlerSpec(factory, weights, options)


def _ancestors(app: App, task: str) -> set[str]:
    """Every task with a path to ``task``."""
    found: set[str] = set()
    frontier = [task]
    while frontier:
        t = frontier.pop()
        for u, v in app.edges:
            if v == t and u not in found:
                found.add(u)
                frontier.append(u)
    return found


def check_slos(catalog: Catalog, app: App) -> None:
    """Refuse an app whose SLOs no configuration can meet on any GPU type that profiles it."""
    gpus = [g for g in catalog.gpus if catalog.serves(g, app.name)]
    if not gpus:
        raise CatalogError("no GPU type in the catalog profiles every task of this app", file=app.source_file,
                           field="tasks", fix="use variants whose family and model appear in a profile table")
    index = {t.name: i for i, t in enumerate(app.tasks)}
    paths = [[index[t] for t in p] for p in app.paths()]
    # Search variant choices for the whole app jointly when that is small enough; otherwise path by path,
    # a necessary condition (it never rejects an app some choice could serve).
    joint = math.prod(len(t.variants) for t in app.tasks) <= _JOINT_SEARCH_LIMIT
    scopes = [paths] if joint else [[p] for p in paths]
    best_latency, best_accuracy = 0.0, 1.0
    for scope in scopes:
        tasks = sorted({i for p in scope for i in p})
        scope_latency, scope_accuracy = math.inf, 0.0
        for gpu in gpus:
            fastest = {i: LATENCY_ALLOWANCE * np.where(table.usable, table.p95_ms, np.inf).min(axis=(1, 2))
                       for i in tasks for table in [catalog.table(gpu, app.name, app.tasks[i].name)]}
            for picks in itertools.product(*(range(len(app.tasks[i].variants)) for i in tasks)):
                choice = dict(zip(tasks, picks, strict=True))
                acc = min(math.prod(app.tasks[i].variants[choice[i]].accuracy for i in p) for p in scope)
                scope_accuracy = max(scope_accuracy, acc)
                if acc >= app.accuracy_slo - 1e-12:
                    scope_latency = min(scope_latency, max(sum(fastest[i][choice[i]] for i in p) for p in scope))
        best_latency, best_accuracy = max(best_latency, scope_latency), min(best_accuracy, scope_accuracy)
    if best_accuracy < app.accuracy_slo - 1e-12:
        raise CatalogError(f"no variant choice reaches accuracy {app.accuracy_slo} (best {best_accuracy:.4f})",
                           file=app.source_file, field="accuracy_slo", fix=f"lower it to <= {best_accuracy:.4f}")
    if math.isinf(best_latency):
        raise CatalogError(f"no variant choice that reaches accuracy {app.accuracy_slo} has a usable configuration",
                           file=app.source_file, field="accuracy_slo",
                           fix="lower it, or profile the accurate variants on some GPU type")
    if best_latency > app.latency_slo_ms:
        raise CatalogError(f"no configuration meets {app.latency_slo_ms:g} ms at accuracy {app.accuracy_slo} "
                           f"(fastest path needs {best_latency:.1f} ms = {LATENCY_ALLOWANCE:g} x p95 summed)",
                           file=app.source_file, field="latency_slo_ms", fix=f"raise it to >= {math.ceil(best_latency)}")


def load_catalog(path: Path | str | None = None) -> Catalog:
    """Load and validate a catalog: a directory with ``catalog.yaml``, or the YAML/JSON file itself."""
    path = Path(path) if path is not None else DEFAULT_CATALOG
    file = path / "catalog.yaml" if path.is_dir() else path
    if not file.exists():
        raise CatalogError("no such catalog", file=str(file), fix="give a directory with catalog.yaml or the file itself")
    doc = read_document(file)
    if not isinstance(doc, dict):
        raise CatalogError("expected a mapping at the top level", file=str(file), fix="see profiles/data/catalog.yaml")
    gpus, rows, coloc, context, transitions = {}, {}, {}, {}, {}
    for name, gdoc in field_of(doc, "gpus", dict, file).items():
        gpu, table, coloc[name], context[name], transitions[name] = _load_gpu(name, gdoc, file)
        gpus[name], rows[name] = gpu, load_profile_csv(table)
    transitions[CPU_DEVICE] = _load_transitions(doc, "cpu_workers", file, gpu=False)
    metrics = _load_metrics(file.parent / field_of(doc, "models", str, file))
    apps: dict[str, App] = {}
    for rel in field_of(doc, "apps", list, file):
        app = load_app(file.parent / str(rel), metrics)
        if app.name in apps:
            raise CatalogError(f"app '{app.name}' defined twice", file=app.source_file, field="name",
                               fix="give each app its own name")
        apps[app.name] = app
    profiled = {(family, model) for table in rows.values() for family, model, *_ in table}
    for app in apps.values():
        for t in app.tasks:
            for v in t.variants:
                if (t.family, v.name) not in profiled:
                    raise CatalogError(f"variant '{v.name}' of family '{t.family}' has no row in any profile table",
                                       file=app.source_file, field=f"tasks.{t.name}.variants",
                                       fix="check the model and family names, or measure it with `jigsaw profile`")
    _check_transition_variants(transitions, apps, file)
    catalog = Catalog(file, gpus, apps, rows, coloc, context, transitions)
    for app in apps.values():
        check_slos(catalog, app)
    return catalog
