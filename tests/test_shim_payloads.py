"""Real inputs through the task graph: images through ``traffic_analysis`` (detector -> classifiers) on real worker
processes answer what the same handlers answer in this process, one classifier item per detection; a user's
model, defined in a file of the test and named in a catalog, is served end to end; bad bodies and bad handlers
get a clear answer. The channel's binary arrays, the catalog's handler specs and the body decoding are checked
without processes."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import daemon_in_thread

from jigsaw.agents.controller import Controller
from jigsaw.env.plan import GpuLayout, Plan
from jigsaw.profiles import handlers
from jigsaw.profiles.catalog import load_catalog
from jigsaw.profiles.errors import CatalogError
from jigsaw.profiles.types import HandlerSpec
from jigsaw.serving_shim import ipc, payloads
from jigsaw.serving_shim.daemon import DaemonConfig

BUILTIN = Path(__file__).resolve().parents[1] / "profiles" / "data"
SCORE_TOLERANCE = 1e-4  # batching may change a float's last bits; labels and counts must be equal


def _one_per_task(plan: Plan, app: str) -> Plan:
    """``plan`` cut to one batch-1 replica per task of ``app`` (each in an instance of its own), so that the
    workers run every item alone, as the in-process reference does."""
    tasks = {t: dataclasses.replace(c, replicas=1, batch=1) for t, c in plan.apps[app].items()}
    layout = GpuLayout(tuple(c.segment for c in tasks.values()), tuple((f"{app}/{t}",) for t in tasks))
    return dataclasses.replace(plan, apps={app: tasks}, gpus=(layout,))


def _serve(catalog_dir: Path | None, app: str, run_dir: Path) -> tuple[DaemonConfig, Plan]:
    catalog = load_catalog(catalog_dir)
    plan = _one_per_task(Controller(catalog, "h100", [app], 1).decide({app: 2.0}).plan, app)
    plan.to_json(run_dir / "start.json")
    return DaemonConfig(backend="cpu", apps=(app,), run_dir=run_dir, port=0, interval_s=3600.0,
                        catalog=None if catalog_dir is None else str(catalog_dir),
                        plan_file=str(run_dir / "start.json"), max_workers=4), plan


def _post(url: str, app: str, body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"{url}/v1/apps/{app}/infer", data=body, method="POST",
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _close(a: Any, b: Any) -> bool:
    """Equal, floats within SCORE_TOLERANCE."""
    if isinstance(a, float) or isinstance(b, float):
        return abs(a - b) <= SCORE_TOLERANCE
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_close, a, b))
    return a == b


# ---------------------------------------------------------------------------------------------- served end to end


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    cfg, plan = _serve(None, "traffic_analysis", tmp_path_factory.mktemp("traffic"))
    with daemon_in_thread(cfg) as (daemon, _):
        yield daemon, plan


def test_images_through_detector_and_classifiers_answer_what_the_handlers_answer_in_process(traffic):
    daemon, plan = traffic
    app = daemon.catalog.app("traffic_analysis")
    variants = {t: c.variant for t, c in plan.apps[app.name].items()}
    local = {t: handlers.load(next(v.handler for v in app.task(t).variants if v.name == variants[t]), variants[t])
             for t in app.task_names}
    served_items = 0
    for png in payloads.sample_images(4, seed=7):
        status, doc = _post(daemon.url, app.name, png, "image/png")
        assert status == 200 and doc["status"] in ("ok", "violated"), doc
        image = payloads.decode_image(png)
        expected = payloads.run_in_process(app, local, image)
        assert _close(doc["outputs"], expected), (doc["outputs"], expected)
        detections = handlers.outputs(local["detect"], [image])[0].value
        for task, label in (("car_classify", "car"), ("person_classify", "person")):
            assert len(doc["outputs"][task]) == sum(d["label"] == label for d in detections)
        assert doc["items"] == 1 + len(detections)
        served_items += len(detections)
    assert served_items > 0  # the images did pass crops on
    fanouts = daemon.router.fanout_counts
    sent = sum(n for (a, u, _, _), (_, n) in fanouts.items() if a == app.name and u == "detect")
    assert sent == served_items
    metrics = urllib.request.urlopen(daemon.url + "/metrics", timeout=30).read().decode()
    assert 'jigsaw_fanout_measured{app="traffic_analysis",from_task="detect",to_task="car_classify"' in metrics
    status = json.loads(urllib.request.urlopen(daemon.url + "/status", timeout=30).read())
    assert {(f["from"], f["to"]) for f in status["fanouts"]} == {("detect", "car_classify"), ("detect", "person_classify")}


def test_bad_bodies_are_answered_4xx_and_the_workers_live_on(traffic):
    daemon, _ = traffic
    for body, kind, status in ((b"\x89PNG\r\n\x1a\nbroken", "image/png", 400), (b"GIF89a", "image/gif", 415),
                               (b'{"id": 1}', "application/json", 400), (b"not json", "application/json", 400),
                               (b'{"inputs": [1, "x"]}', "application/json", 400)):
        code, doc = _post(daemon.url, "traffic_analysis", body, kind)
        assert code == status and doc["error"], (body, doc)
    code, doc = _post(daemon.url, "traffic_analysis", payloads.sample_images(1)[0], "image/png")
    assert code == 200  # still serving
    # JSON numbers to an image detector: the handler refuses them (422), the worker lives on
    code, doc = _post(daemon.url, "traffic_analysis", b'{"inputs": [[1, 2], [3, 4]]}', "application/json")
    assert code == 422 and "refused" in doc["reason"], doc
    assert _post(daemon.url, "traffic_analysis", payloads.sample_images(1)[0], "image/png")[0] == 200


USER_MODEL = '''
import numpy as np
import torch


class Brightness(torch.nn.Module):
    def forward(self, x):
        return x.float().mean(dim=(1, 2, 3))


def make(variant, *, weights=None, device="cpu", scale=1.0):
    model = Brightness().to(device)

    def run(images):
        batch = torch.stack([torch.from_numpy(np.array(i)) for i in images]).to(device)
        return [{"brightness": round(float(b) * scale, 3), "variant": variant} for b in model(batch)]
    return run


def broken(variant, **_):
    raise RuntimeError("no such weights")
'''


def test_a_users_model_named_in_the_catalog_is_served(tmp_path, monkeypatch):
    catalog_dir = tmp_path / "catalog"
    shutil.copytree(BUILTIN, catalog_dir)
    (tmp_path / "user_model.py").write_text(USER_MODEL)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the workers import the handler's module
    monkeypatch.syspath_prepend(str(tmp_path))
    app = {"name": "brightness", "latency_slo_ms": 500, "accuracy_slo": 1.0,
           "tasks": {"measure": {"family": "classification", "variants": ["resnet18"],
                                 "handler": {"factory": "user_model:make", "options": {"scale": 2.0}}}}}
    (catalog_dir / "apps" / "brightness.yaml").write_text(yaml.safe_dump(app))
    doc = yaml.safe_load((catalog_dir / "catalog.yaml").read_text())
    doc["apps"].append("apps/brightness.yaml")
    (catalog_dir / "catalog.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    cfg, _ = _serve(catalog_dir, "brightness", tmp_path)
    png = payloads.sample_images(1, size=32)[0]
    with daemon_in_thread(cfg) as (daemon, _):
        status, answer = _post(daemon.url, "brightness", png, "image/png")
    assert status == 200
    expected = round(float(payloads.decode_image(png).astype(np.float32).mean()) * 2.0, 3)
    assert answer["outputs"] == {"measure": [{"brightness": expected, "variant": "resnet18"}]}


@pytest.mark.parametrize(("factory", "says"), [("no_such_module:make", "cannot import handler no_such_module:make"),
                                               ("user_model:broken", "RuntimeError: no such weights")])
def test_a_handler_that_does_not_load_stops_the_daemon_at_start_up_in_one_line(factory, says, tmp_path):
    catalog_dir = tmp_path / "catalog"
    shutil.copytree(BUILTIN, catalog_dir)
    (tmp_path / "user_model.py").write_text(USER_MODEL)
    app_file = catalog_dir / "apps" / "social_media.yaml"
    app = yaml.safe_load(app_file.read_text())
    app["tasks"]["tag"]["handler"] = factory
    app_file.write_text(yaml.safe_dump(app))
    run = subprocess.run([sys.executable, "-m", "jigsaw.scripts.cli", "daemon", "--backend", "cpu", "--app",
                          "social_media", "--catalog", str(catalog_dir), "--run-dir", str(tmp_path / "run"), "--port",
                          "0"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("jigsaw: error:") and says in last and "handler" in last


# ---------------------------------------------------------------------------------------------- without processes


def test_arrays_cross_the_channel_as_bytes_unchanged():
    arrays = [np.arange(12, dtype=np.uint8).reshape(2, 2, 3), np.linspace(0, 1, 5, dtype=np.float32),
              np.zeros((0, 3), dtype=np.float64)]
    a, b = socket.socketpair()
    with a, b:
        ipc.send_message(a, {"op": "infer", "id": 7}, arrays)
        message, got = ipc.recv_message(b)
    assert message["id"] == 7 and len(got) == 3
    for x, y in zip(arrays, got, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)

    async def through_asyncio() -> tuple[dict[str, Any], list[np.ndarray]]:
        reader = asyncio.StreamReader()
        for buffer in ipc.encode({"id": 1}, arrays):
            reader.feed_data(bytes(buffer))
        return await ipc.read_message(reader)

    _, got = asyncio.run(through_asyncio())
    assert all(np.array_equal(x, y) for x, y in zip(arrays, got, strict=True))


def test_a_header_claiming_object_arrays_or_huge_blobs_is_refused():
    for blobs in ([["|O", [1]]], [["<f4", [1 << 30]]]):
        body = json.dumps({"id": 1, "blobs": blobs}).encode()
        a, b = socket.socketpair()
        with a, b:
            a.sendall(len(body).to_bytes(4, "big") + body)
            with pytest.raises(ConnectionError):
                ipc.recv_message(b)


def test_children_take_the_items_their_edge_labels_name(builtin_catalog):
    app = builtin_catalog.app("traffic_analysis")
    crops = [np.zeros((2, 2, 3), np.uint8) + i for i in range(3)]
    items = payloads.children_items(app, "detect", [("car", crops[0]), ("person", crops[1]), ("car", crops[2])])
    assert sorted((c, j) for c, j, _ in items) == [("car_classify", 0), ("car_classify", 2), ("person_classify", 1)]
    ar = builtin_catalog.app("ar_assistant")  # no labels: every item to the child
    assert [(c, j) for c, j, _ in payloads.children_items(ar, "detect", [("dog", crops[0]), (None, crops[1])])] == [
        ("recognise", 0), ("recognise", 1)]


def test_bodies_decode_or_say_why():
    png = payloads.sample_images(1, size=40)[0]
    image, rid = payloads.decode(png, "image/png; charset=binary")
    assert image.shape == (40, 40, 3) and image.dtype == np.uint8 and rid is None
    inputs, rid = payloads.decode(b'{"inputs": [[1, 2], [3, 4]], "id": 9}', "application/json")
    assert inputs.dtype == np.float32 and inputs.shape == (2, 2) and rid == "9"
    for body, kind, status in ((png[:40], "image/png", 400), (png, "text/plain", 415), (b"[1]", "application/json", 400),
                               (b'{"inputs": [[1], [2, 3]]}', "application/json", 400),
                               (b'{"inputs": [1e999]}', "application/json", 400)):
        with pytest.raises(payloads.PayloadError) as e:
            payloads.decode(body, kind)
        assert e.value.status == status


def test_handler_specs_in_the_catalog_are_checked(toy, tmp_path):
    app = toy.apps["chain.yaml"]
    app["tasks"]["a"]["handler"] = "not a factory"
    with pytest.raises(CatalogError, match=r"tasks\.a\.handler\.factory"):
        load_catalog(toy.write(tmp_path / "c1"))
    app["tasks"]["a"]["handler"] = {"factory": "pkg.mod:make", "weights": "missing.pt"}
    with pytest.raises(CatalogError, match="no weights file"):
        load_catalog(toy.write(tmp_path / "c2"))
    app["tasks"]["a"]["handler"] = "pkg.mod:make"
    app["tasks"]["a"]["handlers"] = {"a_big": {"options": {"threshold": 0.3}}}
    task = load_catalog(toy.write(tmp_path / "c3")).app("chain").task("a")
    by_name = {v.name: v.handler for v in task.variants}
    assert by_name["a_small"] == HandlerSpec("pkg.mod:make")
    assert by_name["a_big"].factory == HandlerSpec().factory and dict(by_name["a_big"].options) == {"threshold": 0.3}


def test_a_handler_that_cannot_load_says_why():
    with pytest.raises(handlers.HandlerError, match="cannot import handler no_such_module:make"):
        handlers.load(HandlerSpec("no_such_module:make"), "resnet18")
    with pytest.raises(handlers.HandlerError, match="takes no options"):
        handlers.load(HandlerSpec(options={"threshold": 1}), "resnet18")


def test_measured_fanouts_replace_the_catalogs_where_they_differ(tmp_path, builtin_catalog):
    from jigsaw.serving_shim.daemon import FANOUT_MIN_ITEMS, Daemon

    daemon = Daemon(DaemonConfig(backend="cpu", apps=("traffic_analysis",), run_dir=tmp_path, port=0))
    variant = "fasterrcnn_mobilenet_v3_large_fpn"
    app = builtin_catalog.app("traffic_analysis")
    n = FANOUT_MIN_ITEMS
    daemon.router.fanout_counts = {("traffic_analysis", "detect", "car_classify", variant): [n, 2 * n],  # 2.0 vs 5.62
                                   ("traffic_analysis", "detect", "person_classify", variant):  # within 10 %
                                       [n, round(1.05 * n * app.fanout("detect", "person_classify", variant))]}
    measured = daemon._measured_catalog().app("traffic_analysis")
    ratio = 2.0 / app.fanout("detect", "car_classify", variant)
    for v in app.task("detect").variants:  # every variant scaled alike; the other edge kept
        assert measured.fanout("detect", "car_classify", v.name) == pytest.approx(
            ratio * app.fanout("detect", "car_classify", v.name))
        assert measured.fanout("detect", "person_classify", v.name) == app.fanout("detect", "person_classify", v.name)
    daemon.router.fanout_counts[("traffic_analysis", "detect", "car_classify", variant)] = [n - 1, 0]  # too few items
    assert daemon._measured_catalog() is daemon.catalog


def test_advisory_mode_reports_the_decision_and_changes_no_worker(tmp_path):
    cfg, plan = _serve(None, "image_classify", tmp_path)
    cfg = dataclasses.replace(cfg, advisory=True)
    with daemon_in_thread(cfg) as (daemon, loop):
        workers = {w["name"] for w in daemon.reconciler.status()}
        asyncio.run_coroutine_threadsafe(daemon._decide({"image_classify": 5000.0}), loop).result(120)
        status = json.loads(urllib.request.urlopen(daemon.url + "/status", timeout=30).read())
        metrics = urllib.request.urlopen(daemon.url + "/metrics", timeout=30).read().decode()
    assert status["advisory"] and status["advice"]["changes"]  # 2,500x the demand: the controller would scale up
    assert status["advice"]["slices"] > status["slices_used"], status["advice"]["changes"]
    assert status["plan"] == plan.to_dict() and {w["name"] for w in status["workers"]} == workers
    assert "jigsaw_advice_slices" in metrics and "jigsaw_advised_changes_total 1.0" in metrics


def test_profile_times_a_handler_as_a_worker_runs_it(tmp_path):
    out = tmp_path / "table.csv"
    run = subprocess.run([sys.executable, "-m", "jigsaw.scripts.cli", "profile", "--family", "detection", "--variants",
                          "fasterrcnn_mobilenet_v3_large_fpn", "--batches", "1,2", "--sm-shares", "50", "--colocation", "1",
                          "--device", "cpu", "--out", str(out), "--handler", "jigsaw.profiles.builtin_handlers:builtin",
                          "--handler-options", '{"classes": ["car"]}', "--min-iters", "3", "--time-per-config", "0.05"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(out.open()))
    assert [(r["exec_mode"], r["batch"]) for r in rows] == [("handler", "1"), ("handler", "2")]
    assert all(float(r["p50_ms"]) > 0 for r in rows)
    bad = subprocess.run([sys.executable, "-m", "jigsaw.scripts.cli", "profile", "--family", "detection", "--variants",
                          "fasterrcnn_mobilenet_v3_large_fpn", "--device", "cpu", "--out", str(tmp_path / "b.csv"),
                          "--handler", "jigsaw.profiles.builtin_handlers:builtin", "--handler-options", "{oops"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--handler-options" in bad.stderr
