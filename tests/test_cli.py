"""The `jigsaw` command as a user runs it: JSON contracts, exit statuses, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def jigsaw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jigsaw.scripts.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_solve_json_has_the_documented_keys():
    run = jigsaw("solve", "--app", "social_media,traffic_analysis", "--rps", "200,50", "--gpus", "2", "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["status"] == "optimal"
    assert {"status", "slices_used", "gpus_used", "solve_seconds", "apps", "gpus"} <= set(doc)
    for app in ("social_media", "traffic_analysis"):
        for task in doc["apps"][app]["tasks"].values():
            assert {"variant", "segment", "batch", "replicas", "budget_ms"} <= set(task)
    assert all(isinstance(g["partition"], list) and g["partition"] for g in doc["gpus"])
    assert doc["gpus_used"] == len(doc["gpus"]) <= 2


def test_solve_json_is_a_plan_the_daemon_starts_from(tmp_path):
    """Every plan error's fix says `jigsaw solve --json > plan.json`: that document must be one `--plan` accepts."""
    from jigsaw.serving_shim.daemon import Daemon, DaemonConfig

    run = jigsaw("solve", "--app", "social_media", "--rps", "50", "--gpus", "1", "--json")
    assert run.returncode == 0, run.stderr
    (tmp_path / "plan.json").write_text(run.stdout)
    daemon = Daemon(DaemonConfig("cpu", ("social_media",), tmp_path / "run", plan_file=str(tmp_path / "plan.json")))
    assert daemon.first_plan is not None and daemon.plan_source == "file"
    assert daemon.first_plan.to_dict() == json.loads(run.stdout)["plan"]


def test_infeasible_demand_exits_1_with_the_binding_constraint():
    run = jigsaw("solve", "--app", "ar_assistant", "--rps", "50000", "--gpus", "1", "--json")
    assert run.returncode == 1
    doc = json.loads(run.stdout)
    assert doc["status"] == "infeasible" and "GPU" in doc["reason"]


def test_trace_show_prints_a_summary_and_writes_a_plot(tmp_path):
    png = tmp_path / "trace.png"
    run = jigsaw("trace", "show", "profiles/data/traces/diurnal_3apps.csv", "--plot", str(png))
    assert run.returncode == 0, run.stderr
    assert "held out" in run.stdout and "social_media" in run.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run.stderr == f"wrote {png}\n" and "wrote" not in run.stdout  # stdout: the summary alone


def test_solve_json_stays_pure_json_and_the_mig_config_written_is_named_on_stderr(tmp_path):
    mig = tmp_path / "mig.yaml"
    run = jigsaw("solve", "--app", "social_media", "--rps", "50", "--gpus", "1", "--json", "--mig-config", str(mig))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["status"] == "optimal" and mig.exists()
    assert run.stderr.startswith(f"wrote {mig} (apply: nvidia-mig-parted") and run.stderr.count("\n") == 1


def test_capacity_json_and_a_feature_set_nothing_fits_ends_in_a_few_checks():
    """Whole GPUs (S off) cannot hold social_media's three tasks on one GPU: the bisection says so in a few checks
    (it went on ~1,000 times towards 0 req/s: a minute more at 4 GPUs)."""
    run = jigsaw("capacity", "--gpus", "1", "--app", "social_media", "--json")
    assert run.returncode == 0, run.stderr
    sets = json.loads(run.stdout)["feature_sets"]  # stdout stays pure JSON: the bar is on stderr
    assert sets["none"]["max_rps"] == 0 and "no plan fits 1 GPUs even at" in sets["none"]["reason"]
    assert sets["none"]["checks"] <= 10 and sets["A+S+T"]["max_rps"] > 0


def test_bad_trace_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("time_s,app,rps\n0,a,1\n60,a,abc\n")
    run = jigsaw("trace", "show", str(bad))
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert f"{bad}:3" in run.stderr and "rps" in run.stderr
