"""The ray backend beyond what test_shim_serving runs on both backends: a node lost under load, and the inputs it
refuses (no cluster at the address, a plan whose slices the cluster's nodes do not offer; at start-up one line
and exit 2, during a run the plan in force holds). The local cluster is conftest's ``ray_cluster``: skipped
without the ``ray`` extra, except the check that says how to install it."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import RAY_NODE_SLICES, daemon_in_thread, load_during, need_ray, seat_each_replica, status_of

from jigsaw.agents.controller import Controller
from jigsaw.env.plan import GpuLayout, Plan
from jigsaw.profiles.errors import ShimError
from jigsaw.scripts.cli import main
from jigsaw.serving_shim.backends import make_backend
from jigsaw.serving_shim.daemon import DaemonConfig
from jigsaw.serving_shim.loadgen import request_bodies

APP = "ar_assistant"
LOAD_RPS = 6.0  # see test_shim_serving
START_TIMEOUT_S = 180.0


def _whole_gpus(plan: Plan, n: int) -> Plan:
    """``plan`` with each task on whole GPUs (7g), ``n`` instances in all: 7 slices a worker."""
    tasks = list(plan.apps[APP])
    counts = {t: n // len(tasks) + (i < n % len(tasks)) for i, t in enumerate(tasks)}
    apps = {APP: {t: dataclasses.replace(c, segment="7g.80gb", replicas=counts[t], mps_workers=1)
                  for t, c in plan.apps[APP].items()}}
    layouts = tuple(GpuLayout(("7g.80gb",), ((f"{APP}/{t}",),)) for t in tasks for _ in range(counts[t]))
    return dataclasses.replace(plan, apps=apps, gpus=layouts)


def test_without_ray_installed_the_backend_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.delitem(sys.modules, "jigsaw.serving_shim.backends.ray", raising=False)
    with pytest.raises(ShimError, match=r"pip install 'jigsaw\[ray\]'"):
        make_backend("ray", tmp_path)


def test_no_cluster_at_the_address_is_one_line_and_exit_2(tmp_path, capsys):
    need_ray()
    code = main(["daemon", "--app", APP, "--backend", "ray", "--ray-address", "127.0.0.1:9", "--port", "0",
                 "--run-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no Ray cluster answers at 127.0.0.1:9" in err, err
    assert main(["daemon", "--app", APP, "--backend", "cpu", "--ray-address", "auto", "--port", "0",
                 "--run-dir", str(tmp_path)]) == 2
    assert "--ray-address" in capsys.readouterr().err


def test_a_plan_whose_slices_no_node_offers_is_refused_at_start_up(ray_cluster, tmp_path, capsys, builtin_catalog):
    plan = Controller(builtin_catalog, "h100", [APP], 1).decide({APP: 5.0}).plan
    too_big = _whole_gpus(plan, 3)  # 21 slices; the nodes offer 2 x 7
    too_big.to_json(tmp_path / "big.json")
    code = main(["daemon", "--app", APP, "--backend", "ray", "--ray-address", ray_cluster.address, "--gpus", "3",
                 "--plan", str(tmp_path / "big.json"), "--port", "0", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err, err
    assert last.startswith("jigsaw: error:") and "plan needs 21 slices" in last and f"offer {2 * RAY_NODE_SLICES}" in last


def test_a_handler_that_fails_in_its_actor_stops_the_daemon_at_start_up_in_one_line(ray_cluster, tmp_path, capsys):
    catalog_dir = tmp_path / "catalog"
    shutil.copytree(Path(__file__).resolve().parents[1] / "profiles" / "data", catalog_dir)
    app_file = catalog_dir / "apps" / "social_media.yaml"
    app = yaml.safe_load(app_file.read_text())
    app["tasks"]["tag"]["handler"] = {"factory": "jigsaw.profiles.builtin_handlers:builtin",
                                      "options": {"no_such_option": 1}}  # imports here, fails where it loads
    app_file.write_text(yaml.safe_dump(app))
    code = main(["daemon", "--app", "social_media", "--backend", "ray", "--ray-address", ray_cluster.address,
                 "--catalog", str(catalog_dir), "--port", "0", "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err, err
    assert last.startswith("jigsaw: error:") and "handler did not load" in last and "no_such_option" in last, last


@pytest.fixture(scope="module")
def ray_daemon(ray_cluster, tmp_path_factory, builtin_catalog):
    """A daemon on the ray backend over a third node (a node to lose), serving a plan of 5 workers."""
    ray_cluster.add_node(num_cpus=1, resources={"jigsaw_slices": RAY_NODE_SLICES})
    ray_cluster.wait_for_nodes()
    run_dir = tmp_path_factory.mktemp("ray")
    plan = seat_each_replica(Controller(builtin_catalog, "h100", [APP], 1).decide({APP: 5.0}).plan, APP,
                             detect={"replicas": 2}, recognise={"replicas": 2}, segment={"replicas": 1})
    plan.to_json(run_dir / "start.json")
    cfg = DaemonConfig(backend="ray", apps=(APP,), run_dir=run_dir, port=0, interval_s=3600.0, gpus=2,
                       plan_file=str(run_dir / "start.json"), ray_address=ray_cluster.address)
    with daemon_in_thread(cfg) as (daemon, loop):
        yield daemon, loop, plan, request_bodies(builtin_catalog, [APP])[APP]


def test_workers_spread_over_the_nodes_and_a_lost_node_loses_nothing(ray_daemon, ray_cluster):
    daemon, _, _, bodies = ray_daemon
    before = status_of(daemon.url)["workers"]
    hosts = {w["node"] for w in before}
    assert len(before) == 5 and all(w["state"] == "ready" for w in before)
    assert len(hosts) >= 2, before  # 5 workers of 1-2 slices on nodes of 7: Ray spreads them
    victim_id = max(hosts, key=lambda n: sum(w["node"] == n for w in before))
    victim = next(n for n in ray_cluster.worker_nodes if n.node_id == victim_id)
    lost = sum(w["node"] == victim_id for w in before)

    summary = load_during(daemon.url, APP, bodies, LOAD_RPS, 6.0, lambda: ray_cluster.remove_node(victim))
    print(f"node with {lost} of {len(before)} workers lost under load: {summary}")
    assert summary["lost"] == 0 and summary["errors"] == 0, summary
    assert summary["answered"] == summary["sent"] > 0  # every request answered; a task whose only replica was
    # on the node drops its requests (503) until the replacement serves
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        status = status_of(daemon.url)
        ready = [w for w in status["workers"] if w["state"] == "ready"]
        if len(ready) == len(before):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the lost node's workers were not replaced: {status['workers']}")
    assert status["worker_restarts_by_cause"]["died"] == lost
    assert victim_id not in {w["node"] for w in ready}
    assert sorted(w["task"] for w in ready) == sorted(w["task"] for w in before)
    served = load_during(daemon.url, APP, bodies, LOAD_RPS, 2.0, lambda: None)
    assert served["lost"] == 0 and served["ok"] + served["violated"] > 0, served  # serving again


def test_during_a_run_a_plan_the_cluster_cannot_hold_is_refused_and_the_plan_in_force_holds(ray_daemon):
    daemon, loop, plan, _ = ray_daemon
    before = status_of(daemon.url)
    too_big = _whole_gpus(plan, 3)
    with pytest.raises(ShimError, match="plan needs 21 slices"):
        asyncio.run_coroutine_threadsafe(daemon.apply(too_big), loop).result(60)
    after = status_of(daemon.url)
    assert after["plan"] == before["plan"]
    assert [(w["name"], w["state"]) for w in after["workers"]] == [(w["name"], w["state"]) for w in before["workers"]]
