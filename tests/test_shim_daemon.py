"""`jigsaw daemon` as a user runs it: start, serve, SIGTERM, restart with the persisted plan; and the bad
inputs that must be one line and exit status 2 before anything starts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import start_daemon

from jigsaw.agents.ppo import DEFAULT_POLICY
from jigsaw.scripts.cli import main
from jigsaw.serving_shim.payloads import sample_images


def start_ar_daemon(run_dir: Path) -> tuple[subprocess.Popen[str], str]:
    return start_daemon("--app", "ar_assistant", "--port", "0", "--run-dir", str(run_dir), "--interval", "3600",
                        "--max-workers", "3")


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def stop(proc: subprocess.Popen[str], pids: list[int]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    time.sleep(0.1)
    for pid in pids:  # the daemon stopped (and reaped) every worker it started
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_daemon_serves_stops_on_sigterm_and_restores_its_plan(tmp_path):
    proc, url = start_ar_daemon(tmp_path)
    try:
        req = urllib.request.Request(f"{url}/v1/apps/ar_assistant/infer", data=sample_images(1)[0], method="POST",
                                     headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200 and json.loads(r.read())["status"] in ("ok", "violated")
        status = get(f"{url}/status")
        assert status["plan_source"] == "controller" and status["decision_sources"] == {"ilp": 1}
        assert status["mig_config"]["mig-configs"]["jigsaw"][0]["mig-enabled"]  # the layout, for nvidia-mig-parted
        assert len(status["workers"]) == 3 and all(w["state"] == "ready" for w in status["workers"])
        metrics = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
        assert 'jigsaw_decisions_total{source="ilp"} 1' in metrics
        assert (tmp_path / "plan.json").exists() and any((tmp_path / "tensorboard").iterdir())
    finally:
        stop(proc, [w["pid"] for w in status["workers"]])

    proc, url = start_ar_daemon(tmp_path)
    try:
        again = get(f"{url}/status")
        assert again["plan_source"] == "restored" and again["plan"] == status["plan"]
        assert again["decision_sources"] == {}  # restored, not decided
    finally:
        stop(proc, [w["pid"] for w in again["workers"]])


def _one_line_exit_2(capsys, *args: str) -> str:
    assert main(["daemon", "--app", "ar_assistant", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_bad_daemon_inputs_are_one_line_and_exit_2(tmp_path, capsys, builtin_catalog):
    from jigsaw.agents.controller import Controller

    plan = Controller(builtin_catalog, "h100", ["ar_assistant"], 1).decide({"ar_assistant": 1.0}).plan
    doc = plan.to_dict()
    doc["apps"]["ar_assistant"]["segment"]["batch"] = 3
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    err = _one_line_exit_2(capsys, "--plan", str(tmp_path / "bad.json"), "--run-dir", str(tmp_path / "r"))
    assert "bad.json" in err and "batch" in err
    err = _one_line_exit_2(capsys, "--policy", str(tmp_path / "p.zip"), "--run-dir", str(tmp_path / "r"))
    assert "no such policy file" in err
    err = _one_line_exit_2(capsys, "--policy", str(DEFAULT_POLICY), "--run-dir", str(tmp_path / "r"))
    assert "trained for social_media,traffic_analysis,ar_assistant on 2..16 x h100" in err  # this daemon: 1 app, 1 GPU
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        err = _one_line_exit_2(capsys, "--port", str(held.getsockname()[1]), "--run-dir", str(tmp_path / "r"))
    assert "in use" in err
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # no NVML: the GPU backends must refuse in one line
        for backend in ("mps", "mig"):
            err = _one_line_exit_2(capsys, "--backend", backend, "--run-dir", str(tmp_path / "r"))
            assert "--backend cpu" in err
