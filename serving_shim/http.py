"""A small HTTP/1.1 server and client on asyncio streams (the standard library has neither for asyncio).

Enough for the shim's JSON endpoints: Content-Length bodies (no chunked uploads: 411), keep-alive, one
request at a time per connection, a body limit (413), one-line JSON errors for malformed requests. The
daemon's front end and the load generator use it; tests and people can use any HTTP client.
"""

from __future__ import annotations

import asyncio
import errno
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

from jigsaw.profiles.errors import ShimError

MAX_BODY = 64 * 1024  # bytes; a request is a small JSON document
MAX_HEADERS = 100
_LINE_LIMIT = 16 * 1024
_DISCARD_LIMIT = 16 * MAX_BODY


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

    @classmethod
    def json(cls, status: int, doc: Any) -> Response:
        return cls(status, json.dumps(doc, separators=(",", ":")).encode())

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        return cls.json(status, {"status": "error", "error": message})


Handler = Callable[[Request], Awaitable[Response]]


def _encode(response: Response, keep_alive: bool) -> bytes:
    reason = HTTPStatus(response.status).phrase
    head = (f"HTTP/1.1 {response.status} {reason}\r\nContent-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    return head.encode() + response.body


async def _read_request(reader: asyncio.StreamReader) -> Request | Response | None:
    """The next request; a ``Response`` to send before closing when it is malformed; None at end of stream."""
    line = await reader.readline()
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return Response.error(400, "malformed request line")
    headers: dict[str, str] = {}
    while True:
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep or len(headers) >= MAX_HEADERS:
            return Response.error(400, "malformed or too many headers")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return Response.error(411, "send a Content-Length body")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        return Response.error(400, "Content-Length is not a number")
    if length < 0:
        return Response.error(400, "negative Content-Length")
    if length > MAX_BODY:
        if length <= _DISCARD_LIMIT:  # read it, so that the client is not reset before it reads the answer
            await reader.readexactly(length)
        return Response.error(413, f"body of {length} bytes exceeds {MAX_BODY}")
    body = await reader.readexactly(length)
    return Request(parts[0].upper(), parts[1], headers, body)


@dataclass
class Server:
    """Serves ``handler`` on host:port, keeping connections alive between requests."""

    handler: Handler
    connections: set[asyncio.StreamWriter] = field(default_factory=set)
    server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Bind and listen; returns the port (useful with port 0). A port in use is a ``ShimError``."""
        try:
            self.server = await asyncio.start_server(self._serve, host, port, limit=_LINE_LIMIT, backlog=1024)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ShimError(f"port {port} on {host} is in use", field="--port",
                                fix="choose another port, or stop what holds it") from None
            raise ShimError(f"cannot listen on {host}:{port} ({e.strerror})", field="--host/--port",
                            fix="use an address of this machine, e.g. 127.0.0.1") from None
        return int(self.server.sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    def close(self) -> None:
        """Stop accepting and close every connection (answer what is pending first)."""
        self.stop_accepting()
        for writer in list(self.connections):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.add(writer)
        try:
            while True:
                try:
                    request = await _read_request(reader)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                    request = Response.error(400, "truncated or oversized request")
                if request is None:
                    break
                if isinstance(request, Response):
                    writer.write(_encode(request, keep_alive=False))
                    await writer.drain()
                    break
                keep_alive = request.headers.get("connection", "").lower() != "close"
                writer.write(_encode(await self.handler(request), keep_alive))
                await writer.drain()
                if not keep_alive:
                    break
        except (ConnectionError, OSError):
            pass  # the client left
        finally:
            self.connections.discard(writer)
            writer.close()


class Client:
    """One keep-alive connection to ``url``'s host; ``call`` sends a request and reads the answer."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ShimError(f"'{url}' is not an http:// URL", field="--url", fix="e.g. http://127.0.0.1:8080")
        self.host, self.port = parts.hostname, parts.port or 80
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
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
