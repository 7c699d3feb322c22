"""The exact planner: hand-computed answers, agreement with a brute force on small random instances, an
independent check of every plan it returns, infeasibility reasons, plan stability, and plan files."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest
from conftest import TOY_TRANSITIONS, CatalogSpec, brute_force_partitions, profile_row, toy_spec

from jigsaw.agents.ilp import solve
from jigsaw.env.candidates import FEATURE_SETS, Features, SolverOptions
from jigsaw.env.perf import compile_plan
from jigsaw.env.plan import GpuLayout, Plan, TaskConfig
from jigsaw.profiles.catalog import load_catalog
from jigsaw.profiles.errors import CatalogError, JigsawError, PlanError, SolverError

HEADROOM = 1.1
ALLOWANCE = 2.0
OPTS = SolverOptions(headroom=HEADROOM, latency_allowance=ALLOWANCE, time_limit_s=30.0, mip_gap=1e-6)


def choice(result, task: str):
    return next(c for c in result.choices if c.task == task)


@pytest.fixture
def toy_catalog(toy, tmp_path):
    return load_catalog(toy.write(tmp_path))


def toy_with(tmp_path, *, fanout=3, accuracy_slo=0.85, latency_slo_ms=100):
    spec = toy_spec()
    app = spec.apps["chain.yaml"]
    app["edges"][0]["fanout"] = fanout
    app["accuracy_slo"] = accuracy_slo
    app["latency_slo_ms"] = latency_slo_ms
    return load_catalog(spec.write(tmp_path))


# ================================================================================================
# (a) hand-computed SLO arithmetic on the toy catalog (see conftest.TOY_PROFILE)
#
# rate 100 req/s, headroom 1.1, allowance 2, SLO 100 ms, accuracy SLO 0.85, fan-out a -> b = 3.
# Accuracy: a_small = 0.8, so a_small x b (0.72 or 0.8) < 0.85: task a must run a_big.
# Latency: 2 (p95_a + p95_b) <= 100. a_big on 1g (20 ms) leaves 30 ms for b: b_small 1g batch 1 (10 ms)
# fits, batch 2 (35 ms) does not, b_big on 1g (46 ms) does not.
# Replicas: a: ceil(1.1 * 100 / 50) = 3; b: ceil(1.1 * 100 * 3 / 100) = 4. 7 slices of 1g = one GPU.
# Anything on 7g costs at least 7 slices for that task alone, so 7 slices is the unique optimum.


def test_hand_computed_chain(toy_catalog):
    r = solve(toy_catalog, "toy", {"chain": 100}, gpus=1, features=Features(), opts=OPTS)
    assert r.status == "optimal"
    a, b = choice(r, "a"), choice(r, "b")
    assert (a.variant, a.segment.name, a.batch) == ("a_big", "1g", 1)
    assert (b.variant, b.segment.name, b.batch) == ("b_small", "1g", 1)
    assert a.replicas == math.ceil(HEADROOM * 100 * 1 / 50) == 3
    assert b.replicas == math.ceil(HEADROOM * 100 * 3 / 100) == 4
    assert (a.p95_ms, a.throughput_rps, b.p95_ms, b.throughput_rps) == (20.0, 50.0, 10.0, 100.0)
    assert a.demand_rps == pytest.approx(100.0) and b.demand_rps == pytest.approx(300.0)
    path = ALLOWANCE * 20 + ALLOWANCE * 10  # 60 ms
    assert r.path_latency_ms == {"chain": {"a>b": pytest.approx(path)}}
    assert r.path_accuracy == {"chain": {"a>b": pytest.approx(1.0 * 0.9)}}
    # budgets: each task's allowance x p95, scaled up so the path uses the whole SLO
    assert a.budget_ms == pytest.approx(ALLOWANCE * 20 * 100 / path)  # 66.667
    assert b.budget_ms == pytest.approx(ALLOWANCE * 10 * 100 / path)  # 33.333
    assert a.budget_ms + b.budget_ms == pytest.approx(100)
    assert r.slices_used == 7 and r.gpus_used == 1
    cfg = r.plan.apps["chain"]
    assert cfg["a"] == TaskConfig("a_big", "1g", 1, 1, 3, 66.667)
    assert cfg["b"] == TaskConfig("b_small", "1g", 1, 1, 4, 33.333)
    assert r.plan.gpu_type == "toy"
    (layout,) = r.plan.gpus
    assert layout.partition == ("1g",) * 7
    assert sorted(w for ws in layout.workers for w in ws) == ["chain/a"] * 3 + ["chain/b"] * 4


def test_hand_computed_chain_without_budgeting(toy_catalog):
    # T off: each task gets SLO / 2 = 50 ms, so allowance x p95 <= 50: the same configs are allowed here
    r = solve(toy_catalog, "toy", {"chain": 100}, gpus=1, features=Features.parse("A,S"), opts=OPTS)
    assert r.status == "optimal" and r.slices_used == 7
    assert choice(r, "a").budget_ms == pytest.approx(50) and choice(r, "b").budget_ms == pytest.approx(50)
    assert r.plan.apps["chain"]["a"].budget_ms == 50.0


def test_per_variant_fanout_by_hand(tmp_path):
    # accuracy 0.7 admits a_small (0.8 x 0.9 = 0.72). Fan-out 2 behind a_small, 3 behind a_big.
    # a_small on 1g: ceil(110 / 100) = 2 replicas, and 10 ms leaves 40 ms for b: b_small batch 2 (35 ms,
    # 160/s) serves 1.1 * 100 * 2 = 220/s with ceil(1.375) = 2 replicas: 4 slices. a_big costs 3 + 4 = 7.
    cat = toy_with(tmp_path, fanout={"a_small": 2, "a_big": 3}, accuracy_slo=0.7)
    r = solve(cat, "toy", {"chain": 100}, gpus=2, opts=OPTS)
    assert r.status == "optimal" and r.slices_used == 4 and r.gpus_used == 1
    a, b = choice(r, "a"), choice(r, "b")
    assert (a.variant, a.segment.name, a.batch, a.replicas) == ("a_small", "1g", 1, 2)
    assert (b.variant, b.segment.name, b.batch, b.replicas) == ("b_small", "1g", 2, 2)
    assert b.demand_rps == pytest.approx(200.0)
    path = ALLOWANCE * (10 + 35)  # 90 ms
    assert r.path_latency_ms["chain"]["a>b"] == pytest.approx(path)
    assert r.path_accuracy["chain"]["a>b"] == pytest.approx(0.72)
    assert a.budget_ms == pytest.approx(20 * 100 / path) and b.budget_ms == pytest.approx(70 * 100 / path)


def test_per_variant_fanout_without_budgeting(tmp_path):
    # T off: 50 ms each, so batch 2 (70 ms) is out: b needs ceil(2.2) = 3 replicas, 5 slices
    cat = toy_with(tmp_path, fanout={"a_small": 2, "a_big": 3}, accuracy_slo=0.7)
    r = solve(cat, "toy", {"chain": 100}, gpus=2, features=Features.parse("A+S"), opts=OPTS)
    assert r.status == "optimal" and r.slices_used == 5
    assert (choice(r, "b").batch, choice(r, "b").replicas) == (1, 3)


def test_large_fanout_behind_cheap_variant_flips_the_choice(tmp_path):
    # fan-out 8 behind a_small: 2 + ceil(880 / 160) = 8 slices, more than a_big's 3 + 4 = 7
    cat = toy_with(tmp_path, fanout={"a_small": 8, "a_big": 3}, accuracy_slo=0.7)
    r = solve(cat, "toy", {"chain": 100}, gpus=2, opts=OPTS)
    assert r.status == "optimal" and r.slices_used == 7
    assert choice(r, "a").variant == "a_big" and choice(r, "b").demand_rps == pytest.approx(300)


def test_equal_slices_go_to_the_more_accurate_plan(tmp_path):
    # fan-out 6 behind a_small: 2 + ceil(660 / 160) = 7 slices, a tie with a_big's 7: accuracy breaks it
    cat = toy_with(tmp_path, fanout={"a_small": 6, "a_big": 3}, accuracy_slo=0.7)
    r = solve(cat, "toy", {"chain": 100}, gpus=2, opts=OPTS)
    assert r.status == "optimal" and r.slices_used == 7
    assert choice(r, "a").variant == "a_big"
    assert r.path_accuracy["chain"]["a>b"] == pytest.approx(0.9)


def test_spatial_off_uses_whole_gpus(toy_catalog):
    # S off: only 7g with one worker: a_big 1 replica (200/s >= 110), b_small 1 replica (>= 330/s): 2 GPUs
    r = solve(toy_catalog, "toy", {"chain": 100}, gpus=2, features=Features.parse("A,T"), opts=OPTS)
    assert r.status == "optimal" and r.slices_used == 14 and r.gpus_used == 2
    for c in r.choices:
        assert c.segment.name == "7g" and c.segment.mps_workers == 1 and c.replicas == 1
    assert all(layout.partition == ("7g",) for layout in r.plan.gpus)


def test_accuracy_off_uses_the_best_variants(toy_catalog):
    # A off: a_big and b_big. b_big must run on 7g (2 (5 + 46) > 100): ceil(330 / 125) = 3 replicas
    r = solve(toy_catalog, "toy", {"chain": 100}, gpus=4, features=Features.parse("S,T"), opts=OPTS)
    assert r.status == "optimal"
    assert {c.task: c.variant for c in r.choices} == {"a": "a_big", "b": "b_big"}
    assert choice(r, "b").segment.name == "7g" and choice(r, "b").replicas == 3
    assert r.slices_used == 3 + 21 and r.gpus_used == 4


# ================================================================================================
# (c) infeasible requests say why


def test_too_little_gpu_is_infeasible_and_says_gpu(toy_catalog):
    r = solve(toy_catalog, "toy", {"chain": 1000}, gpus=1, opts=OPTS)
    assert r.status == "infeasible"
    assert "GPU" in r.reason
    assert r.plan is None and r.choices == [] and r.slices_used == 0


def test_spatial_off_needs_two_gpus(toy_catalog):
    r = solve(toy_catalog, "toy", {"chain": 100}, gpus=1, features=Features.parse("A,T"), opts=OPTS)
    assert r.status == "infeasible"
    assert "GPU" in r.reason and "needs 2 GPUs" in r.reason


def test_no_configuration_meets_the_slo_under_the_features(tmp_path):
    # SLO 20 ms: a_big + b_small on 7g (2 (5 + 3) = 16) fits, but with A off b_big is forced: 2 (5 + 8) = 26
    cat = toy_with(tmp_path, latency_slo_ms=20)
    assert solve(cat, "toy", {"chain": 10}, gpus=2, opts=OPTS).status == "optimal"
    r = solve(cat, "toy", {"chain": 10}, gpus=2, features=Features.parse("S,T"), opts=OPTS)
    assert r.status == "infeasible"
    assert "chain" in r.reason and "S+T" in r.reason


def test_zero_demand_needs_one_worker_per_task(toy_catalog):
    """An idle app still serves (a plan with a bare task is no plan: compile_plan refuses it), at the least cost."""
    r = solve(toy_catalog, "toy", {"chain": 0}, gpus=1, opts=OPTS)
    assert r.status == "optimal" and r.gpus_used == 1
    assert all(c.replicas == 1 for c in r.choices)
    assert r.slices_used == solve(toy_catalog, "toy", {"chain": 1e-6}, gpus=1, opts=OPTS).slices_used


@pytest.mark.parametrize("kwargs, error", [
    ({"demand": {}}, SolverError),
    ({"gpus": 0}, SolverError),
    ({"demand": {"chain": -1}}, SolverError),
    ({"demand": {"chain": float("nan")}}, SolverError),
    ({"demand": {"nope": 1}}, CatalogError),
    ({"gpu_type": "h100"}, CatalogError),
    ({"gpus": 10**6}, SolverError),
    ({"demand": {"chain": 1e308}}, SolverError),
])
def test_bad_requests_raise(toy_catalog, kwargs, error):
    args = {"gpu_type": "toy", "demand": {"chain": 1}, "gpus": 1} | kwargs
    with pytest.raises(error) as e:
        solve(toy_catalog, **args)
    assert isinstance(e.value, JigsawError) and "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs", [{"headroom": 0}, {"headroom": math.inf}, {"mip_gap": 1.0}, {"mip_gap": math.nan},
                                    {"time_limit_s": 1e10}, {"time_limit_s": math.nan}, {"latency_allowance": -1}])
def test_solver_options_out_of_range_are_refused(kwargs):
    """Refused where they are made: a time limit of 1e10 s aborted the process inside HiGHS."""
    with pytest.raises(SolverError) as e:
        SolverOptions(**kwargs)
    assert "\n" not in str(e.value) and e.value.field


def test_the_fewer_gpus_tie_break_holds_on_a_large_cluster(builtin_catalog):
    """3 slices fit one GPU: the plan must not spread them because the cluster is large (the per-GPU weight once
    shrank with the cluster's size, below the MIP gap, and 10,000 GPUs gave a 2-GPU plan)."""
    for gpus in (1, 100, 10_000):
        r = solve(builtin_catalog, "h100", {"social_media": 10.0}, gpus)
        assert r.status == "optimal" and r.slices_used == 3 and r.gpus_used == 1, gpus


@pytest.mark.parametrize("text, expected", [
    ("A,S,T", Features(True, True, True)), ("A+T", Features(True, False, True)), ("none", Features(False, False, False)),
    ("s", Features(False, True, False)), (" T , A ", Features(True, False, True)),
])
def test_features_parse(text, expected):
    assert Features.parse(text) == expected


def test_feature_names_round_trip():
    for name in FEATURE_SETS:
        assert Features.parse(name).name == name


def test_unknown_feature_is_a_solver_error():
    with pytest.raises(SolverError, match="X"):
        Features.parse("A,X")


# ================================================================================================
# (d) plan stability against the current plan


def test_same_demand_same_plan(toy_catalog):
    first = solve(toy_catalog, "toy", {"chain": 100}, gpus=2, opts=OPTS)
    again = solve(toy_catalog, "toy", {"chain": 100}, gpus=2, opts=OPTS, current=first.plan)
    assert again.status == "optimal"
    assert again.plan == first.plan


BUILTIN_STEADY = [({"social_media": 300, "traffic_analysis": 100, "ar_assistant": 100}, 4),
                  ({"ar_assistant": 200}, 2), ({"social_media": 1000}, 3)]


@pytest.mark.parametrize("demand, gpus", BUILTIN_STEADY)
def test_same_demand_same_configurations_builtin(builtin_catalog, demand, gpus):
    first = solve(builtin_catalog, "h100", demand, gpus=gpus, opts=OPTS)
    again = solve(builtin_catalog, "h100", demand, gpus=gpus, opts=OPTS, current=first.plan)
    assert again.status == "optimal" and again.slices_used == first.slices_used
    assert again.plan.apps == first.plan.apps


@pytest.mark.parametrize("demand, gpus", [BUILTIN_STEADY[0], BUILTIN_STEADY[2]])
def test_same_demand_same_mig_layout_builtin(builtin_catalog, demand, gpus):
    first = solve(builtin_catalog, "h100", demand, gpus=gpus, opts=OPTS)
    again = solve(builtin_catalog, "h100", demand, gpus=gpus, opts=OPTS, current=first.plan)
    assert sorted(g.partition for g in again.plan.gpus) == sorted(g.partition for g in first.plan.gpus)
    assert again.plan == first.plan


MINI_GPU = {
    "compute_slices": 4,
    "memory_slots": 4,
    "mps_workers": [1, 2],
    "cuda_context_mib": 100,
    "colocation": {"measured": True},
    "transitions": TOY_TRANSITIONS,
    "mig_profiles": [
        {"name": "1g", "compute_slices": 1, "sms": 10, "memory_gib": 1, "width": 1, "starts": [0, 1, 2, 3]},
        {"name": "2g", "compute_slices": 2, "sms": 20, "memory_gib": 2, "width": 2, "starts": [0, 2]},
        {"name": "4g", "compute_slices": 4, "sms": 40, "memory_gib": 4, "width": 4, "starts": [0]},
    ],
}


@pytest.fixture
def tie_catalog(tmp_path):
    """One task, one variant: 2 x 1g and 1 x 2g serve 165/s equally well for 2 slices."""
    rows = [profile_row("f", "v", 10, 1, 5.0, 100.0), profile_row("f", "v", 20, 1, 5.0, 200.0),
            profile_row("f", "v", 40, 1, 5.0, 400.0)]
    spec = CatalogSpec(gpus={"mini": MINI_GPU}, rows={"mini": rows}, models={"v": 50.0},
                       apps={"one.yaml": {"name": "one", "latency_slo_ms": 50, "accuracy_slo": 1.0,
                                          "tasks": {"t": {"family": "f", "variants": ["v"]}}}})
    return load_catalog(spec.write(tmp_path))


@pytest.mark.parametrize("segment, replicas", [("1g", 2), ("2g", 1)])
def test_ties_keep_the_current_configuration(tie_catalog, segment, replicas):
    current = Plan("mini", {"one": {"t": TaskConfig("v", segment, 1, 1, replicas, 50.0)}}, ())
    r = solve(tie_catalog, "mini", {"one": 150}, gpus=1, opts=OPTS, current=current)
    assert r.status == "optimal" and r.slices_used == 2
    cfg = r.plan.apps["one"]["t"]
    assert (cfg.segment, cfg.replicas) == (segment, replicas)
    again = solve(tie_catalog, "mini", {"one": 150}, gpus=1, opts=OPTS, current=r.plan)
    assert again.plan == r.plan


def test_current_plan_does_not_override_cost(tie_catalog):
    # the current plan runs on 4g (4 slices); 2 slices are cheaper, so it is not kept
    current = Plan("mini", {"one": {"t": TaskConfig("v", "4g", 1, 1, 1, 50.0)}}, ())
    r = solve(tie_catalog, "mini", {"one": 150}, gpus=1, opts=OPTS, current=current)
    assert r.slices_used == 2 and r.plan.apps["one"]["t"].segment != "4g"


# ================================================================================================
# (e) plan files


def test_plan_json_round_trip(toy_catalog, tmp_path):
    plan = solve(toy_catalog, "toy", {"chain": 100}, gpus=1, opts=OPTS).plan
    path = tmp_path / "plan.json"
    plan.to_json(path)
    assert not (tmp_path / "plan.json.tmp").exists()
    back = Plan.from_json(path)
    assert back == plan
    assert json.loads(path.read_text())["gpu_type"] == "toy"
    assert Plan.from_dict(plan.to_dict()) == plan


def test_plan_round_trip_by_hand(tmp_path):
    plan = Plan("h100", {"app": {"t": TaskConfig("resnet50", "3g.40gb", 2, 8, 3, 12.5)}},
                (GpuLayout(("3g.40gb", "3g.40gb", "1g.10gb"), (("app/t", "app/t"), ("app/t",), ())),))
    path = tmp_path / "p.json"
    plan.to_json(path)
    assert Plan.from_json(path) == plan


@pytest.mark.parametrize("text", [
    "{not json",
    "[]",
    '{"gpu_type": "toy", "apps": {}}',
    '{"gpu_type": "toy", "apps": {"a": {"t": {"variant": "v"}}}, "gpus": []}',
    '{"gpu_type": "toy", "apps": {}, "gpus": [{"partition": ["1g", "1g"], "workers": [["a/t"]]}]}',
    '{"gpu_type": "toy", "apps": {"a": {"t": {"variant": "v", "segment": "1g", "mps_workers": 1, "batch": 1, '
    '"replicas": 1, "budget_ms": 5, "extra": 1}}}, "gpus": []}',
])
def test_corrupt_plan_file(tmp_path, text):
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(PlanError) as e:
        Plan.from_json(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_plan_file(tmp_path):
    with pytest.raises(PlanError):
        Plan.from_json(tmp_path / "absent.json")


# ================================================================================================
# (b) the ILP against a brute force on small random instances


@dataclass(frozen=True)
class Cfg:
    variant: int  # 0 = less accurate, 1 = most accurate
    profile: int  # index into MINI_GPU's mig_profiles
    workers: int
    batch: int
    p95: float
    thr: float


@dataclass
class RandomApp:
    name: str
    tasks: list[str]
    edges: dict[tuple[str, str], float | dict[str, float]]
    variants: dict[str, list[str]]  # task -> [v0, v1]
    accuracy: dict[str, list[float]]  # task -> normalised accuracy of [v0, v1]
    configs: dict[str, list[Cfg]]  # task -> usable configurations (the ground truth)
    latency_slo_ms: float
    accuracy_slo: float
    rate: float

    def paths(self) -> list[tuple[str, ...]]:
        children = {t: [v for (u, v) in self.edges if u == t] for t in self.tasks}
        sources = [t for t in self.tasks if all(v != t for _, v in self.edges)]
        out = []

        def walk(p):
            if not children[p[-1]]:
                out.append(p)
            for c in children[p[-1]]:
                walk((*p, c))
        for s in sources:
            walk((s,))
        return out

    def items(self, picks: dict[str, int]) -> dict[str, float]:
        """Items per request reaching each task, given the variant index chosen per task."""
        f = {t: (1.0 if all(v != t for _, v in self.edges) else 0.0) for t in self.tasks}
        for t in self.tasks:  # tasks are listed in topological order
            for (u, v), fan in self.edges.items():
                if u == t:
                    f[v] += f[u] * (fan[self.variants[u][picks[u]]] if isinstance(fan, dict) else fan)
        return f


@dataclass
class Instance:
    spec: CatalogSpec
    apps: list[RandomApp]
    gpus: int


PROFILES = MINI_GPU["mig_profiles"]
SEGMENTS = [(q, m) for q in range(len(PROFILES)) for m in MINI_GPU["mps_workers"]]


def random_instance(seed: int) -> Instance:
    rng = np.random.default_rng(seed)
    rows, models, app_docs, apps = [], {}, {}, []
    context = MINI_GPU["cuda_context_mib"]
    for ai in range(int(rng.integers(1, 3))):
        name = f"app{ai}"
        shape = ["single", "chain", "fork"][int(rng.choice(3, p=[0.35, 0.45, 0.2]))]
        tasks = {"single": ["a"], "chain": ["a", "b"], "fork": ["a", "b", "c"]}[shape]
        variants, accuracy, configs, task_docs = {}, {}, {}, {}
        for t in tasks:
            family = f"{name}_{t}"
            vs = [f"{family}_v0", f"{family}_v1"]
            metric = [round(float(rng.uniform(55, 80)), 3), round(float(rng.uniform(82, 95)), 3)]
            models.update(zip(vs, metric, strict=True))
            variants[t], accuracy[t] = vs, [metric[0] / metric[1], 1.0]
            task_docs[t] = {"family": family, "variants": vs}
            configs[t] = []
            base0 = float(rng.uniform(2, 8))
            for vi, base in enumerate((base0, base0 * float(rng.uniform(1.3, 2.5)))):
                for batch in (1, 2):
                    mem = float(rng.choice([150, 350, 700, 950]))
                    slow = 1.0 if batch == 1 else float(rng.uniform(1.2, 1.7))
                    for q, m in SEGMENTS:
                        always = (q == len(PROFILES) - 1 and m == 1 and batch == 1)  # every variant can run
                        # a gap in the middle SM count (2g alone) would be interpolated; leave gaps only
                        # where the table keeps them missing (co-location is "measured" here)
                        inner = (m == 1 and 0 < q < len(PROFILES) - 1)
                        if not always and not inner and rng.random() < 0.15:
                            continue  # not profiled
                        sms = PROFILES[q]["sms"]
                        contention = 1.0 if m == 1 else float(rng.uniform(1.0, 1.3))
                        p95 = round(base * (0.3 + 0.7 * 10 / (sms / m)) * slow * contention, 4)
                        thr = round(batch * 1000 / p95 * float(rng.uniform(0.7, 1.0)), 3)
                        rows.append(profile_row(family, vs[vi], sms, batch, p95, thr, workers=m, mem=mem))
                        if mem + context <= PROFILES[q]["memory_gib"] * 1024 / m:
                            configs[t].append(Cfg(vi, q, m, batch, p95, thr))
        edges = {}
        if shape != "single":
            for v in tasks[1:]:
                if rng.random() < 0.5:
                    edges[("a", v)] = round(float(rng.uniform(0.5, 3)), 2)
                else:
                    edges[("a", v)] = {variants["a"][0]: round(float(rng.uniform(0.5, 2)), 2),
                                       variants["a"][1]: round(float(rng.uniform(1.5, 3.5)), 2)}
        app = RandomApp(name, tasks, edges, variants, accuracy, configs, 0.0, 0.0,
                        round(float(rng.uniform(10, 120)), 2))
        # SLOs: an accuracy bar that some variant choices miss, and a latency SLO above the fastest
        # accurate-enough path, both kept clear of every achievable value (no ties at the boundary)
        paths = app.paths()
        combos = list(itertools.product((0, 1), repeat=len(tasks)))
        accs = sorted({math.prod(accuracy[t][c[tasks.index(t)]] for t in p) for c in combos for p in paths})
        while True:
            app.accuracy_slo = round(float(rng.uniform(min(accs) * 0.98, 1.0)), 4)
            if all(abs(a - app.accuracy_slo) > 1e-6 for a in accs):
                break
        fastest = {t: [min((ALLOWANCE * c.p95 for c in configs[t] if c.variant == vi), default=math.inf)
                       for vi in (0, 1)] for t in tasks}
        best = min(max(sum(fastest[t][c[tasks.index(t)]] for t in p) for p in paths) for c in combos
                   if all(math.prod(accuracy[t][c[tasks.index(t)]] for t in p) >= app.accuracy_slo for p in paths))
        all_sums = {sum(ALLOWANCE * cfg.p95 for cfg in pick) for p in paths
                    for pick in itertools.product(*(configs[t] for t in p))}
        while True:
            app.latency_slo_ms = round(best * float(rng.uniform(1.2, 4.0)), 2)
            if all(abs(s - app.latency_slo_ms) > 1e-6 for s in all_sums):
                break
        app_docs[f"{name}.yaml"] = {"name": name, "latency_slo_ms": app.latency_slo_ms,
                                    "accuracy_slo": app.accuracy_slo, "tasks": task_docs,
                                    "edges": [{"from": u, "to": v, "fanout": f} for (u, v), f in edges.items()]}
        apps.append(app)
    spec = CatalogSpec(gpus={"mini": MINI_GPU}, rows={"mini": rows}, models=models, apps=app_docs)
    return Instance(spec, apps, int(rng.integers(1, 4)))


@cache
def mini_partitions() -> tuple[tuple[int, ...], ...]:
    from jigsaw.profiles.types import MigProfile

    class G:  # just what brute_force_partitions reads
        mig_profiles = tuple(MigProfile(p["name"], p["compute_slices"], p["sms"], p["memory_gib"], p["width"],
                                        tuple(p["starts"])) for p in PROFILES)
        memory_slots = MINI_GPU["memory_slots"]
        compute_slices = MINI_GPU["compute_slices"]
    return tuple(sorted(brute_force_partitions(G)))


def test_mini_geometry_by_hand():
    assert set(mini_partitions()) == {(1, 0, 0), (2, 0, 0), (3, 0, 0), (4, 0, 0), (0, 1, 0), (1, 1, 0), (2, 1, 0),
                                      (0, 2, 0), (0, 0, 1)}


@cache
def packable(need: tuple[int, ...], gpus: int) -> bool:
    """Whether ``gpus`` GPUs, each cut in some valid partition or left whole-empty, hold ``need`` instances."""
    options = [*list(mini_partitions()), (0,) * len(PROFILES)]
    return any(all(sum(p[q] for p in pick) >= need[q] for q in range(len(need)))
               for pick in itertools.combinations_with_replacement(options, gpus))


def allowed(app: RandomApp, t: str, features: Features) -> list[Cfg]:
    longest = max(len(p) for p in app.paths() if t in p)
    out = []
    for c in app.configs[t]:
        if not features.accuracy and c.variant != 1:
            continue
        if not features.spatial and not (c.profile == len(PROFILES) - 1 and c.workers == 1):
            continue
        if not features.budgeting and ALLOWANCE * c.p95 > app.latency_slo_ms / longest:
            continue
        out.append(c)
    return out


def app_needs(app: RandomApp, features: Features) -> set[tuple[int, ...]]:
    """The Pareto-minimal replica vectors (per segment type) of every SLO-feasible choice for one app."""
    paths = app.paths()
    vectors = set()
    for pick in itertools.product(*(allowed(app, t, features) for t in app.tasks)):
        by_task = dict(zip(app.tasks, pick, strict=True))
        if features.budgeting and any(sum(ALLOWANCE * by_task[t].p95 for t in p) > app.latency_slo_ms for p in paths):
            continue
        if any(sum(math.log(app.accuracy[t][by_task[t].variant]) for t in p) < math.log(app.accuracy_slo)
               for p in paths):
            continue
        items = app.items({t: by_task[t].variant for t in app.tasks})
        vec = [0] * len(SEGMENTS)
        for t, c in by_task.items():
            vec[SEGMENTS.index((c.profile, c.workers))] += math.ceil(HEADROOM * app.rate * items[t] / c.thr - 1e-9)
        vectors.add(tuple(vec))
    return {v for v in vectors if not any(w != v and all(x <= y for x, y in zip(w, v, strict=True)) for w in vectors)}


def brute_force(inst: Instance, features: Features) -> int | None:
    """Fewest compute slices over every feasible plan, or None."""
    per_app = [app_needs(app, features) for app in inst.apps]
    best = None
    for combo in itertools.product(*per_app):
        total = [sum(v[i] for v in combo) for i in range(len(SEGMENTS))]
        need = [0] * len(PROFILES)
        for (q, m), r in zip(SEGMENTS, total, strict=True):
            need[q] += math.ceil(r / m)
        slices = sum(n * PROFILES[q]["compute_slices"] for q, n in enumerate(need))
        if (best is None or slices < best) and packable(tuple(need), inst.gpus):
            best = slices
    return best


def verify_plan(inst: Instance, result, features: Features) -> None:
    """Check every constraint of a returned plan from the ground truth, independently of the solver."""
    plan = result.plan
    names = [p["name"] for p in PROFILES]
    assert plan.gpu_type == "mini"
    assert 1 <= len(plan.gpus) <= inst.gpus or (len(plan.gpus) == 0 and result.slices_used == 0)
    hosted: Counter = Counter()
    slices = 0
    for layout in plan.gpus:
        counts = tuple(layout.partition.count(n) for n in names)
        assert counts in mini_partitions(), f"{layout.partition} is not a valid partition"
        assert len(layout.workers) == len(layout.partition)
        for instance, workers in zip(layout.partition, layout.workers, strict=True):
            if workers:
                slices += PROFILES[names.index(instance)]["compute_slices"]
            shares = set()
            for w in workers:
                app_name, task = w.split("/")
                cfg = plan.apps[app_name][task]
                assert cfg.segment == instance
                shares.add(cfg.mps_workers)
                hosted[(app_name, task)] += 1
            assert len(shares) <= 1 and len(workers) <= (shares.pop() if shares else 1)
    assert slices == result.slices_used
    assert result.gpus_used == len(plan.gpus)
    for app in inst.apps:
        cfgs = plan.apps[app.name]
        assert set(cfgs) == set(app.tasks)
        truth = {}
        for t, cfg in cfgs.items():
            vi = app.variants[t].index(cfg.variant)
            q = names.index(cfg.segment)
            matches = [c for c in allowed(app, t, features)
                       if (c.variant, c.profile, c.workers, c.batch) == (vi, q, cfg.mps_workers, cfg.batch)]
            assert len(matches) == 1, f"{app.name}/{t}: {cfg} is not a usable configuration under {features.name}"
            truth[t] = matches[0]
            assert hosted[(app.name, t)] == cfg.replicas
        items = app.items({t: c.variant for t, c in truth.items()})
        for t, c in truth.items():
            assert cfgs[t].replicas * c.thr >= HEADROOM * app.rate * items[t] * (1 - 1e-9)
            assert ALLOWANCE * c.p95 <= cfgs[t].budget_ms + 1e-3  # each budget covers the allowance
        for p in app.paths():
            lat = sum(ALLOWANCE * truth[t].p95 for t in p)
            assert lat <= app.latency_slo_ms + 1e-9
            assert sum(cfgs[t].budget_ms for t in p) <= app.latency_slo_ms + 1e-2  # budgets split the SLO
            acc = math.prod(app.accuracy[t][truth[t].variant] for t in p)
            assert acc >= app.accuracy_slo - 1e-9
            assert result.path_latency_ms[app.name][">".join(p)] == pytest.approx(lat)
            assert result.path_accuracy[app.name][">".join(p)] == pytest.approx(acc)
        for ch in (c for c in result.choices if c.app == app.name):
            assert ch.replicas == cfgs[ch.task].replicas and ch.variant == cfgs[ch.task].variant
            assert ch.demand_rps == pytest.approx(app.rate * items[ch.task])


@pytest.fixture(scope="module")
def instances(tmp_path_factory):
    cache = {}

    def get(seed: int):
        if seed not in cache:
            inst = random_instance(seed)
            catalog = load_catalog(inst.spec.write(tmp_path_factory.mktemp(f"rand{seed}")))
            cache[seed] = (inst, catalog)
        return cache[seed]
    return get


def check_against_brute_force(inst: Instance, catalog, features: Features) -> str:
    expected = brute_force(inst, features)
    demand = {app.name: app.rate for app in inst.apps}
    result = solve(catalog, "mini", demand, gpus=inst.gpus, features=features, opts=OPTS)
    if expected is None:
        assert result.status == "infeasible", (result.status, result.slices_used)
        assert result.reason
        return "infeasible"
    assert result.status == "optimal", result.reason
    assert result.slices_used == expected, (result.slices_used, expected, result.reason)
    verify_plan(inst, result, features)
    return "optimal"


SEEDS = list(range(12))


@pytest.mark.parametrize("seed", SEEDS)
def test_ilp_equals_brute_force(instances, seed):
    inst, catalog = instances(seed)
    check_against_brute_force(inst, catalog, Features())


@pytest.mark.parametrize("features", FEATURE_SETS)
@pytest.mark.parametrize("seed", [1, 4, 18])
def test_ilp_equals_brute_force_every_feature_set(instances, seed, features):
    inst, catalog = instances(seed)
    check_against_brute_force(inst, catalog, Features.parse(features))


def test_random_instances_cover_both_outcomes(instances):
    """The generator is only useful if it produces feasible and infeasible cases, chains and fan-outs."""
    outcomes = Counter()
    shapes = Counter()
    for seed in SEEDS:
        inst, _ = instances(seed)
        outcomes[brute_force(inst, Features()) is None] += 1
        for app in inst.apps:
            shapes[len(app.tasks)] += 1
            shapes["per-variant"] += any(isinstance(f, dict) for f in app.edges.values())
        shapes["two apps"] += len(inst.apps) == 2
        shapes["two gpus"] += inst.gpus == 2
    assert outcomes[False] >= 6  # feasible ones are what the comparison is mostly about
    assert outcomes[True] >= 1
    assert shapes[1] and shapes[2] and shapes["per-variant"] and shapes["two apps"] and shapes["two gpus"]


@pytest.mark.parametrize("seed", SEEDS)
def test_random_catalog_matches_its_ground_truth(instances, seed):
    """The loader's usable configurations are exactly the generator's (measured co-location, memory)."""
    inst, catalog = instances(seed)
    for app in inst.apps:
        for t in app.tasks:
            table = catalog.table("mini", app.name, t)
            got = set()
            for vi, si, bi in zip(*np.nonzero(table.usable), strict=True):
                seg = table.segments[si]
                got.add((int(vi), [p["name"] for p in PROFILES].index(seg.mig_profile.name), seg.mps_workers,
                         table.batches[bi], float(table.p95_ms[vi, si, bi]), float(table.throughput_rps[vi, si, bi])))
            assert got == {(c.variant, c.profile, c.workers, c.batch, c.p95, c.thr) for c in app.configs[t]}


# ================================================================================================
# plans on the built-in catalog satisfy every constraint, read back from the profile tables


def check_plan_against_catalog(catalog, gpu_name: str, demand: dict[str, float], gpus: int, result) -> None:
    gpu = catalog.gpus[gpu_name]
    valid = brute_force_partitions(gpu)
    names = [p.name for p in gpu.mig_profiles]
    plan = result.plan
    assert len(plan.gpus) <= gpus
    hosted: Counter = Counter()
    for layout in plan.gpus:
        assert tuple(layout.partition.count(n) for n in names) in valid
        for instance, workers in zip(layout.partition, layout.workers, strict=True):
            for w in workers:
                app_name, task = w.split("/")
                assert plan.apps[app_name][task].segment == instance
                assert len(workers) <= plan.apps[app_name][task].mps_workers
                hosted[(app_name, task)] += 1
    for app_name, rate in demand.items():
        app = catalog.apps[app_name]
        cfgs = plan.apps[app_name]
        lat, acc, thr = {}, {}, {}
        for t, cfg in cfgs.items():
            table = catalog.table(gpu_name, app_name, t)
            vi = table.variants.index(cfg.variant)
            si = next(i for i, s in enumerate(table.segments)
                      if s.mig_profile.name == cfg.segment and s.mps_workers == cfg.mps_workers)
            bi = table.batches.index(cfg.batch)
            assert table.usable[vi, si, bi]
            lat[t] = ALLOWANCE * table.p95_ms[vi, si, bi]
            thr[t] = table.throughput_rps[vi, si, bi]
            acc[t] = app.task(t).variants[vi].accuracy
            assert hosted[(app_name, t)] == cfg.replicas
        items = {t: 0.0 for t in app.task_names}
        for t in app.topological_order:
            if all(v != t for _, v in app.edges):
                items[t] = 1.0
            for (u, v) in app.edges:
                if u == t:
                    items[v] += items[u] * app.fanout(u, v, cfgs[u].variant)
        for t, cfg in cfgs.items():
            assert cfg.replicas * thr[t] >= HEADROOM * rate * items[t] * (1 - 1e-9)
        for p in app.paths():
            assert sum(lat[t] for t in p) <= app.latency_slo_ms + 1e-9
            assert math.prod(acc[t] for t in p) >= app.accuracy_slo - 1e-9


@pytest.mark.parametrize("gpu_name, demand, gpus", [
    ("h100", {"social_media": 300, "traffic_analysis": 100, "ar_assistant": 100}, 4),
    ("h100", {"traffic_analysis": 50}, 1),
    ("h100", {"ar_assistant": 200}, 2),
    ("a100", {"image_classify": 500, "bert_qa": 100}, 2),
])
def test_builtin_plans_satisfy_every_constraint(builtin_catalog, gpu_name, demand, gpus):
    r = solve(builtin_catalog, gpu_name, demand, gpus=gpus, opts=OPTS)
    assert r.status == "optimal", r.reason
    check_plan_against_catalog(builtin_catalog, gpu_name, demand, gpus, r)
    # more demand never needs fewer slices (same cluster)
    base = solve(builtin_catalog, gpu_name, demand, gpus=8, opts=OPTS)
    more = solve(builtin_catalog, gpu_name, {a: 2 * x for a, x in demand.items()}, gpus=8, opts=OPTS)
    assert base.status == more.status == "optimal"
    assert base.slices_used <= r.slices_used <= 7 * gpus
    assert more.slices_used >= base.slices_used


def test_an_app_without_demand_still_gets_a_replica_per_task() -> None:
    """A trace bin with no requests for an app (the Azure trace has them) once gave 0 replicas, a plan that
    compile_plan refuses: every task keeps at least one worker."""
    catalog = load_catalog()
    result = solve(catalog, "h100", {"social_media": 0.0, "traffic_analysis": 5.0, "ar_assistant": 1.0}, 4)
    assert result.plan is not None
    assert all(c.replicas >= 1 for tasks in result.plan.apps.values() for c in tasks.values())
    compile_plan(catalog, result.plan)
