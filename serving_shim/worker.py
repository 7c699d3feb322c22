"""A worker: one OS process serving one model variant's handler over a Unix socket (protocol in
``jigsaw.serving_shim.ipc``).

    python -m jigsaw.serving_shim.worker --socket PATH --model VARIANT [--handler JSON] [--threads N]
        [--device cpu|cuda] [--batch B]

It loads the handler (``jigsaw.profiles.handlers``; ``--handler`` is the catalog's ``HandlerSpec`` as JSON, the
built-in one by default), warms it up at batch 1 and at the plan's batch, and only then binds its socket: a
socket that accepts is a ready worker. Each batch runs on the inputs the router sends; each input's answer is its
output (JSON) and the items its children take (arrays). When a batch raises, its inputs are run one at a time, so
that an input the handler refuses (``ValueError``/``TypeError``) or fails on is answered alone and the rest of the
batch is served. Each connection is served on a thread of its own and ``health`` needs no model lock, so a health
check is answered while a long batch runs (the reconciler takes a worker that stops answering it as hung). The
backend sets the process's placement (threads, CUDA_VISIBLE_DEVICES, the MPS thread percentage) through its
arguments and environment. A worker exits when its parent dies, so a crashed daemon leaves no orphans; a handler
that cannot be loaded ends it with one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socketserver
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jigsaw.profiles import handlers
from jigsaw.profiles.types import HandlerSpec
from jigsaw.serving_shim.ipc import HANDLER_EXIT, recv_message, send_message

WARMUP_RUNS = 3
_PARENT_POLL_S = 0.5


class Model:
    """The loaded handler and a lock: one batch runs at a time."""

    def __init__(self, name: str, spec: HandlerSpec, device: str) -> None:
        self.name = name
        self.handler = handlers.load(spec, name, device)
        self.lock = threading.Lock()

    def run(self, inputs: Sequence[np.ndarray]) -> tuple[list[dict[str, Any]], list[np.ndarray], float]:
        """One batch: per input its answer (``ipc``'s ``out`` entries), the children's arrays, service time ms."""
        with self.lock:
            start = time.perf_counter()
            try:
                results: list[handlers.Output | BaseException] = list(handlers.outputs(self.handler, inputs))
            except Exception:  # find the input(s) at fault: the rest are served
                results = [_one(self.handler, x) for x in inputs]
            ms = 1000.0 * (time.perf_counter() - start)
        out: list[dict[str, Any]] = []
        blobs: list[np.ndarray] = []
        for r in results:
            if isinstance(r, BaseException):
                out.append({"error": f"{type(r).__name__}: {r}", "refused": isinstance(r, ValueError | TypeError)})
                continue
            forward = []
            for label, item in r.forward:
                forward.append([label, len(blobs)])
                blobs.append(np.asarray(item))
            out.append({"value": handlers.jsonable(r.value), "forward": forward})
        return out, blobs, ms

    def warm_up(self, batch: int) -> float:
        """Run batch 1 and ``batch`` a few times (allocations, kernel selection); the last ``batch`` time, ms."""
        example = handlers.example_input(self.handler)
        ms = 0.0
        for n in (1, batch):
            for _ in range(WARMUP_RUNS):
                *_, ms = self.run([example] * n)
        return ms


def _one(handler: handlers.Handler, x: np.ndarray) -> handlers.Output | BaseException:
    try:
        return handlers.outputs(handler, [x])[0]
    except Exception as e:  # reported for this input alone
        return e


def answer(model: Model, warm_ms: float, message: dict[str, Any], inputs: list[np.ndarray]
           ) -> tuple[dict[str, Any], list[np.ndarray]]:
    op, mid = message.get("op"), message.get("id")
    try:
        if op == "infer":
            out, blobs, ms = model.run(inputs)
            return {"id": mid, "ok": True, "out": out, "ms": ms}, blobs
        if op == "health":
            return {"id": mid, "ok": True, "model": model.name, "pid": os.getpid(), "warm_ms": warm_ms}, []
        return {"id": mid, "ok": False, "error": f"unknown op {op!r}"}, []
    except Exception as e:  # the router decides what a failed batch means; the worker lives on
        return {"id": mid, "ok": False, "error": f"{type(e).__name__}: {e}"}, []


def serve(socket_path: str, model: Model, warm_ms: float) -> None:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while True:
                try:
                    message, inputs = recv_message(self.request)
                    send_message(self.request, *answer(model, warm_ms, message, inputs))
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
    p.add_argument("--model", required=True, help="the variant (or family, or 'noop') the handler loads")
    p.add_argument("--handler", default=None, help="the catalog's handler spec as JSON (default: the built-in one)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--batch", type=int, default=1, help="the plan's batch size, warmed up before serving")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leave through serve()'s cleanup
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    torch.set_num_threads(max(1, args.threads))
    torch.set_num_interop_threads(1)
    spec = HandlerSpec(**json.loads(args.handler)) if args.handler else HandlerSpec()
    try:
        model = Model(args.model, spec, args.device)
    except handlers.HandlerError as e:
        print(f"worker: {e}", file=sys.stderr)
        return HANDLER_EXIT
    serve(args.socket, model, model.warm_up(max(1, args.batch)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
