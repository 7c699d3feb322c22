"""The README's commands, in its order, in a fresh clone: what a new user runs first must run clean.

Clones SOURCE (default: this repository; a clone holds its committed state only) into a temporary folder and runs
`make demo`, `make test` (unless --skip-test: ~9 min on 2 cores) and the `jigsaw` commands the README shows,
with small sizes where the README shows the option (--timesteps, --intervals, --duration…), in the clone with
.venv/bin first on PATH, as the README's `source .venv/bin/activate`; their stderr (progress) shows as they run.
It stops at the first command that exits non-zero, prints a Python traceback, writes other than JSON where it
should, misses a file it should write, or whose README line is gone (then this list needs updating), and shows
the end of its output; every command's output is kept in the clone's check-readme/ folder. Stdlib only: it
runs before any venv exists. Prints one JSON line last: {"ok", "source", "clone", "commands": [{"cmd", "seconds",
"status"}], "not_run": {command: why}}; exit status 0 when every command ran clean.
Usage: python scripts/check_readme.py [SOURCE] [--skip-test] [--keep] [--quiet]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
TRACE = "profiles/data/traces/diurnal_3apps.csv"
DAEMON_READY_S = 180.0  # workers import torch: slow on a loaded 2-core machine
NOT_RUN = {  # shown in the README, left out here, and why
    "make bench / scripts/bench_*.py": "benchmarks: minutes each, and their figures are the point, not a pass",
    "python scripts/tune_ilp_sticky.py --write": "rewrites shipped settings from a long tuning run",
    "python scripts/measure_startup.py --write": "rewrites the catalog's measured start-up times",
    "pip install torch --index-url …/whl/cpu": "an alternative install, from the network",
    "tensorboard --logdir …": "a viewer that serves until stopped",
    "pip install -e '.[ray]', ray start, jigsaw daemon --backend ray, jigsaw ray-resources":
        "an optional extra, a Ray cluster and GPU nodes (tests/test_shim_ray*.py start a local cluster)",
}


@dataclass
class Step:
    """One command: ``argv`` run in the clone, ``readme`` a text the README must still show for it."""

    readme: str
    argv: list[str]
    timeout_s: float = 900.0
    json_stdout: bool = False  # stdout must parse as one JSON document
    files: list[str] = field(default_factory=list)  # paths in the clone it must have written


def steps(port: int, skip_test: bool) -> list[Step]:
    url = f"http://127.0.0.1:{port}"
    py = ".venv/bin/python"
    return [
        Step("make demo", ["make", "demo"], 2400, files=["runs/demo/evaluation.png", "runs/demo/summary.md"]),
        *([] if skip_test else [Step("make test", ["make", "test"], 3600)]),
        Step("jigsaw solve --app social_media,traffic_analysis,ar_assistant --rps 500,100,200 --gpus 4",
             ["jigsaw", "solve", "--app", "social_media,traffic_analysis,ar_assistant", "--rps", "500,100,200",
              "--gpus", "4"]),
        Step("`jigsaw solve --json > plan.json`", ["jigsaw", "solve", "--app", "social_media,traffic_analysis,"
             "ar_assistant", "--rps", "500,100,200", "--gpus", "4", "--json", "--mig-config", "mig.yaml"],
             json_stdout=True, files=["mig.yaml"]),
        Step("jigsaw capacity --gpus 120 [--app …] [--json]", ["jigsaw", "capacity", "--gpus", "4", "--json"],
             json_stdout=True),
        Step(f"jigsaw trace show {TRACE} [--plot trace.png]",
             ["jigsaw", "trace", "show", TRACE, "--plot", "trace.png"], files=["trace.png"]),
        Step('env = gymnasium.make("jigsaw/JigsawServe-v0")', [py, "-c", "import gymnasium, jigsaw.env; "
             "env = gymnasium.make('jigsaw/JigsawServe-v0', gpus=8); obs, info = env.reset(seed=0)"]),
        Step("jigsaw train [--out runs/policy.npz] [--hyperparams FILE] [--timesteps N] [--n-envs N]",
             ["jigsaw", "train", "--out", "runs/policy.npz", "--timesteps", "2048", "--n-envs", "2"],
             json_stdout=True, files=["runs/policy.npz", "runs/policy.json", "runs/policy_run/model.zip"]),
        Step("[--resume CKPT]", ["jigsaw", "train", "--out", "runs/policy.npz", "--timesteps", "4096", "--n-envs",
                                 "2", "--resume", "runs/policy_run/model.zip"], json_stdout=True),
        Step("jigsaw evaluate --policy agents/policies/default.npz --json",
             ["jigsaw", "evaluate", "--policy", "agents/policies/default.npz", "--json", "--intervals", "1",
              "--seeds", "0", "--logdir", "runs/evaluate/check"], json_stdout=True,
             files=["runs/evaluate/check/evaluation.png"]),
        Step("jigsaw export-policy CHECKPOINT.zip [--settings SIDECAR.json] --out NAME.npz",
             ["jigsaw", "export-policy", "runs/policy_run/model.zip", "--out", "runs/exported.npz"],
             json_stdout=True, files=["runs/exported.npz", "runs/exported.json"]),
        Step("jigsaw profile --family classification --variants resnet18,resnet50 --batches 1,2,4,8,16,32,64",
             ["jigsaw", "profile", "--family", "classification", "--variants", "resnet18", "--batches", "1,2",
              "--sm-shares", "mig", "--out", "my_cpu.csv"], files=["my_cpu.csv", "my_cpu.provenance.json"]),
        # the daemon: started in the background by this step, stopped (SIGTERM) by the last
        Step("jigsaw daemon --backend cpu --app ar_assistant [--port 8080] [--run-dir jigsaw-run]",
             ["jigsaw", "daemon", "--backend", "cpu", "--app", "ar_assistant", "--port", str(port), "--run-dir",
              "jigsaw-run", "--interval", "30"], DAEMON_READY_S),
        Step(f"jigsaw loadgen --trace {TRACE} --url http://127.0.0.1:8080 --duration 60 --rate-scale 0.1",
             ["jigsaw", "loadgen", "--trace", TRACE, "--url", url, "--duration", "10", "--rate-scale", "0.1"]),
        Step("curl -H 'Content-Type: image/png' --data-binary @photo.png",
             ["curl", "--fail-with-body", "--silent", "--show-error", "-H", "Content-Type: image/png",
              "--data-binary", "@photo.png", f"{url}/v1/apps/ar_assistant/infer"], 60, json_stdout=True),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_photo(clone: Path) -> None:
    """A PNG for the README's curl, written by the clone's Pillow."""
    subprocess.run([str(clone / ".venv/bin/python"), "-c", "import numpy as np; from PIL import Image; "
                    "Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))"
                    ".save('photo.png')"], cwd=clone, check=True)


def wait_ready(url: str, daemon: subprocess.Popen[bytes], timeout_s: float) -> str | None:
    """None once ``/ready`` answers 200; else why not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            return f"the daemon exited ({daemon.returncode}) before it was ready"
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as answer:
                if answer.status == 200:
                    return None
        except OSError:
            pass
        time.sleep(1)
    return f"not ready after {timeout_s:.0f} s"


