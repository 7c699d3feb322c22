"""The daemon against hostile and unlucky clients (issue 19, items 2, 5, 6, 7): the HTTP server's limits
(slow and idle clients, oversized headers, bodies without a length, a handler that raises, deep JSON, the
connection cap), a control loop whose side effects fail, readiness, the bearer token, file modes, and a real
daemon under a low file limit held by idle connections. Limits are set small here (0.5 s) so that each
takes a moment; every wait is bounded."""

from __future__ import annotations

import asyncio
import errno
import importlib
import json
import logging
import os
import resource
import socket
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest
from conftest import DAEMON_START_TIMEOUT_S, start_daemon

from jigsaw.profiles.errors import ShimError
from jigsaw.scripts.cli import main
from jigsaw.serving_shim.daemon import Daemon, DaemonConfig
from jigsaw.serving_shim.http import Client, Request, Response, Server, default_max_connections
from jigsaw.serving_shim.router import Router

APP = "ar_assistant"
TOKEN = "t0ken-for-the-tests-0123456789"


# ------------------------------------------------------------------------------------------ the HTTP server


async def _ok(request: Request) -> Response:
    return Response.json(200, {"path": request.path, "body": request.body.decode()})


async def _serving(scenario: Callable[[int, Server], Awaitable[Any]], handler: Any = _ok, **limits: Any) -> Any:
    server = Server(handler, **limits)
    port = await server.start("127.0.0.1", 0)
    try:
        return await asyncio.wait_for(scenario(port, server), 30)
    finally:
        await server.close()


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names), body; (0, {}, b"") when the server closed instead."""
    line = await reader.readline()
    if not line:
        return 0, {}, b""
    headers = {}
    while (raw := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = raw.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(line.split()[1]), headers, await reader.readexactly(int(headers.get("content-length", 0)))


async def _exchange(port: int, head: bytes) -> tuple[int, str, str, bytes]:
    """Send ``head`` on a new connection: (status, Connection header, error message, what follows the answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    status, headers, body = await _answer(reader)
    rest = await reader.read()
    writer.close()
    error = json.loads(body)["error"] if headers.get("content-type") == "application/json" else body.decode()
    return status, headers.get("connection", ""), error, rest


def _run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_a_slowloris_client_is_cut_after_the_header_timeout():
    async def scenario(port: int, _: Server) -> tuple[int, float, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        began = time.monotonic()
        sent = 0
        answer = asyncio.ensure_future(_answer(reader))
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:  # a byte every 50 ms, never the end
            if answer.done():
                break
            writer.write(bytes([byte]))
            sent += 1
            await asyncio.sleep(0.05)
        status, _, _ = await answer
        writer.close()
        return status, time.monotonic() - began, sent

    status, elapsed_s, sent = _run(_serving(scenario, header_timeout_s=0.5))
    assert status == 408 and 0.4 < elapsed_s < 2.0 and sent < 40, (status, elapsed_s, sent)


def test_idle_connections_are_closed_after_the_idle_timeout():
    async def scenario(port: int, server: Server) -> tuple[int, float, float, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = await _answer(reader)
        assert "connection" not in headers  # HTTP/1.1: kept alive
        began = time.monotonic()
        assert await reader.read() == b""  # closed by the server, quietly
        kept_alive_s = time.monotonic() - began
        silent_reader, _ = await asyncio.open_connection("127.0.0.1", port)  # never sends a byte
        began = time.monotonic()
        assert await silent_reader.read() == b""
        await asyncio.sleep(0.1)
        return status, kept_alive_s, time.monotonic() - began, len(server.connections)

    status, kept_alive_s, silent_s, still_open = _run(_serving(scenario, idle_timeout_s=0.5))
    assert status == 200 and 0.4 < kept_alive_s < 2.0 and 0.4 < silent_s < 2.0 and still_open == 0


def test_headers_over_the_cap_are_answered_431_and_closed():
    async def scenario(port: int, _: Server) -> list[tuple[int, str, str, bytes]]:
        out = [await _exchange(port, head) for head in (
            b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(20)) + b"\r\n",
            b"GET /" + b"p" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # one line over the cap
            b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 1000)]  # no end in sight: refused before it ends
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        answer = asyncio.ensure_future(_answer(reader))
        sent = 0
        while not answer.done() and sent < 100:  # the same, a line at a time: never buffered beyond the cap
            writer.write(b"X-Long: " + b"v" * 100 + b"\r\n")
            sent += 1
            await asyncio.sleep(0.005)
        status, headers, _ = await answer
        out.append((status, headers.get("connection", ""), "", await reader.read()))
        writer.close()
        assert sent < 20, sent
        return out

    answers = _run(_serving(scenario, max_header_bytes=1024))
    assert [(status, connection, rest) for status, connection, _, rest in answers] == [(431, "close", b"")] * 4
    assert "exceed 1024 bytes" in answers[0][2]


def test_bodies_need_a_length_or_chunks_and_bad_framing_is_400():
    async def scenario(port: int, _: Server) -> list[Any]:
        # the bytes after a POST without Content-Length must not be read as a second request
        smuggled = b'{"id": 1}GET /second HTTP/1.1\r\nHost: x\r\n\r\n'
        out: list[Any] = [(await _exchange(port, head))[:2] for head in (
            b"POST /v1/apps/a/infer HTTP/1.1\r\nHost: x\r\n\r\n" + smuggled,
            b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n"
            b"9\r\n{\"id\": 1}\r\n0\r\n\r\n",  # both framings: a smuggling attempt
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1_0\r\n\r\n0123456789",
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            b"GET / HTTP/1.1\r\n\r\n")]  # HTTP/1.1 without Host
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # a GET needs no length; keep-alive holds
        writer.write(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"POST /three HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"4\r\nchun\r\n3\r\nked\r\n0\r\n\r\n")
        out.append([json.loads((await _answer(reader))[2]) for _ in range(3)])
        writer.close()
        return out

    *refused, answered = _run(_serving(scenario))
    assert refused == [(411, "close"), (400, "close"), (400, "close"), (400, "close"), (400, "close")]
    assert [(doc["path"], doc["body"]) for doc in answered] == [("/one", ""), ("/two", ""), ("/three", "chunked")]


def test_a_body_over_the_limit_is_413_before_it_is_read():
    async def scenario(port: int, _: Server) -> list[tuple[int, str, str, bytes]]:
        length = await _exchange(port, b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        chunked = await _exchange(port, b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  + b"400\r\n" + b"x" * 1024 + b"\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n")
        return [length, chunked]

    for status, connection, error, rest in _run(_serving(scenario, max_body=1500)):
        assert (status, connection, rest) == (413, "close", b"") and "exceeds 1500 bytes" in error


def test_a_slow_body_is_cut_after_the_body_timeout():
    async def scenario(port: int, _: Server) -> tuple[int, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        began = time.monotonic()
        status, _, _ = await _answer(reader)
        writer.close()
        return status, time.monotonic() - began

    status, elapsed_s = _run(_serving(scenario, body_timeout_s=0.5))
    assert status == 408 and 0.4 < elapsed_s < 2.0


def test_a_handler_that_raises_is_one_500_and_the_connection_goes_on(caplog):
    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("a bug")
        return await _ok(request)

    async def scenario(port: int, server: Server) -> tuple[list[int], int]:
        async with Client(f"http://127.0.0.1:{port}", token="") as client:
            statuses = [(await client.call("GET", path))[0] for path in ("/boom", "/fine", "/boom", "/fine")]
        return statuses, server.errors.counts["handler"]

    with caplog.at_level(logging.ERROR, logger="jigsaw.http"):
        statuses, errors = _run(_serving(scenario, handler))
    assert statuses == [500, 200, 500, 200] and errors == 2
    assert sum("Traceback" in (r.exc_text or "") or r.exc_info is not None for r in caplog.records) == 1  # rate-limited


def test_deeply_nested_json_is_400_and_the_next_request_is_answered(builtin_catalog):
    router = Router(builtin_catalog, [APP])

    async def handler(request: Request) -> Response:
        return await router.handle(request) or Response.error(404, "no such endpoint")

    async def scenario(port: int, _: Server) -> list[tuple[int, str]]:
        async with Client(f"http://127.0.0.1:{port}", token="") as client:  # 20 KB: RecursionError in json.loads
            nested = await client.call("POST", f"/v1/apps/{APP}/infer", b"[" * 10_000 + b"]" * 10_000)
            after = await client.call("GET", "/nope")  # on the same connection
        return [(status, json.loads(answer)["error"]) for status, answer in (nested, after)]

    assert _run(_serving(scenario, handler)) == [(400, ANY), (404, "no such endpoint")]


def test_at_the_cap_the_connection_idle_longest_makes_room():
    async def scenario(port: int, server: Server) -> tuple[int, bytes, int]:
        oldest = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.1)
        newer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = await asyncio.wait_for(_answer(reader), 5)
        closed = await asyncio.wait_for(oldest[0].read(), 5)  # closed by the server to make room
        open_now = len(server.connections)
        for _, w in (oldest, newer, (reader, writer)):
            w.close()
        return status, closed, open_now

    assert _run(_serving(scenario, max_connections=2)) == (200, b"", 2)


def test_at_the_cap_with_none_idle_new_clients_are_503_until_one_closes():
    async def scenario(port: int, server: Server) -> tuple[Any, int, int, int]:
        busy = []
        for _ in range(2):  # mid-request: not idle, so not closed to make room
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /busy HTTP/1.1\r\n")
            busy.append((r, w))
        await asyncio.sleep(0.2)
        refused = await _exchange(port, b"GET /third HTTP/1.1\r\nHost: x\r\n\r\n")  # one over the cap: 503
        open_at_cap = len(server.connections)
        busy[0][1].close()
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /fourth HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = await asyncio.wait_for(_answer(reader), 5)
        writer.close()
        busy[1][1].close()
        return refused, open_at_cap, status, server.max_connections

    # (uvicorn's limit_concurrency answers, in plain text)
    assert _run(_serving(scenario, max_connections=2)) == ((503, "close", "Service Unavailable", b""), 2, 200, 2)


def test_the_default_cap_leaves_descriptors_for_workers_and_files():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        for limit, cap in ((64, 16), (200, 72), (256, 128), (1024, 512), (100_000, 1024)):
            if limit <= hard:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
                assert default_max_connections() == cap
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ------------------------------------------------------------------------ a daemon in this process (cpu, noop)


class TensorBoardFull:
    """A TensorBoard writer whose every write fails as under a spent file limit."""

    def __init__(self, logdir: str) -> None:
        self.calls = 0

    def add_scalar(self, *args: Any) -> None:
        self.calls += 1
        raise OSError(errno.EMFILE, "Too many open files")

    def flush(self) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    def close(self) -> None:
        raise OSError(errno.EMFILE, "Too many open files")


class Running:
    """A Daemon on its own event-loop thread, reached over HTTP from the test's thread."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(daemon.run(),))
        self.thread.start()
        deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
        while not daemon.url and self.thread.is_alive() and time.monotonic() < deadline:  # the plan may come later
            time.sleep(0.02)

    def get(self, path: str, token: str | None = TOKEN) -> tuple[int, dict[str, str], bytes]:
        """(status, headers with lower-case names, body) of ``GET path``."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        req = urllib.request.Request(self.daemon.url + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    def wait_for(self, what: Callable[[], bool], timeout_s: float = DAEMON_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not what():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.daemon.stop)
        self.thread.join(60)
        assert not self.thread.is_alive()


def _config(run_dir: Path, **changes: Any) -> DaemonConfig:
    return DaemonConfig(**{"backend": "cpu", "apps": (APP,), "run_dir": run_dir, "port": 0, "interval_s": 3600.0,
                           "max_workers": 3, "model": "noop", **changes})


def test_the_loop_survives_its_side_effects_and_ready_waits_for_the_plan(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(importlib.import_module("tensorboard.summary"), "Writer", TensorBoardFull)  # (lazy package)
    daemon = Daemon(_config(tmp_path, interval_s=0.3, auth_token=TOKEN))
    daemon.plan_path = tmp_path / "gone" / "plan.json"  # persisting fails: its directory does not exist
    gate = threading.Event()
    apply = daemon.reconciler.apply

    async def gated(plan: Any) -> Any:
        while not gate.is_set():
            await asyncio.sleep(0.02)
        return await apply(plan)

    monkeypatch.setattr(daemon.reconciler, "apply", gated)
    began = time.monotonic()
    with caplog.at_level(logging.INFO):
        shim = Running(daemon)
        try:
            assert shim.get("/healthz")[0] == 200 and shim.get("/ready")[0] == 503  # alive, not ready: no plan yet
            gate.set()
            shim.wait_for(daemon.ready)
            assert shim.get("/ready")[0] == 200
            shim.wait_for(lambda: sum(daemon.sources.values()) >= 5, 60)  # decisions go on, their scalars fail

            async def fails(plan: Any) -> None:
                raise RuntimeError("reconcile broke")

            monkeypatch.setattr(daemon.reconciler, "apply", fails)
            daemon.plan = None  # the next decision reconciles, and that raises
            shim.wait_for(lambda: daemon.errors.counts["control"] >= 3, 60)
            decided = sum(daemon.sources.values())
            shim.wait_for(lambda: sum(daemon.sources.values()) > decided + 2, 60)  # ... and the loop goes on
            status = json.loads(shim.get("/status")[2])
            metrics = shim.get("/metrics")[2].decode()
        finally:
            shim.stop()
    assert status["loop_errors"]["persist"] == 1 and status["loop_errors"]["tensorboard"] >= 5
    assert status["loop_errors"]["control"] >= 3 and status["ready"] is False
    assert 'jigsaw_loop_errors_total{kind="persist"} 1' in metrics and "jigsaw_http_connections_max" in metrics
    assert not daemon.ready()  # shut down
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR and "going on" in r.getMessage()]
    by_kind = {k: [r for r in failures if k in r.getMessage()] for k in ("TensorBoard", "persisting", "control")}
    most = 1 + int((time.monotonic() - began) / 10)  # rate-limited: one line per kind per 10 s
    assert all(1 <= len(v) <= most for v in by_kind.values()), {k: len(v) for k, v in by_kind.items()}


def test_the_token_is_checked_on_every_endpoint(tmp_path, monkeypatch):
    shim = Running(Daemon(_config(tmp_path, auth_token=TOKEN)))
    try:
        shim.wait_for(shim.daemon.ready)
        for path in ("/healthz", "/ready", "/status", "/metrics", "/nope"):
            for token in (None, "wrong-token-0123456789", TOKEN[:-1]):
                status, headers, _ = shim.get(path, token)
                assert status == 401 and headers["www-authenticate"].startswith("Bearer"), (path, token)
            assert shim.get(path)[0] == (404 if path == "/nope" else 200)

        async def infer(client: Client) -> tuple[int, int]:
            async with client:
                answered, _ = await client.call("POST", f"/v1/apps/{APP}/infer", b"{}")
                status, _ = await client.call("GET", "/status")
            return answered, status

        assert _run(infer(Client(shim.daemon.url, token=""))) == (401, 401)
        monkeypatch.setenv("JIGSAW_AUTH_TOKEN", TOKEN)  # what loadgen's clients send by default
        answered, status = _run(infer(Client(shim.daemon.url)))
        assert answered != 401 and status == 200  # (the router's answer to "{}")
    finally:
        shim.stop()


def test_beyond_loopback_needs_a_token_or_insecure(tmp_path, capsys, caplog):
    with pytest.raises(ShimError, match="no token is set"):
        Daemon(_config(tmp_path, host="0.0.0.0"))
    with caplog.at_level(logging.WARNING, logger="jigsaw.daemon"):
        Daemon(_config(tmp_path, host="0.0.0.0", insecure=True))
        Daemon(_config(tmp_path, host="0.0.0.0", auth_token=TOKEN))
    warnings = [r.getMessage() for r in caplog.records if "beyond loopback" in r.getMessage()]
    assert len(warnings) == 2 and "NO AUTHENTICATION" in warnings[0] and TOKEN not in warnings[1]
    for args in (["--host", "0.0.0.0"], ["--auth-token", "short"], ["--auth-token", "has a space in it 0123"],
                 ["--max-connections", "0"]):
        assert main(["daemon", "--app", APP, "--run-dir", str(tmp_path), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and "short" not in err, err


def test_files_are_private_whatever_the_umask(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "sock").mkdir(parents=True)
    (run_dir / "sock").chmod(0o777)
    fresh = tmp_path / "fresh" / "run"
    old = os.umask(0)
    try:
        shim = Running(Daemon(_config(fresh)))
        try:
            shim.wait_for(shim.daemon.ready)
        finally:
            shim.stop()
        Daemon(_config(run_dir))  # an existing socket directory open to all is narrowed
    finally:
        os.umask(old)
    mode = {p: stat.S_IMODE(p.stat().st_mode) for p in (fresh, fresh / "plan.json", fresh / "logs",
                                                        fresh / "tensorboard", run_dir / "sock")}
    assert mode == {fresh: 0o700, fresh / "plan.json": 0o600, fresh / "logs": 0o700, fresh / "tensorboard": 0o700,
                    run_dir / "sock": 0o700}


# --------------------------------------------------------------------- a real daemon under a low file limit


def _limited(files: int) -> Callable[[], None]:
    def apply() -> None:  # in the child: a low file limit, and umask 000 (its files must still be private)
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
        os.umask(0)
    return apply


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _start(run_dir: Path, log: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    return start_daemon("--app", APP, "--port", "0", "--run-dir", str(run_dir), "--max-workers", "3", "--model",
                        "noop", *args, stderr=log.open("w"), preexec_fn=_limited(256))


def _hold(url: str, n: int) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    held = []
    for _ in range(n):
        try:
            held.append(socket.create_connection((host, int(port)), timeout=5))
        except OSError:  # the backlog is full: enough held
            break
    return held


def _get(url: str, timeout_s: float = 30) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return json.loads(r.read())


@pytest.mark.parametrize("cap", [None, "1000"], ids=["default-cap", "cap-above-the-limit"])
def test_idle_clients_do_not_stop_a_daemon_under_a_low_file_limit(tmp_path, cap):
    """256 descriptors; 400 idle connections. With the default cap (128) no descriptor runs out, and each new
    client closes the connection idle longest: /healthz is answered while they are held. With a cap above the
    limit accept fails with EMFILE, and the server waits instead of spinning. Either way the log stays small,
    the process lives, and it answers once the clients leave."""
    log = tmp_path / "daemon.log"
    proc, url = _start(tmp_path / "run", log, "--interval", "1", *(["--max-connections", cap] if cap else []))
    try:
        rss_before = _rss_kib(proc.pid)
        held = _hold(url, 400)
        time.sleep(4.0)  # several control intervals with the descriptors (or the slots) spent
        if not cap:  # at the cap, a new client closes the connection idle longest: served while they are held
            assert _get(f"{url}/healthz", 10) == {"ok": True}
        alive, rss_held, log_bytes = proc.poll() is None, _rss_kib(proc.pid), log.stat().st_size
        for s in held:
            s.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                assert _get(f"{url}/healthz", 5) == {"ok": True}
                break
            except OSError:
                assert time.monotonic() < deadline, "no answer after the clients left"
                time.sleep(0.2)
        status = _get(f"{url}/status")
        print(f"cap {cap or 'default'}: held {len(held)}, RSS {rss_before} -> {rss_held} KiB, log {log_bytes} B, "
              f"http {status['http']}, loop errors {status['loop_errors']}")
        assert alive and proc.poll() is None and len(held) >= 300
        assert log_bytes < 50_000, log.read_text()[-3000:]
        assert status["http"]["max_connections"] == (int(cap) if cap else 128)
        if not cap:  # the reserve kept descriptors for the workers' health checks: none was taken for hung
            assert [w["state"] for w in status["workers"]] == ["ready"] * 3 and status["ready"] is True
        assert (status["http"]["errors"].get("accept", 0) > 0) == bool(cap)  # EMFILE only above the limit
        if cap:  # descriptors are back: TensorBoard writes again (a new writer), decisions succeed
            time.sleep(3.0)
            later = _get(f"{url}/status")
            assert later["loop_errors"]["tensorboard"] == status["loop_errors"]["tensorboard"]
            assert later["decisions"][-1]["source"] != "error"
            # a health check this process could not open is no verdict on the worker: none was killed as hung
            assert later["worker_restarts_by_cause"].get("hung", 0) == 0, later["worker_restarts_by_cause"]
            assert [w["state"] for w in later["workers"]] == ["ready"] * 3 and later["ready"] is True
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run").rglob("*") if not p.is_socket()}
        assert modes and all(m & 0o077 == 0 for m in modes.values()), modes  # under umask 000
    finally:
        proc.terminate()
        assert proc.wait(60) == 0, log.read_text()[-3000:]
