"""The bad-input corpus: every case runs the real ``jigsaw`` command in a fresh process, under a time and memory
bound, and must end in exit status 2 with one line on stderr (``jigsaw: error: …``) — never a traceback, a
signal, a hang or an input accepted that should not be.

The corpus keeps every malformed input found so far (catalogs, app specs, profile tables, traces, plans,
policies, training settings, command-line values). Add a case when a new one is found.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import CatalogSpec, toy_spec

MEMORY_LIMIT_BYTES = 4 << 30  # an input-driven allocation fails here rather than swapping the machine
NOT_UTF8 = b"\xff\xfe\x00bad \xc3\x28 bytes\n"
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(  # 9**9 leaves from 300 bytes
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))


@dataclass(frozen=True)
class Case:
    """``argv`` of ``jigsaw`` run in a fresh directory ``{d}`` holding ``files``; ``catalog`` corrupts the toy
    catalog written to ``{d}/cat`` (solve it with TOY_SOLVE)."""

    id: str
    argv: tuple[str, ...]
    files: dict[str, str | bytes] = field(default_factory=dict)
    catalog: Callable[[CatalogSpec], None] | None = None
    timeout_s: float = 60.0


TOY_SOLVE = ("solve", "--catalog", "{d}/cat", "--gpu-type", "toy", "--app", "chain", "--rps", "10", "--gpus", "1")
SOLVE = ("solve", "--app", "social_media", "--rps", "50", "--gpus", "1")
CAPACITY = ("capacity", "--gpus", "1", "--app", "social_media")
TRACE_CSV = "time_s,app,rps\n" + "".join(f"{60 * i},social_media,{10 + i}\n" for i in range(8))
DAEMON = ("daemon", "--app", "social_media", "--port", "0", "--run-dir", "{d}/run", "--model", "noop")
LOADGEN = ("loadgen", "--trace", "{d}/t.csv", "--url", "http://127.0.0.1:9")
TRAIN = ("train", "--out", "{d}/p.zip", "--logdir", "{d}/tb", "--no-progress")


def plan_doc(**task_overrides: object) -> dict[str, object]:
    """A valid one-app plan document for social_media on one H100, with the tag task's fields overridden."""
    config = {"variant": "resnet50", "segment": "1g.10gb", "mps_workers": 1, "batch": 1, "replicas": 1,
              "budget_ms": 20.0}
    tasks = {"tag": {**config, **task_overrides},
             "moderate": {**config, "variant": "efficientnet_b0"},
             "scene": {**config, "variant": "mobilenet_v3_large"}}
    return {"gpu_type": "h100", "apps": {"social_media": tasks},
            "gpus": [{"partition": ["1g.10gb"] * 7,
                      "workers": [["social_media/tag"], ["social_media/moderate"], ["social_media/scene"],
                                  [], [], [], []]}]}


def with_flag(argv: tuple[str, ...], flag: str, value: str) -> tuple[str, ...]:
    """``argv`` with ``flag`` set to ``value`` (replaced where present, else appended)."""
    out = list(argv)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return tuple(out)


def flag_cases(verb: str, argv: tuple[str, ...], values: dict[str, list[str]], files: dict[str, str | bytes],
               timeout_s: float = 60.0) -> list[Case]:
    return [Case(f"{verb} {flag} {v!r}", with_flag(argv, flag, v), files, timeout_s=timeout_s)
            for flag, vs in values.items() for v in vs]


