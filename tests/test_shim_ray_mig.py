"""The ray backend on MIG nodes: each MIG instance a node offers is a Ray resource of its own, and the plan's
instances go on instances of their profile (the resources of a GPU node; placement on the offering node; a plan
change keeping the unchanged workers on their instances; a lost node's workers restarted on instances of the
nodes left; a plan needing more instances than offered refused). The cluster is one of its own whose nodes offer
made-up instances, so the workers run on the CPU with the instance's uuid in CUDA_VISIBLE_DEVICES. A module apart
from test_shim_ray: Ray joins one cluster per process, so the two modules' daemons must not overlap."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
from conftest import RAY_NODE_SLICES, daemon_in_thread, load_during, need_ray, seat_each_replica, status_of

from jigsaw.agents.controller import Controller
from jigsaw.profiles.errors import ShimError
from jigsaw.serving_shim.daemon import DaemonConfig
from jigsaw.serving_shim.loadgen import request_bodies

APP = "ar_assistant"
LOAD_RPS = 6.0  # see test_shim_serving
START_TIMEOUT_S = 180.0


def test_a_gpu_nodes_resources_name_its_slices_and_each_mig_instance():
    need_ray()
    from jigsaw.profiles.catalog import load_catalog
    from jigsaw.serving_shim.backends.nvidia import Gpu, MigDevice
    from jigsaw.serving_shim.backends.ray import SLICES, mig_instance, node_resources

    h100 = load_catalog().gpu("h100")
    cut = Gpu(0, "H100", "GPU-a", True, (MigDevice(0, "MIG-aa", "3g.40gb"), MigDevice(0, "MIG-ab", "2g.20gb"),
                                         MigDevice(0, "MIG-ac", "2g.20gb")))
    whole = Gpu(1, "H100", "GPU-b", False, ())
    resources = node_resources([cut, whole], h100)
    assert resources == {SLICES: 3 + 2 + 2 + 7, "jigsaw_mig.3g.40gb.MIG-aa": 1.0, "jigsaw_mig.2g.20gb.MIG-ab": 1.0,
                         "jigsaw_mig.2g.20gb.MIG-ac": 1.0}
    assert [mig_instance(r) for r in resources] == [None, ("3g.40gb", "MIG-aa"), ("2g.20gb", "MIG-ab"),
                                                    ("2g.20gb", "MIG-ac")]
    with pytest.raises(ShimError, match=r"1g\.5gb"):
        node_resources([Gpu(0, "A100", "GPU-c", True, (MigDevice(0, "MIG-x", "1g.5gb"),))], h100)


MIG_NODES = 3
INSTANCES_PER_PROFILE = 3  # on each node, of each profile the plan uses: the 5 workers fit on two nodes


@pytest.fixture(scope="module")
def mig_daemon(tmp_path_factory, builtin_catalog):
    """A daemon on the ray backend over a cluster of its own whose three nodes offer (made-up) MIG instances, three of
    each profile the plan uses on each; the workers run on the CPU with the instance's uuid in CUDA_VISIBLE_DEVICES."""
    need_ray()
    from ray.cluster_utils import Cluster

    from jigsaw.serving_shim.backends.ray import mig_resource

    plan = seat_each_replica(Controller(builtin_catalog, "h100", [APP], 1).decide({APP: 5.0}).plan, APP,
                             detect={"replicas": 2}, recognise={"replicas": 2}, segment={"replicas": 1})
    profiles = sorted({c.segment for c in plan.apps[APP].values()})
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    owner: dict[str, Any] = {}  # uuid -> the node offering it
    try:
        for n in range(MIG_NODES):
            uuids = {(p, f"MIG-{n:04d}{i:04d}-0000-0000-0000-{k:012d}") for k, p in enumerate(profiles)
                     for i in range(INSTANCES_PER_PROFILE)}
            node = cluster.add_node(num_cpus=1, resources={"jigsaw_slices": RAY_NODE_SLICES,
                                                           **{mig_resource(p, u): 1 for p, u in uuids}})
            owner |= {u: node for _, u in uuids}
        cluster.wait_for_nodes()
        run_dir = tmp_path_factory.mktemp("mig")
        plan.to_json(run_dir / "start.json")
        cfg = DaemonConfig(backend="ray", apps=(APP,), run_dir=run_dir, port=0, interval_s=3600.0, gpus=2,
                           plan_file=str(run_dir / "start.json"), ray_address=cluster.address)
        with daemon_in_thread(cfg) as (daemon, loop):
            yield daemon, loop, plan, owner, cluster, request_bodies(builtin_catalog, [APP])[APP]
    finally:
        cluster.shutdown()


