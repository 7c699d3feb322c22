"""A worker: one OS process serving one model variant over a Unix socket (protocol in ``jigsaw.serving_shim.ipc``).

    python -m jigsaw.serving_shim.worker --socket PATH --model resnet50 [--threads N] [--device cpu|cuda] [--batch B]

It builds the model (``jigsaw.profiles.models``), warms it up at batch 1 and at the plan's batch, and only then
binds its socket: a socket that accepts is a ready worker. Each batch runs on a synthetic input of the
batch's size and is answered with one small result per item (the argmax of its output) and the service
time in ms. Each connection is served on a thread of its own and ``health`` needs no model lock, so a health
check is answered while a long batch runs (the reconciler takes a worker that stops answering it as hung).
The backend sets the process's placement (threads, CUDA_VISIBLE_DEVICES, the MPS thread
percentage) through its arguments and environment. A worker exits when its parent dies, so a crashed
daemon leaves no orphans.
"""

from __future__ import annotations

import argparse
import os
import signal
import socketserver
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from jigsaw.profiles.models import build_model
from jigsaw.serving_shim.ipc import encode, recv_message

WARMUP_RUNS = 3
_PARENT_POLL_S = 0.5


class Model:
    """The loaded model, its reusable input buffer, and a lock: one batch runs at a time."""

    def __init__(self, name: str, device: str) -> None:
        module, self.item_shape = build_model(name)
        self.name, self.device = name, torch.device(device)
        self.module = module.to(self.device)
        self.inputs = torch.randn(1, *self.item_shape, device=self.device)
        self.lock = threading.Lock()

    def run(self, n: int) -> tuple[list[int], float]:
        """Run a batch of ``n`` items; returns (one result per item, service time ms)."""
        with self.lock, torch.inference_mode():
            start = time.perf_counter()
            if n > self.inputs.shape[0]:
                self.inputs = torch.randn(n, *self.item_shape, device=self.device)
            out = self.module(self.inputs[:n]).reshape(n, -1).argmax(dim=1).tolist()  # .tolist() syncs a GPU
            return out, 1000.0 * (time.perf_counter() - start)

    def warm_up(self, batch: int) -> float:
        """Run batch 1 and ``batch`` a few times (allocations, kernel selection); the last ``batch`` time, ms."""
        ms = 0.0
        for n in (1, batch):
            for _ in range(WARMUP_RUNS):
                _, ms = self.run(n)
        return ms


def answer(model: Model, warm_ms: float, message: dict[str, Any]) -> dict[str, Any]:
    op, mid = message.get("op"), message.get("id")
    try:
        if op == "infer":
            out, ms = model.run(int(message["n"]))
            return {"id": mid, "ok": True, "out": out, "ms": ms}
        if op == "health":
            return {"id": mid, "ok": True, "model": model.name, "pid": os.getpid(), "warm_ms": warm_ms}
        return {"id": mid, "ok": False, "error": f"unknown op {op!r}"}
    except Exception as e:  # the router decides what a failed batch means; the worker lives on
        return {"id": mid, "ok": False, "error": f"{type(e).__name__}: {e}"}


def serve(socket_path: str, model: Model, warm_ms: float) -> None:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while True:
                try:
                    message = recv_message(self.request)
                    self.request.sendall(encode(answer(model, warm_ms, message)))
                except (EOFError, OSError):  # the peer left (a health check that gave up waiting, a drained router)
                    return

    Path(socket_path).unlink(missing_ok=True)  # a stale socket from a crashed predecessor
    with socketserver.ThreadingUnixStreamServer(socket_path, Handler) as server:
        server.daemon_threads = True
        try:
            server.serve_forever()
        finally:
            Path(socket_path).unlink(missing_ok=True)


def _exit_with_parent() -> None:
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_S)
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="serving_shim.worker", description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True, help="Unix socket path to serve on")
    p.add_argument("--model", required=True, help="variant, family or 'noop' (see profiles.models)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--batch", type=int, default=1, help="the plan's batch size, warmed up before serving")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leave through serve()'s cleanup
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    torch.set_num_threads(max(1, args.threads))
    torch.set_num_interop_threads(1)
    model = Model(args.model, args.device)
    serve(args.socket, model, model.warm_up(max(1, args.batch)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
