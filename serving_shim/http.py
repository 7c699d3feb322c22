"""The shim's HTTP front end (uvicorn serving a small ASGI app, in the daemon's event loop) and client (httpx2).

Why this stack: uvicorn is the maintained reference server of ASGI, the Python standard for async web apps;
run with its pure-Python ``h11`` parser it brings a strict HTTP/1.1 parser (no request smuggling through
conflicting lengths) with a head-size limit, keep-alive with an idle timeout, a concurrency limit and a
graceful shutdown. Starlette's ``Request``/``Response`` read and write the ASGI messages (the shim routes on
its own: ``Daemon.handle``, ``Router.handle``), and its ``TestClient`` drives the app in tests without a
socket. httpx2 (httpx as Pydantic maintains it, the client starlette's TestClient uses) is the ``Client``;
prometheus_client writes ``/metrics`` (``metrics.py``). The shim's own types stay small: a handler gets a
``Request`` (body read in full) and returns a ``Response``.

Every request gets exactly one answer, bad input a one-line JSON error, and no client holds the server. The
limits, each a ``Server`` argument (its default a module constant), and what enforces them:

* body: at most ``max_body`` bytes (``MAX_BODY``, 16 MiB: an image) → 413, answered from the Content-Length
  before a byte of the body is read, or as soon as a chunked body passes it; the connection is then closed.
  A POST/PUT/PATCH with neither Content-Length nor chunked Transfer-Encoding → 411, and both at once → 400
  (closed: the bytes after it are never read as a next request). The app does this.
* head (request line and headers): at most ``max_header_bytes`` → 431; a malformed head → 400 (closed). uvicorn's
  ``h11_max_incomplete_event_size``, answered by the protocol below.
* time: ``idle_timeout_s`` for the next request's first byte on a connection, the first request's too
  (closed quietly; uvicorn's ``timeout_keep_alive``, which the protocol below also arms for a new connection);
  ``header_timeout_s`` from that byte to the end of the head (408, closed: the protocol below) and
  ``body_timeout_s`` to read the body (408, closed: the app, with an asyncio timeout).
* connections: at most ``max_connections`` open ones, so that the daemon stays below its file limit and keeps
  descriptors for its workers: a new connection over the cap closes the one idle longest (waiting for a
  request: always allowed in HTTP/1.1); when none is idle it stays, and its requests are answered 503 until
  others close (uvicorn's ``limit_concurrency``, set to ``max_connections + 1``: uvicorn counts the newcomer
  itself). Connections are accepted ``ACCEPT_BATCH`` at a time, so that the cap acts before many descriptors
  are taken. Accepting under a spent file limit (EMFILE) is retried by asyncio after a second; each failure is
  counted (``errors["accept"]``) and logged rate-limited.
* a handler that raises: a 500, counted and logged rate-limited (``errors["handler"]``); the connection goes on.

The bearer token is the daemon's (``access.authorized``); the client sends ``$JIGSAW_AUTH_TOKEN``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import os
import resource
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import httpx2
import uvicorn
from starlette.requests import ClientDisconnect
from starlette.requests import Request as AsgiRequest
from starlette.responses import Response as AsgiResponse
from uvicorn.lifespan.off import LifespanOff
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from jigsaw.profiles.errors import ShimError
from jigsaw.serving_shim.errorlog import ErrorLog

log = logging.getLogger("jigsaw.http")
# uvicorn warns once per bad request (malformed heads, the concurrency limit): clients' faults, answered on
# the wire, that a hostile client could repeat at line rate. Only its errors are logged.
_protocol_log = logging.getLogger("jigsaw.http.protocol")
_protocol_log.setLevel(logging.ERROR)

MAX_BODY = 16 * 1024 * 1024  # bytes; an image, or a JSON document
MAX_HEADER_BYTES = 32 * 1024  # request line and headers together, bytes
IDLE_TIMEOUT_S = 60.0  # a connection waiting for its next request (its first too) is closed after this
HEADER_TIMEOUT_S = 10.0  # from a request's first byte to the end of its headers
BODY_TIMEOUT_S = 30.0  # to read a body (16 MiB at most: >= 0.5 MiB/s), and to drain at shutdown
RESERVE_FDS = 128  # descriptors kept for workers' sockets, logs, TensorBoard and the listening socket
MAX_CONNECTIONS_DEFAULT = 1024  # the default's ceiling
LISTEN_BACKLOG = 1024  # connections the kernel holds until they are accepted (no descriptor of ours each)
ACCEPT_BATCH = 16  # connections accepted at once, before the cap can close idle ones (asyncio's "backlog")
AUTH_TOKEN_ENV = "JIGSAW_AUTH_TOKEN"  # the daemon's bearer token; the Client sends it when set
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_ACCEPT_FAILED = "socket.accept() out of system resource"  # asyncio's message for EMFILE and kin


def default_max_connections() -> int:
    """Half the soft file limit (never more than the limit less ``RESERVE_FDS``), within 16..1024: the
    connections a daemon can hold and still open its workers' sockets, logs and TensorBoard files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, min(soft // 2, soft - RESERVE_FDS, MAX_CONNECTIONS_DEFAULT))


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # as sent: with the query string, not percent-decoded
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()  # more headers, e.g. WWW-Authenticate

    @classmethod
    def json(cls, status: int, doc: Any) -> Response:
        return cls(status, json.dumps(doc, separators=(",", ":")).encode())

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        return cls.json(status, {"status": "error", "error": message})