def _instances(workers: list[dict[str, Any]]) -> dict[str, str]:
    """worker name -> the MIG uuid it runs on (from its place: "ray <profile> <uuid> (n sharing)")."""
    return {w["name"]: w["place"].split()[2] for w in workers}


def test_each_plan_instance_runs_on_an_instance_of_its_profile_on_the_node_offering_it(mig_daemon):
    daemon, _, plan, owner, _, _ = mig_daemon
    workers = status_of(daemon.url)["workers"]
    on = _instances(workers)
    assert len(workers) == 5 and all(w["state"] == "ready" for w in workers)
    assert len(set(on.values())) == 5  # one instance each, as the plan seats them
    for w in workers:
        assert w["place"].split()[1] == plan.apps[APP][w["task"]].segment
        assert w["node"] == owner[on[w["name"]]].node_id
    for task in ("detect", "recognise"):  # a task's replicas on different nodes: a lost node takes one of them
        nodes = [w["node"] for w in workers if w["task"] == task]
        assert len(nodes) == len(set(nodes)) == 2


def test_mig_workers_survive_a_plan_change_and_a_lost_node(mig_daemon):
    daemon, loop, plan, owner, cluster, bodies = mig_daemon
    before = status_of(daemon.url)["workers"]
    new = seat_each_replica(plan, APP, detect={"replicas": 2}, recognise={"replicas": 1}, segment={"replicas": 2})

    summary = load_during(daemon.url, APP, bodies, LOAD_RPS, 5.0, lambda: asyncio.run_coroutine_threadsafe(
        daemon.apply(new), loop).result(START_TIMEOUT_S))
    assert summary["lost"] == 0 and summary["errors"] == 0, summary
    after = status_of(daemon.url)["workers"]
    kept = {w["name"] for w in before} & {w["name"] for w in after}
    assert {w["task"] for w in after if w["name"] in kept} >= {"detect"}  # the unchanged task kept its workers
    assert all(_instances(before)[n] == _instances(after)[n] for n in kept)  # ... on their instances
    assert len(set(_instances(after).values())) == len(after) == 5

    on = _instances(after)
    victim = max({owner[u] for u in on.values()}, key=lambda node: sum(owner[u] is node for u in on.values()))
    lost = sum(owner[u] is victim for u in on.values())
    summary = load_during(daemon.url, APP, bodies, LOAD_RPS, 6.0, lambda: cluster.remove_node(victim))
    print(f"MIG node with {lost} of {len(after)} workers lost under load: {summary}")
    assert summary["lost"] == 0 and summary["errors"] == 0, summary
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        workers = status_of(daemon.url)["workers"]
        if sum(w["state"] == "ready" for w in workers) == len(after):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the lost node's workers were not replaced: {workers}")
    on = _instances(workers)
    assert all(owner[u] is not victim for u in on.values())  # replaced on instances of the nodes left
    assert all(w["node"] == owner[on[w["name"]]].node_id for w in workers)
    assert len(set(on.values())) == len(workers)


def test_a_plan_needing_more_instances_than_the_nodes_offer_is_refused(mig_daemon):
    daemon, loop, plan, _, _, _ = mig_daemon
    before = status_of(daemon.url)
    profile = plan.apps[APP]["segment"].segment
    offered = sum(1 for p in status_of(daemon.url)["devices"] for i in p["mig"] if i.startswith(profile + " "))
    greedy = seat_each_replica(plan, APP, segment={"replicas": offered + 1})
    with pytest.raises(ShimError, match=f"plan needs .*{re.escape(profile)}"):
        asyncio.run_coroutine_threadsafe(daemon.apply(greedy), loop).result(60)
    assert status_of(daemon.url)["plan"] == before["plan"]