def execute(step: Step, clone: Path, env: dict[str, str], log_dir: Path, index: int, echo: bool) -> str | None:
    """Run ``step`` to its end, its stdout and stderr to ``log_dir`` (stderr, its progress, also to ours when
    ``echo``); None when it ran clean, else why not."""
    stdout, stderr = log_dir / f"{index:02d}.out", log_dir / f"{index:02d}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(step.argv, cwd=clone, env=env, stdout=out, stderr=subprocess.PIPE,
                                start_new_session=True)  # its own group: a timeout stops make's children too
        copier = threading.Thread(target=copy, args=(proc.stderr, err, echo))
        copier.start()
        try:
            code = proc.wait(step.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return f"still running after {step.timeout_s:.0f} s"
        finally:
            copier.join()
    return verdict(step, code, stdout, stderr, clone)


def copy(source: IO[bytes], log: IO[bytes], echo: bool) -> None:
    while chunk := source.read1(65536):  # type: ignore[attr-defined]
        log.write(chunk)
        if echo:
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()


def verdict(step: Step, code: int, stdout: Path, stderr: Path, clone: Path) -> str | None:
    text = stdout.read_text(errors="replace") + stderr.read_text(errors="replace")
    if "Traceback (most recent call last)" in text:
        return "printed a Python traceback"
    if code != 0:
        return f"exit status {code}"
    if step.json_stdout:
        try:
            json.loads(stdout.read_text())
        except ValueError as e:
            return f"stdout is not one JSON document ({e})"
    missing = [f for f in step.files if not (clone / f).exists()]
    return f"did not write {', '.join(missing)}" if missing else None


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default=str(ROOT), help="repository to clone (default: this one)")
    parser.add_argument("--skip-test", action="store_true", help="skip `make test` (~9 min on 2 cores)")
    parser.add_argument("--keep", action="store_true", help="keep the clone (default: removed when all ran clean)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not echo the commands' stderr (their progress)")
    args = parser.parse_args()
    clone = Path(tempfile.mkdtemp(prefix="jigsaw-readme-")) / "jigsaw"
    subprocess.run(["git", "clone", "--quiet", args.source, str(clone)], check=True)
    log_dir = clone / "check-readme"
    log_dir.mkdir()
    readme = (clone / "README.md").read_text()
    port = free_port()
    env = {**os.environ, "PATH": f"{clone / '.venv/bin'}{os.pathsep}{os.environ['PATH']}",
           "VIRTUAL_ENV": str(clone / ".venv")}
    env.pop("PYTHONPATH", None)  # the README runs through the install
    todo = steps(port, args.skip_test)
    done: list[dict[str, object]] = []
    daemon: subprocess.Popen[bytes] | None = None
    failure = None
    try:
        for i, step in enumerate(todo, 1):
            cmd = " ".join(step.argv)
            print(f"[{i}/{len(todo)}] {cmd}", file=sys.stderr, flush=True)
            start = time.monotonic()
            if step.readme not in readme:
                failure = f"the README no longer shows {step.readme!r}: update scripts/check_readme.py"
            elif step.argv[1] == "daemon":
                with (log_dir / f"{i:02d}.err").open("wb") as log:  # the daemon holds its own descriptor
                    daemon = subprocess.Popen(step.argv, cwd=clone, env=env, stdout=log, stderr=log)
                failure = wait_ready(f"http://127.0.0.1:{port}", daemon, step.timeout_s)
            else:
                if step.argv[0] == "curl":
                    write_photo(clone)
                failure = execute(step, clone, env, log_dir, i, not args.quiet)
            seconds = round(time.monotonic() - start, 1)
            done.append({"cmd": cmd, "seconds": seconds, "status": "failed" if failure else "ok"})
            if failure:
                print(f"FAILED: {cmd}: {failure}\n{tail(log_dir / f'{i:02d}.out')}\n{tail(log_dir / f'{i:02d}.err')}",
                      file=sys.stderr)
                break
            print(f"    ok, {seconds} s", file=sys.stderr, flush=True)
    finally:
        if daemon is not None:
            start = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            try:
                code = daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                code = daemon.wait()
            log = log_dir / f"{next(i for i, s in enumerate(todo, 1) if s.argv[1] == 'daemon'):02d}.err"
            why = "printed a Python traceback" if "Traceback (most recent call" in log.read_text(errors="replace") \
                else f"exit status {code} on SIGTERM" if code != 0 else None
            done.append({"cmd": "stop the daemon (SIGTERM)", "seconds": round(time.monotonic() - start, 1),
                         "status": "failed" if why else "ok"})
            if why and not failure:
                failure = why
                print(f"FAILED: the daemon: {why}\n{tail(log)}", file=sys.stderr)
    ok = failure is None
    if ok and not args.keep:
        shutil.rmtree(clone.parent)
    print(json.dumps({"ok": ok, "source": args.source, "clone": None if ok and not args.keep else str(clone),
                      "commands": done, "not_run": NOT_RUN}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