def cli_value_cases() -> list[Case]:
    trace, file = {"t.csv": TRACE_CSV}, {"file": "x"}
    profile = ("profile", "--family", "classification", "--variants", "resnet18", "--out", "{d}/o.csv",
               "--batches", "1", "--sm-shares", "100", "--colocation", "1", "--device", "cpu")
    return [
        *flag_cases("solve", SOLVE, {
            "--gpus": ["0", "-1", "1000000"], "--rps": ["-1", "nan", "inf", "1e308", "abc", ",", "10,10"],
            "--app": ["nope", ","], "--headroom": ["0", "-1", "nan", "inf"],
            "--time-limit": ["0", "-1", "nan", "inf", "1e10"], "--gap": ["-1", "nan", "2"], "--features": ["X", ""],
            "--gpu-type": ["nope"], "--catalog": ["/nonexistent", "{d}/t.csv", "{d}"]}, trace),
        *flag_cases("capacity", CAPACITY, {
            "--tolerance": ["0", "-1", "nan", "inf", "1"], "--gpus": ["0", "-5"], "--app": ["nope"],
            "--time-limit": ["1e10", "nan"]}, {}, timeout_s=30),
        *flag_cases("evaluate", ("evaluate", "--json"), {
            "--intervals": ["0", "-1"], "--gpus": ["0"], "--systems": ["nope", ","], "--time-limit": ["-1", "nan"],
            "--headroom": ["nan"], "--app": ["nope"], "--trace": ["{d}/missing.csv"], "--logdir": ["{d}/file/sub"],
            "--seed": ["-1"], "--policy": ["{d}/missing.npz"]}, file),
        *flag_cases("daemon", DAEMON, {
            "--port": ["99999", "-1"], "--run-dir": ["{d}/file/run"], "--interval": ["0", "nan"],
            "--min-rps": ["-1", "nan"], "--gpus": ["0"], "--app": ["nope"], "--max-workers": ["0"],
            "--model": ["nope"], "--time-limit": ["nan", "-1"], "--headroom": ["0"], "--backend": ["mps", "mig"],
            "--plan": ["{d}/missing.json"], "--policy": ["{d}/missing.npz"], "--host": ["0.0.0.0", "nowhere.invalid"],
            "--auth-token": ["short"], "--max-connections": ["0", "-1"]}, file),
        *flag_cases("loadgen", LOADGEN, {
            "--url": ["ftp://x", "http://", "notaurl", "http://127.0.0.1:99999", "http://[::1"],
            "--rate-scale": ["1e308", "0", "nan"], "--time-scale": ["0", "-1"], "--duration": ["-1", "0", "nan"],
            "--timeout": ["0", "-1"], "--trace": ["{d}/missing.csv"]}, trace, timeout_s=30),
        Case("loadgen: nothing listens", LOADGEN, trace, timeout_s=30),
        *flag_cases("train", TRAIN, {
            "--n-envs": ["0", "-1"], "--timesteps": ["0", "-1"], "--gpus": ["-1"], "--out": ["{d}/file/p.zip"],
            "--resume": ["{d}/missing.zip"], "--trace": ["{d}/missing.csv"], "--hyperparams": ["{d}/missing.yml"]},
            file),
        *flag_cases("profile", profile, {
            "--batches": ["0", "-1", "a"], "--sm-shares": ["0", "200", "x"], "--colocation": ["0"],
            "--min-iters": ["0"], "--time-per-config": ["-1", "nan"], "--out": ["{d}/file/o.csv"],
            "--device": ["cuda"], "--family": ["nope"], "--variants": [",", "nope"]}, file),
    ]


def trace_cases() -> list[Case]:
    bodies: dict[str, str | bytes] = {
        "empty": "", "header only": "time_s,app,rps\n", "not utf-8": NOT_UTF8, "binary": bytes(range(256)) * 4,
        "negative rps": "time_s,app,rps\n0,a,-1\n60,a,2\n", "nan rps": "time_s,app,rps\n0,a,nan\n60,a,2\n",
        "unsorted": "time_s,app,rps\n60,a,1\n0,a,2\n", "one bin": "time_s,app,rps\n0,a,1\n",
        "uneven": "time_s,app,rps\n0,a,1\n60,a,1\n61,a,1\n", "short row": "time_s,app,rps\n0,a\n60,a,1\n",
        "unknown header": "when,what\n1,2\n",
        "bins spanning ages": "time_s,app,rps\n0,a,1\n1e-6,a,1\n1e9,a,1\n",
        "tiny bins": "time_s,app,rps\n0,a,1\n1e-300,a,1\n",
        "azure llm years": "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,1,1\n"
                           "9999-11-16 18:17:03.97,1,1\n",
        "azure llm bad stamp": "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,1\n",
        "azure functions one minute": "HashOwner,HashApp,HashFunction,Trigger,1\no,a,f,http,3\n",
        "azure functions negative": "HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,3,-4\n",
    }
    cases = [Case(f"trace show: {name}", ("trace", "show", "{d}/t.csv"), {"t.csv": body})
             for name, body in bodies.items()]
    cases += [Case("trace show --plot into a missing directory", ("trace", "show", "{d}/t.csv", "--plot",
                                                                  "{d}/missing/p.png"), {"t.csv": TRACE_CSV}),
              Case("trace show --plot without a suffix", ("trace", "show", "{d}/t.csv", "--plot", "{d}/p"),
                   {"t.csv": TRACE_CSV}),
              Case("trace show --plot onto a directory", ("trace", "show", "{d}/t.csv", "--plot", "{d}"),
                   {"t.csv": TRACE_CSV}),
              Case("trace show: no file", ("trace", "show", "{d}/missing.csv")),
              Case("trace show: a directory", ("trace", "show", "{d}")),
              Case("trace show --time-scale 0", ("trace", "show", "{d}/t.csv", "--time-scale", "0"),
                   {"t.csv": TRACE_CSV}),
              Case("trace show --rate-scale nan", ("trace", "show", "{d}/t.csv", "--rate-scale", "nan"),
                   {"t.csv": TRACE_CSV})]
    return cases


