"""The shim's parts that need no worker process: stand-in models, placement, MIG comparison, metrics text,
the HTTP front end's answers to malformed requests (its ASGI app, through starlette's TestClient), and the GPU
backends' refusal on a machine without NVML."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from jigsaw.env.plan import MIG_CONFIG_NAME, GpuLayout, Plan, TaskConfig
from jigsaw.profiles.errors import CatalogError, ShimError
from jigsaw.scripts.cli import main
from jigsaw.serving_shim.backends import CpuBackend, MigBackend, MpsBackend
from jigsaw.serving_shim.backends.mig import MIG_CONFIG_FILE, difference, repartition_commands
from jigsaw.serving_shim.backends.mps import sm_percentage
from jigsaw.serving_shim.backends.nvidia import Gpu, MigDevice
from jigsaw.serving_shim.http import App, Response, Server
from jigsaw.serving_shim.metrics import Histogram, histogram, render
from jigsaw.serving_shim.router import Router


def test_stand_in_models_run_and_grow_with_the_variant():
    torch = pytest.importorskip("torch")
    from jigsaw.profiles.models import build_model

    for name in ("noop", "resnet18", "bert"):  # a first forward pass is slow (kernel set-up): run a few only
        model, shape = build_model(name)
        with torch.inference_mode():
            assert model(torch.randn(2, *shape)).shape[0] == 2
    params = {name: sum(p.numel() for p in build_model(name)[0].parameters())
              for name in ("resnet18", "resnet152", "efficientnet_b0", "efficientnet_b7", "vit_b_16",
                           "fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn_v2", "deeplabv3_resnet101",
                           "classification")}
    assert params["resnet152"] > params["resnet18"] > 0
    assert params["efficientnet_b7"] > params["efficientnet_b0"]
    assert params["fasterrcnn_resnet50_fpn_v2"] > params["fasterrcnn_mobilenet_v3_large_fpn"]
    with pytest.raises(CatalogError):
        build_model("../etc")


def _plan(replicas: int, segment: str = "1g.10gb", workers: int = 1) -> Plan:
    cfg = TaskConfig("resnet50", segment, workers, 4, replicas, 50.0)
    return Plan("h100", {"image_classify": {"classify": cfg}, "social_media": {"tag": dataclasses.replace(cfg, replicas=1)}},
                (GpuLayout(("7g.80gb",), (("image_classify/classify",),)),))


def test_cpu_placement_caps_workers_and_maps_slices_to_threads(tmp_path, builtin_catalog):
    gpu = builtin_catalog.gpus["h100"]
    small = CpuBackend(tmp_path, max_workers=4).place(_plan(9), gpu)
    counts = [s.key for s in small.specs]
    assert counts.count("image_classify/classify") == 3 and counts.count("social_media/tag") == 1
    assert any("scaled" in n for n in small.notes)
    roomy = CpuBackend(tmp_path, max_workers=64).place(_plan(2, "7g.80gb"), gpu)
    assert len(roomy.specs) == 3 and not roomy.notes
    assert all(1 <= s.threads <= (os.cpu_count() or 1) for s in roomy.specs)
    assert len(set(roomy.specs)) == 2  # equal specs are interchangeable replicas


def test_mps_share_and_mig_difference(builtin_catalog):
    gpu = builtin_catalog.gpus["h100"]
    assert sm_percentage(gpu, "7g.80gb", 1) == 100
    assert sm_percentage(gpu, "1g.10gb", 2) < sm_percentage(gpu, "1g.10gb", 1) < sm_percentage(gpu, "3g.40gb", 1)
    plan = Plan("h100", {}, (GpuLayout(("3g.40gb", "4g.40gb"), ((), ())),))
    present = [Gpu(0, "H100", "GPU-0", True, (MigDevice(0, "MIG-a", "4g.40gb"), MigDevice(0, "MIG-b", "3g.40gb")))]
    assert difference(plan, present) == []
    other = [Gpu(0, "H100", "GPU-0", True, (MigDevice(0, "MIG-a", "7g.80gb"),))]
    [line] = difference(plan, other)
    assert "3g.40gb" in line and "7g.80gb" in line
    assert "-cgi 3g.40gb,4g.40gb" in repartition_commands(plan)[0]


def test_the_plans_mig_layout_as_an_nvidia_mig_parted_config(tmp_path, builtin_catalog):
    plan = Plan("h100", {}, (GpuLayout(("3g.40gb", "4g.40gb"), ((), ())), GpuLayout(("1g.10gb",) * 7, ((),) * 7),
                             GpuLayout(("4g.40gb", "3g.40gb"), ((), ()))))
    doc = plan.mig_parted_config(n_gpus=4)
    assert doc["version"] == "v1" and list(doc["mig-configs"]) == [MIG_CONFIG_NAME]
    assert doc["mig-configs"][MIG_CONFIG_NAME] == [  # GPUs cut alike share an entry; the unused one has none
        {"devices": [0, 2], "mig-enabled": True, "mig-devices": {"3g.40gb": 1, "4g.40gb": 1}},
        {"devices": [1], "mig-enabled": True, "mig-devices": {"1g.10gb": 7}},
        {"devices": [3], "mig-enabled": True, "mig-devices": {}}]
    backend = MigBackend(tmp_path)  # the mig backend writes it where the present geometry differs
    backend.gpus = [Gpu(g, "H100", f"GPU-{g}", True, (MigDevice(g, f"MIG-{g}", "7g.80gb"),)) for g in range(4)]
    placement = backend.place(plan, builtin_catalog.gpus["h100"])
    assert yaml.safe_load((tmp_path / MIG_CONFIG_FILE).read_text()) == doc
    assert any(f"nvidia-mig-parted apply -f {tmp_path / MIG_CONFIG_FILE}" in n for n in placement.notes)
    out = tmp_path / "solved.yaml"
    assert main(["solve", "--app", "ar_assistant", "--rps", "50", "--gpus", "2", "--mig-config", str(out)]) == 0
    solved = yaml.safe_load(out.read_text())["mig-configs"][MIG_CONFIG_NAME]
    assert sorted(d for entry in solved for d in entry["devices"]) == [0, 1]


def test_gpu_backends_refuse_a_machine_without_nvml(tmp_path):
    import pynvml
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has NVML")
    for backend in (MpsBackend(tmp_path), MigBackend(tmp_path)):
        with pytest.raises(ShimError, match="NVIDIA"):
            backend.open()


def test_prometheus_text():
    h = Histogram((0.01, 0.1))
    for v in (0.005, 0.05, 5.0):
        h.observe(v)

    class One:
        def collect(self):
            yield histogram("x_seconds", "help", ["app"], [(('a"b',), h)])

    registry = CollectorRegistry()
    registry.register(One())
    text = render(registry).decode()
    assert 'x_seconds_bucket{app="a\\"b",le="0.01"} 1.0' in text
    assert 'x_seconds_bucket{app="a\\"b",le="+Inf"} 3.0' in text
    [family] = text_string_to_metric_families(text)
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert family.type == "histogram" and samples[("x_seconds_bucket", "0.1")] == 2
    assert samples[("x_seconds_count", None)] == 3 and samples[("x_seconds_sum", None)] == pytest.approx(5.055)


def test_malformed_requests_are_answered_4xx(builtin_catalog):
    router = Router(builtin_catalog, ["ar_assistant"])
    client = TestClient(App(lambda r: _route(router, r), max_body=64 * 1024))
    answers = [client.request(method, path, content=body) for method, path, body in (
        ("POST", "/v1/apps/ar_assistant/infer", b"{not json"),
        ("POST", "/v1/apps/ar_assistant/infer", b"[1, 2]"),
        ("POST", "/v1/apps/nope/infer", b"{}"),
        ("GET", "/v1/apps/ar_assistant/infer", b""),
        ("POST", "/v1/apps/ar_assistant/infer", b"{" + b" " * 100_000 + b"}"))]
    assert [a.status_code for a in answers] == [400, 400, 404, 405, 413]
    assert all(a.json()["status"] == "error" and a.text.count("\n") == 0 for a in answers)


async def _route(router: Router, request):
    return await router.handle(request) or Response.error(404, "no such endpoint")


def test_port_in_use_is_a_shim_error():
    async def scenario() -> None:
        first = Server(_route)
        port = await first.start("127.0.0.1", 0)
        try:
            await Server(_route).start("127.0.0.1", port)
        finally:
            await first.close()

    with pytest.raises(ShimError, match="in use"):
        asyncio.run(scenario())
