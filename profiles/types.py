"""The catalog's vocabulary: GPU types and their MIG geometry, segment types, variants, apps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType


@dataclass(frozen=True)
class MigProfile:
    """One MIG instance size. ``width`` and ``starts`` are placement rules over the memory slots."""

    name: str  # e.g. "3g.40gb"
    compute_slices: int
    sms: int
    memory_gib: float
    width: int  # memory slots it occupies
    starts: tuple[int, ...]  # memory slots it may start at


@dataclass(frozen=True)
class Partition:
    """A valid way to cut one GPU: how many instances of each MIG profile (in ``GpuType.mig_profiles`` order)."""

    counts: tuple[int, ...]

    def names(self, gpu: GpuType) -> list[str]:
        return [p.name for p, c in zip(gpu.mig_profiles, self.counts, strict=True) for _ in range(c)]


@dataclass(frozen=True)
class SegmentType:
    """A MIG instance shared by ``mps_workers`` MPS workers; one worker runs on it."""

    gpu: str
    mig_profile: MigProfile
    mps_workers: int

    @property
    def name(self) -> str:
        return self.mig_profile.name if self.mps_workers == 1 else f"{self.mig_profile.name}/{self.mps_workers}"

    @property
    def slices(self) -> float:
        """Cost of one worker in 1/7-GPU compute slices (2g shared by 2 workers = 1.0 each)."""
        return self.mig_profile.compute_slices / self.mps_workers

    @property
    def sms_per_worker(self) -> float:
        return self.mig_profile.sms / self.mps_workers

    @property
    def memory_mib_per_worker(self) -> float:
        return self.mig_profile.memory_gib * 1024.0 / self.mps_workers


@dataclass(frozen=True)
class GpuType:
    """A GPU model: its MIG profiles, the valid partitions derived from them, and the segment types."""

    name: str
    device_name: str
    compute_slices: int
    memory_slots: int
    mig_profiles: tuple[MigProfile, ...]
    mps_workers: tuple[int, ...]
    partitions: tuple[Partition, ...]  # every distinct valid partition of one GPU (non-empty)

    @cached_property
    def segments(self) -> tuple[SegmentType, ...]:
        return tuple(SegmentType(self.name, p, m) for p in self.mig_profiles for m in self.mps_workers)

    @cached_property
    def whole_gpu_segment(self) -> int:
        """Index in ``segments`` of the whole GPU with one worker (the only segment when S is off)."""
        return next(i for i, s in enumerate(self.segments)
                    if s.mig_profile.compute_slices == self.compute_slices and s.mps_workers == 1)

    @cached_property
    def maximal_partitions(self) -> tuple[Partition, ...]:
        """Partitions no other partition dominates instance-for-instance: enough for packing, since
        an instance may stay idle."""
        def dominated(a: Partition) -> bool:
            return any(b != a and all(x <= y for x, y in zip(a.counts, b.counts, strict=True))
                       for b in self.partitions)
        return tuple(p for p in self.partitions if not dominated(p))

    def profile_index(self, name: str) -> int:
        return next(i for i, p in enumerate(self.mig_profiles) if p.name == name)


@dataclass(frozen=True)
class Transitions:
    """How long plan changes take on one device kind: re-cutting a GPU's MIG geometry once its affected
    instances are idle, and starting a worker (launch until it serves), per variant with a default."""

    repartition_s: float  # destroy + create GPU/compute instances on one GPU (0.0 on the cpu backend)
    startup_s: Mapping[str, float] = field(hash=False)  # variant name -> seconds; overrides the default
    default_startup_s: float
    source: str  # provenance: estimated (and why) or measured (where, when, how)

    def __post_init__(self) -> None:
        object.__setattr__(self, "startup_s", MappingProxyType(dict(self.startup_s)))  # read-only, a copy

    def __reduce__(self) -> tuple[type[Transitions], tuple[float, dict[str, float], float, str]]:
        """Pickle the figures as a plain dict (a mappingproxy does not pickle); ``__post_init__`` freezes it again."""
        return Transitions, (self.repartition_s, dict(self.startup_s), self.default_startup_s, self.source)

    def startup(self, variant: str) -> float:
        """Seconds from launching a worker of ``variant`` until it serves."""
        return self.startup_s.get(variant, self.default_startup_s)


BUILTIN_HANDLER = "jigsaw.profiles.builtin_handlers:builtin"


@dataclass(frozen=True)
class HandlerSpec:
    """What a worker runs for a variant: ``factory`` (``module:callable``) is called once per worker as
    ``factory(variant, weights=..., device=..., **options)`` and returns the handler, a callable from a batch of
    inputs to a batch of outputs (``jigsaw.profiles.handlers``). ``weights`` is a local file; nothing is
    downloaded."""

    factory: str = BUILTIN_HANDLER
    weights: str | None = None
    options: Mapping[str, object] = field(default_factory=dict, hash=False)  # JSON values, e.g. {"threshold": 0.5}


@dataclass(frozen=True)
class Variant:
    """One model that can run a task. ``accuracy`` is normalised: the task's best variant has 1.0."""

    task: str
    name: str
    accuracy: float
    handler: HandlerSpec = field(default=HandlerSpec(), compare=False)  # serving only: no decision depends on it