Handler = Callable[[Request], Awaitable[Response]]


class App:
    """The ASGI application: a request read into a ``Request`` within the body limits, ``handler``'s
    ``Response`` sent back; the one place where a handler's exception becomes a 500."""

    def __init__(self, handler: Handler, *, max_body: int = MAX_BODY, body_timeout_s: float = BODY_TIMEOUT_S,
                 max_header_bytes: int = MAX_HEADER_BYTES, errors: ErrorLog | None = None) -> None:
        self.handler, self.max_body, self.body_timeout_s = handler, max_body, body_timeout_s
        self.max_header_bytes = max_header_bytes
        self.errors = errors if errors is not None else ErrorLog(log)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # uvicorn runs with lifespan and websockets off
            return
        request = await self._read(AsgiRequest(scope, receive))
        if request is None:  # the client left mid-body: no one to answer
            return
        close = isinstance(request, Response)  # refused before its body was read: the stream cannot go on
        response = request if isinstance(request, Response) else await self._answer(request)
        headers = dict(response.headers) | ({"connection": "close"} if close else {})
        await AsgiResponse(response.body, response.status, headers, response.content_type)(scope, receive, send)

    async def _read(self, asgi: AsgiRequest) -> Request | Response | None:
        """The request with its body; a ``Response`` refusing it (then closed); None when the client left."""
        method, headers = asgi.method, dict(asgi.headers)  # (h11 checked that Content-Length is one number)
        head_bytes = len(asgi.scope["raw_path"]) + len(asgi.scope["query_string"]) + sum(
            len(name) + len(value) + 4 for name, value in asgi.scope["headers"])
        if head_bytes > self.max_header_bytes:  # (h11 bounds a head that arrives in pieces; this one came whole)
            return Response.error(431, f"request line and headers exceed {self.max_header_bytes} bytes")
        length, chunked = headers.get("content-length"), "transfer-encoding" in headers
        if length is not None and chunked:
            return Response.error(400, "send either Content-Length or Transfer-Encoding, not both")
        if length is None and not chunked and method in _BODY_METHODS:
            return Response.error(411, f"{method} needs a Content-Length header (or a chunked body)")
        too_big = Response.error(413, f"body exceeds {self.max_body} bytes")
        if length is not None and not (length.isascii() and length.isdigit()):  # (h11 refuses it before us)
            return Response.error(400, "Content-Length is not a number")
        if length is not None and int(length) > self.max_body:
            return too_big
        body = bytearray()
        try:
            async with asyncio.timeout(self.body_timeout_s):
                async for chunk in asgi.stream():
                    body += chunk
                    if len(body) > self.max_body:
                        return too_big
        except TimeoutError:
            return Response.error(408, f"body not complete within {self.body_timeout_s:g} s")
        except ClientDisconnect:
            return None
        query = asgi.scope["query_string"].decode("latin-1")
        path = asgi.scope["raw_path"].decode("latin-1") + (f"?{query}" if query else "")
        return Request(method, path, headers, bytes(body))

    async def _answer(self, request: Request) -> Response:
        try:
            return await self.handler(request)
        except Exception as e:  # one 500 and one (rate-limited) log line; the connection goes on
            self.errors.record("handler", e, f"answering {request.method} {request.path[:200]!r}")
            return Response.error(500, "internal error (logged by the server)")


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with what it leaves out: a deadline for a request's head, an idle timeout for a
    connection's first request, the connection cap's closing of the connection idle longest, and one-line JSON
    for the errors it answers itself. (Built by uvicorn per connection; ``limits`` is the ``Server``.)"""

    def __init__(self, *args: Any, limits: Server, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.logger = _protocol_log
        self.idle_since = self.loop.time()
        self.head_deadline: asyncio.TimerHandle | None = None

    def idle(self) -> bool:
        """Waiting for a request: no byte of one received, no answer owed."""
        return (not self.transport.is_closing() and self.conn.their_state is h11.IDLE
                and self.conn.our_state is h11.IDLE and not self.conn.trailing_data[0])

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # an answer's head and body go as two writes: without TCP_NODELAY the body waits for the client's
            # delayed ACK of the head (~40 ms on every keep-alive request after the first)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)
        if len(self.connections) > self.limits.max_connections:
            idle = [c for c in self.connections if c is not self and isinstance(c, _Protocol) and c.idle()]
            if idle:
                min(idle, key=lambda c: c.idle_since).timeout_keep_alive_handler()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0] and not self.transport.is_closing():
            if self.head_deadline is None:
                self.head_deadline = self.loop.call_later(self.limits.header_timeout_s, self._head_too_slow)
        else:
            self._cancel_head_deadline()

    def on_response_complete(self) -> None:
        self.idle_since = self.loop.time()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def shutdown(self) -> None:  # the server stops (uvicorn's hook): idle connections close, busy ones answer
        if not self.transport.is_closing():
            super().shutdown()

    def _cancel_head_deadline(self) -> None:
        if self.head_deadline is not None:
            self.head_deadline.cancel()
            self.head_deadline = None

    def _head_too_slow(self) -> None:
        self.head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._refuse(408, f"headers not complete within {self.limits.header_timeout_s:g} s")

    def send_400_response(self, msg: str) -> None:  # h11 refused the bytes received (uvicorn's hook)
        if len(self.conn.trailing_data[0]) > self.limits.max_header_bytes:
            self._refuse(431, f"request line and headers exceed {self.limits.max_header_bytes} bytes")
        else:
            self._refuse(400, "malformed HTTP request")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with a one-line JSON error, then close."""
        body = Response.error(status, message).body
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        head = h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status])
        with contextlib.suppress(h11.LocalProtocolError):  # an answer was under way: the close alone says it
            self.transport.write(self.conn.send(head) + self.conn.send(h11.Data(data=body))
                                 + self.conn.send(h11.EndOfMessage()))
        self.transport.close()


