"""`jigsaw evaluate`: the documented JSON, the files it writes (a TensorBoard run per system under common tags,
the plot, the tables), every system serving the same requests, and one-line refusals of bad input."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from dataclasses import asdict
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jigsaw.agents.baselines import build_systems
from jigsaw.agents.evaluate import TAGS, evaluate_systems
from jigsaw.agents.ppo import DEFAULT_POLICY
from jigsaw.env.candidates import SolverOptions
from jigsaw.env.gym_env import DEFAULT_TRACES, EnvConfig
from jigsaw.profiles.catalog import load_catalog
from jigsaw.profiles.progress import progress_bar
from jigsaw.scripts.cli import main

FIGURES = {"slices_mean", "slices_p95", "violation_pct", "violation_pct_servable", "violation_pct_in_transition",
           "reconfigs_per_h", "accuracy_mean", "fallback_pct", "decide_ms_p50", "decide_ms_p99"}
SUMMARY_KEYS = FIGURES | {f"{k}_sd" for k in FIGURES}
SYSTEMS = "zero_actor,random_actor,ilp,ilp_sticky,ilp_window,static_peak,a_t,greedy"
ONE_TRACE = DEFAULT_TRACES[0]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    logdir = tmp_path_factory.mktemp("eval")
    buf = io.StringIO()  # capsys is per test; the run is shared by the module's tests
    with contextlib.redirect_stdout(buf):
        assert main(["evaluate", "--policy", str(DEFAULT_POLICY), "--systems", SYSTEMS, "--trace", ONE_TRACE,
                     "--intervals", "3", "--seeds", "0,1", "--json", "--time-limit", "3", "--logdir", str(logdir)]) == 0
    return json.loads(buf.getvalue()), logdir


def test_json_has_every_system_with_the_documented_keys(evaluated: tuple[dict, Path]) -> None:
    doc, _ = evaluated
    assert doc["seeds"] == [0, 1]
    assert set(doc["systems"]) == set(SYSTEMS.split(","))
    for name, s in doc["systems"].items():
        assert set(s) == SUMMARY_KEYS, name
        assert s["slices_mean"] > 0 and 0.0 <= s["violation_pct"] <= 100.0 and 0.0 < s["accuracy_mean"] <= 1.0
        assert s["decide_ms_p50"] <= s["decide_ms_p99"]
        assert s["violation_pct_in_transition"] <= s["violation_pct"] and s["reconfigs_per_h"] >= 0
    assert doc["systems"]["static_peak"]["reconfigs_per_h"] == 0  # one plan, never changed
    # only the random actor decides differently per seed; arrivals differ per seed for every system
    assert doc["systems"]["ilp"]["slices_mean_sd"] == 0 and doc["systems"]["ilp"]["violation_pct_sd"] is not None
    assert doc["systems"]["ilp"]["fallback_pct"] is None  # no proposer, no fallback
    assert 0.0 <= doc["systems"]["greedy"]["fallback_pct"] <= 100.0
    # A+T plans whole GPUs: at the same demand it needs more slices than the ILP with every lever
    assert doc["systems"]["a_t"]["slices_mean"] > doc["systems"]["ilp"]["slices_mean"]


def test_writes_tensorboard_runs_plot_and_tables(evaluated: tuple[dict, Path]) -> None:
    doc, logdir = evaluated
    for name in doc["systems"]:
        acc = EventAccumulator(str(logdir / name))
        acc.Reload()
        assert set(TAGS) <= set(acc.Tags()["tensors"]), name  # the scalars plugin's tensor form
        assert all(acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars" for tag in TAGS)
        assert [e.step for e in acc.Tensors("eval/slices")] == [0, 1, 2]
    assert (logdir / "evaluation.png").stat().st_size > 10_000
    assert "| ilp |" in (logdir / "summary.md").read_text()
    with (logdir / "intervals.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 * len(doc["systems"])
    # every system served the same requests: arrivals are seeded per (seed, trace), not per system
    per_step: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        per_step.setdefault((r["seed"], r["step"]), set()).add(r["requests"])
    assert all(len(v) == 1 for v in per_step.values())


def test_same_seed_same_figures() -> None:
    catalog = load_catalog()
    config = EnvConfig(traces=(ONE_TRACE,), part="held_out", mode="sim")
    runs = [evaluate_systems(catalog, config, build_systems(catalog, config, ["static_peak"], SolverOptions()), 2,
                             (7,)) for _ in range(2)]
    figures = [{k: v for k, v in asdict(r.summaries["static_peak"].mean).items()
                if not k.startswith(("decide", "fallback"))} for r in runs]  # decision times are wall clock
    assert figures[0] == figures[1]


@pytest.mark.parametrize(("args", "message"), [
    (["--policy", "missing.zip"], "no such policy file"),
    (["--policy", str(DEFAULT_POLICY), "--gpus", "17"], "the policy was trained for"),  # past its 2..16 GPUs
    (["--policy", str(DEFAULT_POLICY), "--gpus", "1"], "the policy was trained for"),
    (["--policy", str(DEFAULT_POLICY), "--app", "social_media"], "the policy was trained for"),
    (["--systems", "ilp,nonsense"], "unknown system(s) nonsense"),
    (["--systems", "policy"], "the policy systems need a policy"),
    (["--systems", "random_actor"], "the policy systems need a policy"),
    (["--seeds", "0,x"], "seeds"),
    (["--seeds", "1,1"], "seeds"),
    (["--intervals", "0"], "intervals"),
    (["--logdir", "/proc/no-such-dir/x"], "cannot write there"),
    (["--trace", "TINY"], "no held-out part"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    tiny = tmp_path / "tiny.csv"  # two minutes of trace: no held-out part of whole intervals
    tiny.write_text("time_s,app,rps\n" + "".join(f"{t},{a},10\n" for t in (0, 60) for a in
                                                  ("social_media", "traffic_analysis", "ar_assistant")))
    args = [str(tiny) if a == "TINY" else a for a in args]
    assert main(["evaluate", "--intervals", "1", "--logdir", str(tmp_path / "ev"), *args]) == 2
    err = capsys.readouterr().err.splitlines()  # the error alone: what evaluate does is said once the inputs are read
    assert len(err) == 1 and err[0].startswith("jigsaw: error") and message in err[0], err


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_it_shows_progress_and_says_what_it_wrote_on_stderr(json_flag: list[str], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    logdir = tmp_path / "ev"
    assert main(["evaluate", "--systems", "static_peak", "--trace", ONE_TRACE, "--intervals", "1", "--seeds", "0",
                 "--logdir", str(logdir), *json_flag]) == 0
    out, err = capsys.readouterr()
    assert "evaluating 1 systems" in err  # what it does first (the bar follows once the work takes a second)
    assert err.rstrip().splitlines()[-1].startswith(f"wrote {logdir}/: evaluation.png")
    assert (logdir / "evaluation.png").exists()
    if json_flag:
        assert "static_peak" in json.loads(out)["systems"]  # stdout stays pure JSON
    with progress_bar() as bar:
        assert not bar.disable  # a bar also when stderr is a pipe or a log, as here