@dataclass(frozen=True)
class Task:
    name: str
    family: str  # profile family, e.g. "classification"
    variants: tuple[Variant, ...]  # ordered from least to most accurate


@dataclass(frozen=True)
class App:
    """A task graph with end-to-end SLOs. ``edges[(u, v)]`` is the fan-out: a number, or a number per
    variant of ``u`` (a better detector passes more objects on)."""

    name: str
    tasks: tuple[Task, ...]
    edges: dict[tuple[str, str], float | dict[str, float]] = field(hash=False)
    latency_slo_ms: float
    accuracy_slo: float
    source_file: str = ""
    # (u, v) -> the labels of u's outputs that v takes (a detector's "car"s to the car classifier); absent: all
    labels: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict, hash=False)

    def task(self, name: str) -> Task:
        return next(t for t in self.tasks if t.name == name)

    @cached_property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @cached_property
    def topological_order(self) -> tuple[str, ...]:
        indegree = {t: 0 for t in self.task_names}
        for _, v in self.edges:
            indegree[v] += 1
        ready = [t for t in self.task_names if indegree[t] == 0]
        order: list[str] = []
        while ready:
            u = ready.pop(0)
            order.append(u)
            for a, b in self.edges:
                if a == u:
                    indegree[b] -= 1
                    if indegree[b] == 0:
                        ready.append(b)
        return tuple(order)

    @cached_property
    def sources(self) -> tuple[str, ...]:
        """The tasks no edge enters: where a request's input goes."""
        return tuple(t for t in self.task_names if all(v != t for _, v in self.edges))

    @cached_property
    def sinks(self) -> tuple[str, ...]:
        """The tasks no edge leaves: whose results a request's answer carries."""
        return tuple(t for t in self.task_names if all(u != t for u, _ in self.edges))

    def paths(self) -> list[tuple[str, ...]]:
        """Every source-to-sink path, as task names."""
        children: dict[str, list[str]] = {t: [] for t in self.task_names}
        for u, v in self.edges:
            children[u].append(v)
        out: list[tuple[str, ...]] = []

        def walk(path: tuple[str, ...]) -> None:
            nxt = children[path[-1]]
            if not nxt:
                out.append(path)
            for v in nxt:
                walk((*path, v))

        for s in self.sources:
            walk((s,))
        return out

    def items_per_request(self, variants: dict[str, str]) -> dict[str, float]:
        """Items reaching each task per app request (F_t), through the fan-outs of the chosen ``variants``
        (task -> variant name)."""
        items = dict.fromkeys(self.task_names, 0.0)
        for t in self.topological_order:
            if t in self.sources:
                items[t] = 1.0
            for u, v in self.edges:
                if u == t:
                    items[v] += items[t] * self.fanout(u, v, variants[t])
        return items

    def fanout(self, u: str, v: str, variant: str) -> float:
        f = self.edges[(u, v)]
        return f[variant] if isinstance(f, dict) else f