def catalog_cases() -> list[Case]:
    def gpu(**kw: object) -> Callable[[CatalogSpec], None]:
        return lambda s: s.gpus["toy"].update(kw)

    def app(**kw: object) -> Callable[[CatalogSpec], None]:
        return lambda s: s.apps["chain.yaml"].update(kw)  # type: ignore[union-attr]

    def raw(name: str, text: str | bytes) -> Callable[[CatalogSpec], None]:
        def corrupt(s: CatalogSpec) -> None:
            s.raw[name] = text
        return corrupt

    def profile(**kw: object) -> Callable[[CatalogSpec], None]:
        return lambda s: s.rows["toy"][0].update(kw)

    def mig(**kw: object) -> Callable[[CatalogSpec], None]:
        return lambda s: s.gpus["toy"]["mig_profiles"][0].update(kw)

    corruptions: dict[str, Callable[[CatalogSpec], None]] = {
        "catalog.yaml not utf-8": raw("catalog.yaml", NOT_UTF8),
        "catalog.yaml alias bomb": raw("catalog.yaml", BOMB),
        "catalog.yaml a list": raw("catalog.yaml", "- 1\n- 2\n"),
        "catalog.yaml bad yaml": raw("catalog.yaml", "gpus: [\n"),
        "app yaml not utf-8": raw("chain.yaml", NOT_UTF8),
        "app yaml alias bomb": raw("chain.yaml", BOMB),
        "app yaml a scalar": raw("chain.yaml", "42\n"),
        "profiles csv not utf-8": raw("toy_profiles.csv", NOT_UTF8),
        "profiles csv empty": raw("toy_profiles.csv", ""),
        "models csv not utf-8": raw("models.csv", NOT_UTF8),
        "memory_slots 64": gpu(memory_slots=64),
        "memory_slots 1e9": gpu(memory_slots=10**9),
        "compute_slices 0": gpu(compute_slices=0),
        "compute_slices 10**6": gpu(compute_slices=10**6),
        "mps_workers [0]": gpu(mps_workers=[0]),
        "mps_workers [10**6]": gpu(mps_workers=[10**6]),
        "mig width 0": mig(width=0),
        "mig starts out of range": mig(starts=[0, 99]),
        "mig sms nan": mig(sms=float("nan")),
        "latency_slo nan": app(latency_slo_ms=float("nan")),
        "latency_slo inf": app(latency_slo_ms=float("inf")),
        "latency_slo 0": app(latency_slo_ms=0),
        "accuracy_slo 2": app(accuracy_slo=2),
        "fanout -1": app(edges=[{"from": "a", "to": "b", "fanout": -1}]),
        "fanout 1e308": app(edges=[{"from": "a", "to": "b", "fanout": 1e308}]),
        "edge cycle": app(edges=[{"from": "a", "to": "b", "fanout": 1}, {"from": "b", "to": "a", "fanout": 1}]),
        "edge to nowhere": app(edges=[{"from": "a", "to": "z", "fanout": 1}]),
        "p95 negative": profile(p95_ms=-1),
        "p95 nan": profile(p95_ms="nan"),
        "throughput 0": profile(throughput_rps=0),
        "batch 0": profile(batch=0),
        "batch 1.5": profile(batch=1.5),
        "batch 10**12": profile(batch=10**12),
        "sm_count 0": profile(sm_count=0),
    }
    return [Case(f"catalog: {name}", TOY_SOLVE, catalog=corrupt, timeout_s=30) for name, corrupt in corruptions.items()]


