"""A small HTTP/1.1 server and client on asyncio streams (the standard library has neither for asyncio).

Enough for the shim's JSON endpoints: Content-Length bodies, keep-alive, one request at a time per
connection, one-line JSON errors. Every request gets exactly one answer, and no client holds the server:

* a body needs a Content-Length: a POST/PUT/PATCH without one, or any Transfer-Encoding, is answered 411
  and the connection closed (its bytes are never read as a next request); a body over ``MAX_BODY``: 413;
* the request line and headers together are at most ``max_header_bytes`` (431), ``MAX_HEADERS`` lines;
* timeouts: ``idle_timeout_s`` for the first byte of the next request on a connection (then it is closed
  quietly), ``header_timeout_s`` from that byte to the end of the headers and ``body_timeout_s`` for the body
  (408, closed), ``body_timeout_s`` again to send an answer to a client that does not read (closed);
* at most ``max_connections`` open connections, so that the server stays below its file limit rather than
  spin on EMFILE: at the cap a new client closes the connection idle longest (waiting for a request: closing
  it is always allowed in HTTP/1.1), or, when none is idle, waits in the listen backlog until one closes;
* an exception escaping the handler is a 500, logged (rate-limited) and the connection goes on.

The daemon's front end and the load generator use it; tests and people can use any HTTP client.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import resource
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from jigsaw.profiles.errors import ShimError
from jigsaw.serving_shim.errorlog import ErrorLog

log = logging.getLogger("jigsaw.http")

MAX_BODY = 64 * 1024  # bytes; a request is a small JSON document
MAX_HEADERS = 100
MAX_HEADER_BYTES = 32 * 1024  # request line and headers together, bytes
IDLE_TIMEOUT_S = 60.0  # a connection waiting for its next request (its first too) is closed after this
HEADER_TIMEOUT_S = 10.0  # from a request's first byte to the end of its headers
BODY_TIMEOUT_S = 30.0  # to read a body (64 KiB at most), and to send an answer
RESERVE_FDS = 128  # descriptors kept for workers' sockets, logs, TensorBoard and the listening socket
MAX_CONNECTIONS_DEFAULT = 1024  # the default's ceiling: ~100 KiB of buffers each at worst
ACCEPT_RETRY_S = 0.5  # accept failed (EMFILE and kin): wait this long, do not spin
AUTH_TOKEN_ENV = "JIGSAW_AUTH_TOKEN"  # the daemon's bearer token; the Client sends it when set
_DISCARD_LIMIT = 16 * MAX_BODY
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


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
    path: str
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


def _encode(response: Response, keep_alive: bool) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:  # a status Python does not name: the reason phrase is optional
        reason = ""
    extra = "".join(f"{name}: {value}\r\n" for name, value in response.headers)
    head = (f"HTTP/1.1 {response.status} {reason}\r\nContent-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\n{extra}Connection: {'keep-alive' if keep_alive else 'close'}"
            "\r\n\r\n")
    return head.encode() + response.body


async def _read_head(reader: asyncio.StreamReader, first: bytes, max_bytes: int) -> list[str] | Response:
    """The request line and header lines (without line ends), or the error to answer before closing."""
    too_big = Response.error(431, f"request line and headers exceed {max_bytes} bytes")
    lines: list[str] = []
    size = 0
    raw = first
    while True:
        if raw != b"\n":
            try:
                raw += await reader.readline()
            except ValueError:  # one line over the reader's limit (max_bytes)
                return too_big
        size += len(raw)
        if size > max_bytes:
            return too_big
        if not raw.endswith(b"\n"):
            return Response.error(400, "truncated request")
        text = raw.rstrip(b"\r\n").decode("latin-1")
        if not text:
            if lines:
                return lines
        elif len(lines) > MAX_HEADERS:
            return Response.error(431, f"more than {MAX_HEADERS} headers")
        else:
            lines.append(text)  # (empty lines before the request line are ignored: RFC 9112 §2.2)
        raw = b""


def _parse_head(lines: list[str]) -> tuple[str, str, dict[str, str]] | Response:
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return Response.error(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if not sep or not name:
            return Response.error(400, "malformed header line")
        if name == "content-length" and headers.get(name, value) != value:
            return Response.error(400, "conflicting Content-Length headers")
        headers[name] = value
    return parts[0].upper(), parts[1], headers


@dataclass
class Server:
    """Serves ``handler`` on host:port, keeping connections alive between requests, within the limits of the
    module docstring (seconds, bytes, connections)."""

    handler: Handler
    idle_timeout_s: float = IDLE_TIMEOUT_S
    header_timeout_s: float = HEADER_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    max_header_bytes: int = MAX_HEADER_BYTES
    max_connections: int = field(default_factory=default_max_connections)
    errors: ErrorLog = field(default_factory=lambda: ErrorLog(log))  # "accept", "handler", "connection"
    connections: set[asyncio.StreamWriter] = field(default_factory=set)
    _sock: socket.socket | None = field(default=None, init=False)
    _acceptor: asyncio.Task[None] | None = field(default=None, init=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, init=False)
    _idle: dict[asyncio.StreamWriter, float] = field(default_factory=dict, init=False)  # waiting since, loop time

    async def start(self, host: str, port: int) -> int:
        """Bind and listen; returns the port (useful with port 0). A port in use is a ``ShimError``."""
        try:
            family, _, _, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
            self._sock = socket.create_server(address, family=family, backlog=1024)
        except (OSError, OverflowError) as e:
            if getattr(e, "errno", None) == errno.EADDRINUSE:
                raise ShimError(f"port {port} on {host} is in use", field="--port",
                                fix="choose another port, or stop what holds it") from None
            raise ShimError(f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e})",
                            field="--host/--port", fix="use an address of this machine, e.g. 127.0.0.1") from None
        self._sock.setblocking(False)
        slots = asyncio.Semaphore(self.max_connections)
        self._acceptor = asyncio.get_running_loop().create_task(self._accept(self._sock, slots))
        return int(self._sock.getsockname()[1])

    def stop_accepting(self) -> None:
        if self._acceptor is not None:
            self._acceptor.cancel()
        if self._sock is not None:
            self._sock.close()

    def close(self) -> None:
        """Stop accepting and close every connection (answer what is pending first)."""
        self.stop_accepting()
        for writer in list(self.connections):
            writer.close()

    async def _accept(self, sock: socket.socket, slots: asyncio.Semaphore) -> None:
        """Accept one connection, then wait for its slot: at the cap the connection idle longest is closed to
        make room, and while none is idle the listening socket is not read (one connection over the cap)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except ConnectionAbortedError:  # the client left before we accepted
                continue
            except OSError as e:  # EMFILE and kin: wait for descriptors to be freed
                self.errors.record("accept", e, "accepting a connection")
                await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            if slots.locked() and self._idle:
                min(self._idle, key=self._idle.__getitem__).transport.abort()
            try:
                await slots.acquire()
            except asyncio.CancelledError:
                conn.close()
                raise
            task = loop.create_task(self._serve(conn, slots))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: socket.socket, slots: asyncio.Semaphore) -> None:
        """One connection until it ends; its slot is freed once its descriptor is closed."""
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=self.max_header_bytes)
        except OSError as e:
            conn.close()
            slots.release()
            self.errors.record("accept", e, "opening a connection")
            return
        self.connections.add(writer)
        try:
            await self._converse(reader, writer)
        except (ConnectionError, OSError, TimeoutError):
            writer.transport.abort()  # the client left, or does not read what it is sent
        except Exception as e:  # a bug here must not become the event loop's unretrieved exception
            self.errors.record("connection", e, "serving a connection")
            writer.transport.abort()
        finally:
            self.connections.discard(writer)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), self.body_timeout_s)
            except Exception:
                writer.transport.abort()
            slots.release()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await self._read(reader, writer)
            if request is None:
                return
            if isinstance(request, Response):  # malformed: answer and close, the stream cannot be trusted
                await self._send(writer, request, keep_alive=False)
                return
            keep_alive = request.headers.get("connection", "").lower() != "close"
            await self._send(writer, await self._answer(request), keep_alive)
            if not keep_alive:
                return

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request | Response | None:
        """The next request; a ``Response`` to send before closing when it is malformed or too slow; None at
        the end of the stream, after ``idle_timeout_s`` without a byte, or when closed to make room."""
        self._idle[writer] = asyncio.get_running_loop().time()
        try:
            first = await asyncio.wait_for(reader.read(1), self.idle_timeout_s)
        except (TimeoutError, ConnectionError):
            return None
        finally:
            del self._idle[writer]
        if not first:
            return None
        try:
            lines = await asyncio.wait_for(_read_head(reader, first, self.max_header_bytes), self.header_timeout_s)
        except TimeoutError:
            return Response.error(408, f"headers not complete within {self.header_timeout_s:g} s")
        if isinstance(lines, Response):
            return lines
        head = _parse_head(lines)
        if isinstance(head, Response):
            return head
        method, path, headers = head
        if "transfer-encoding" in headers:
            return Response.error(411, "send the body with a Content-Length (no Transfer-Encoding)")
        text = headers.get("content-length")
        if text is None and method in _BODY_METHODS:
            return Response.error(411, f"{method} needs a Content-Length header")
        if text is not None and not (text.isascii() and text.isdigit()):
            return Response.error(400, "Content-Length is not a number")
        length = int(text or "0")
        try:
            if length > MAX_BODY:
                if length <= _DISCARD_LIMIT:  # read it, so that the client is not reset before it reads the answer
                    await asyncio.wait_for(reader.readexactly(length), self.body_timeout_s)
                return Response.error(413, f"body of {length} bytes exceeds {MAX_BODY}")
            body = await asyncio.wait_for(reader.readexactly(length), self.body_timeout_s)
        except TimeoutError:
            return Response.error(408, f"body not complete within {self.body_timeout_s:g} s")
        except asyncio.IncompleteReadError:
            return Response.error(400, "truncated body")
        return Request(method, path, headers, body)

    async def _answer(self, request: Request) -> Response:
        try:
            return await self.handler(request)
        except Exception as e:  # one 500 and one (rate-limited) log line; the connection goes on
            self.errors.record("handler", e, f"answering {request.method} {request.path[:200]!r}")
            return Response.error(500, "internal error (logged by the server)")

    async def _send(self, writer: asyncio.StreamWriter, response: Response, keep_alive: bool) -> None:
        writer.write(_encode(response, keep_alive))
        await asyncio.wait_for(writer.drain(), self.body_timeout_s)


class Client:
    """One keep-alive connection to ``url``'s host; ``call`` sends a request and reads the answer. ``token``
    (default: ``$JIGSAW_AUTH_TOKEN``) goes in an ``Authorization: Bearer`` header."""

    def __init__(self, url: str, token: str | None = None) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port  # raises for a port out of range
        except ValueError as e:
            raise ShimError(f"'{url}' is not a URL ({e})", field="--url", fix="e.g. http://127.0.0.1:8080") from None
        if parts.scheme != "http" or not parts.hostname:
            raise ShimError(f"'{url}' is not an http:// URL", field="--url", fix="e.g. http://127.0.0.1:8080")
        self.host, self.port = parts.hostname, port or 80
        token = token if token is not None else os.environ.get(AUTH_TOKEN_ENV)
        self.auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.reader is not None and self.reader.at_eof():  # the server closed it while idle: reconnect
            self.close()
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.auth}Content-Type: application/json"
                          f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "connection":
                close = value.strip().lower() == "close"
        answer = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, answer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