class Server:
    """Serves ``handler`` on host:port with uvicorn, in the running event loop, within the limits of the module
    docstring (seconds, bytes, connections)."""

    def __init__(self, handler: Handler, *, idle_timeout_s: float = IDLE_TIMEOUT_S,
                 header_timeout_s: float = HEADER_TIMEOUT_S, body_timeout_s: float = BODY_TIMEOUT_S,
                 max_header_bytes: int = MAX_HEADER_BYTES, max_body: int = MAX_BODY,
                 max_connections: int | None = None) -> None:
        self.header_timeout_s, self.max_header_bytes = header_timeout_s, max_header_bytes
        self.max_connections = max_connections if max_connections is not None else default_max_connections()
        self.errors = ErrorLog(log)  # "accept", "handler"
        self.app = App(handler, max_body=max_body, body_timeout_s=body_timeout_s, max_header_bytes=max_header_bytes,
                       errors=self.errors)
        self.uvicorn = uvicorn.Server(uvicorn.Config(
            self.app, http=functools.partial(_Protocol, limits=self),  # type: ignore[arg-type]
            ws="none", lifespan="off", interface="asgi3", log_config=None, access_log=False, proxy_headers=False,
            server_header=False, h11_max_incomplete_event_size=max_header_bytes,
            timeout_keep_alive=idle_timeout_s,  # type: ignore[arg-type]  # (a float works: loop.call_later)
            limit_concurrency=self.max_connections + 1, backlog=ACCEPT_BATCH,
            timeout_graceful_shutdown=body_timeout_s))  # type: ignore[arg-type]  # (a float works: asyncio.timeout)
        self._sock: socket.socket | None = None
        self._ticks: asyncio.Task[None] | None = None
        self._loop_errors: tuple[asyncio.AbstractEventLoop, Any] | None = None  # the loop, its handler before

    @property
    def connections(self) -> set[Any]:
        """The open connections (uvicorn's protocols)."""
        return self.uvicorn.server_state.connections

    async def start(self, host: str, port: int) -> int:
        """Bind and listen; returns the port (useful with port 0). A port in use is a ``ShimError``."""
        try:
            family, _, _, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
            self._sock = socket.create_server(address, family=family, backlog=LISTEN_BACKLOG)
        except (OSError, OverflowError) as e:
            if getattr(e, "errno", None) == errno.EADDRINUSE:
                raise ShimError(f"port {port} on {host} is in use", field="--port",
                                fix="choose another port, or stop what holds it") from None
            raise ShimError(f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e})",
                            field="--host/--port", fix="use an address of this machine, e.g. 127.0.0.1") from None
        loop = asyncio.get_running_loop()
        passed_on = loop.get_exception_handler()

        def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if context.get("message") == _ACCEPT_FAILED:  # asyncio retries in a second: count, log rate-limited
                self.errors.record("accept", context.get("exception") or OSError(context["message"]),
                                   "accepting a connection")
            elif passed_on is not None:
                passed_on(loop, context)
            else:
                loop.default_exception_handler(context)

        self._loop_errors = loop, passed_on
        loop.set_exception_handler(on_loop_error)
        self.uvicorn.config.load()
        self.uvicorn.lifespan = LifespanOff(self.uvicorn.config)  # (uvicorn.Server.serve makes it; we call its parts)
        await self.uvicorn.startup(sockets=[self._sock])
        # asyncio accepts as many connections per wake-up as it passed to listen(): a few, so that the cap closes
        # idle ones before more descriptors are taken; the kernel's queue stays deep
        self._sock.listen(LISTEN_BACKLOG)
        self._ticks = loop.create_task(self.uvicorn.main_loop())  # refreshes the Date header once a second
        return int(self._sock.getsockname()[1])

    def stop_accepting(self) -> None:
        for listener in getattr(self.uvicorn, "servers", ()):
            listener.close()

    async def close(self) -> None:
        """Stop accepting, close idle connections, let those mid-request answer (``body_timeout_s`` at most),
        then close what is left."""
        if self._ticks is None:
            return
        self.uvicorn.should_exit = True
        await self._ticks
        await self.uvicorn.shutdown(sockets=[self._sock] if self._sock is not None else None)
        for connection in list(self.connections):
            connection.transport.abort()
        self._ticks = None
        if self._loop_errors is not None:
            loop, handler = self._loop_errors
            loop.set_exception_handler(handler)