def plan_cases() -> list[Case]:
    plans: dict[str, str | bytes] = {
        "not utf-8": NOT_UTF8, "not json": "{", "a list": "[]", "deeply nested": "[" * 100_000 + "]" * 100_000,
        "batch 1.0": json.dumps(plan_doc(batch=1.0)), "batch 0": json.dumps(plan_doc(batch=0)),
        "batch true": json.dumps(plan_doc(batch=True)), "budget_ms string": json.dumps(plan_doc(budget_ms="10")),
        "budget_ms nan": json.dumps(plan_doc(budget_ms=float("nan"))),
        "replicas -1": json.dumps(plan_doc(replicas=-1)), "replicas 10**9": json.dumps(plan_doc(replicas=10**9)),
        "unknown variant": json.dumps(plan_doc(variant="resnet9000")),
        "unknown segment": json.dumps(plan_doc(segment="9g.1tb")),
        "mps_workers 3": json.dumps(plan_doc(mps_workers=3)),
        "extra field": json.dumps(plan_doc(colour="blue")),
    }
    return [Case(f"plan: {name}", (*DAEMON, "--plan", "{d}/plan.json"), {"plan.json": body})
            for name, body in plans.items()]


def settings_cases() -> list[Case]:
    docs: dict[str, str | bytes] = {
        "not utf-8": NOT_UTF8, "alias bomb": BOMB, "a list": "- 1\n", "no env id": "other: {}\n",
        "n_steps -1": yaml.safe_dump({"jigsaw/JigsawServe-v0": {"n_steps": -1}}),
        "learning_rate string": yaml.safe_dump({"jigsaw/JigsawServe-v0": {"learning_rate": "fast"}}),
        "batch_size 0": yaml.safe_dump({"jigsaw/JigsawServe-v0": {"batch_size": 0}}),
        "gamma 2": yaml.safe_dump({"jigsaw/JigsawServe-v0": {"gamma": 2}}),
        "unknown key": yaml.safe_dump({"jigsaw/JigsawServe-v0": {"colour": 1}}),
        "n_timesteps string": yaml.safe_dump({"jigsaw/JigsawServe-v0": {"n_timesteps": "many"}}),
        "env_kwargs gpus 0": yaml.safe_dump({"jigsaw/JigsawServe-v0": {"env_kwargs": {"gpus": 0}}}),
        "n_envs 10**6": yaml.safe_dump({"jigsaw/JigsawServe-v0": {"n_envs": 10**6}}),
    }
    return [Case(f"train settings: {name}", (*TRAIN, "--hyperparams", "{d}/h.yml"), {"h.yml": body})
            for name, body in docs.items()]


def policy_cases() -> list[Case]:
    files: dict[str, dict[str, str | bytes]] = {
        "random bytes": {"p.npz": os.urandom(512), "p.json": "{}"},
        "empty zip": {"p.zip": b"PK\x05\x06" + bytes(18), "p.json": "{}"},
        "sidecar not utf-8": {"p.npz": b"", "p.json": NOT_UTF8},
        "sidecar deeply nested": {"p.npz": b"", "p.json": "[" * 100_000 + "]" * 100_000},
        "sidecar a list": {"p.npz": b"", "p.json": "[]"},
        "no sidecar": {"p.npz": b""},
    }
    cases = []
    for name, fs in files.items():
        policy = "{d}/" + next(f for f in fs if not f.endswith(".json"))
        cases.append(Case(f"policy: {name} (evaluate)", ("evaluate", "--policy", policy, "--json"), fs))
        cases.append(Case(f"policy: {name} (daemon)", (*DAEMON, "--policy", policy), fs))
    return cases


CORPUS = cli_value_cases() + trace_cases() + catalog_cases() + plan_cases() + settings_cases() + policy_cases()


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))


def test_the_corpus_is_large_and_unique():
    assert len(CORPUS) >= 100
    assert len({c.id for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=lambda c: c.id)
def test_bad_input_is_one_line_and_exit_2(case: Case, tmp_path: Path):
    for name, body in case.files.items():
        (tmp_path / name).write_bytes(body if isinstance(body, bytes) else body.encode())
    if case.catalog is not None:
        spec = toy_spec()
        case.catalog(spec)
        spec.write(tmp_path / "cat")
    argv = [a.replace("{d}", str(tmp_path)) for a in case.argv]
    try:
        run = subprocess.run([sys.executable, "-m", "jigsaw.scripts.cli", *argv], cwd=tmp_path, capture_output=True,
                             text=True, errors="replace", timeout=case.timeout_s, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"no answer within {case.timeout_s:g} s (a hang, or a bad input accepted): jigsaw {' '.join(argv)}")
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, f"exit {run.returncode}, stderr: {run.stderr[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("jigsaw: error: "), run.stderr[-2000:]
    assert "Traceback" not in run.stderr