class Client:
    """HTTP/1.1 keep-alive connections to ``url`` (httpx2; ``max_connections`` at once, calls beyond wait for
    one); ``call`` sends a request and returns the answer. ``token`` (default: ``$JIGSAW_AUTH_TOKEN``) goes in
    an ``Authorization: Bearer`` header. Transport failures raise ``ConnectionError``."""

    def __init__(self, url: str, token: str | None = None, *, max_connections: int = 1) -> None:
        try:
            parts = urlsplit(url)
            _ = parts.port  # raises for a port out of range
        except ValueError as e:
            raise ShimError(f"'{url}' is not a URL ({e})", field="--url", fix="e.g. http://127.0.0.1:8080") from None
        if parts.scheme != "http" or not parts.hostname:
            raise ShimError(f"'{url}' is not an http:// URL", field="--url", fix="e.g. http://127.0.0.1:8080")
        token = token if token is not None else os.environ.get(AUTH_TOKEN_ENV)
        self.url, self.max_connections = url.rstrip("/"), max_connections
        self.headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http: httpx2.AsyncClient | None = None  # made on the first call, in the caller's event loop

    async def call(self, method: str, path: str, body: bytes = b"",
                   headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """(status, body) of ``method path``; ``body`` goes as JSON unless ``headers`` name a Content-Type
        (e.g. ``{"content-type": "image/png"}``)."""
        if self._http is None:
            limits = httpx2.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)
            # TCP_NODELAY: without it a request's head and body wait on the server's delayed ACK (~40 ms each)
            transport = httpx2.AsyncHTTPTransport(limits=limits, trust_env=False,
                                                  socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
            self._http = httpx2.AsyncClient(base_url=self.url, headers=self.headers, timeout=None, trust_env=False,
                                            transport=transport)
        sent = {"content-type": "application/json", **{k.lower(): v for k, v in (headers or {}).items()}}
        try:
            answer = await self._http.request(method, path, content=body, headers=sent)
        except httpx2.TransportError as e:
            raise ConnectionError(f"{type(e).__name__}: {e}") from e
        return answer.status_code, answer.content

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
