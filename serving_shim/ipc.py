"""The channel between the router and its workers: a Unix domain stream socket per worker, carrying
length-prefixed JSON messages (4-byte big-endian length, then UTF-8 JSON).

Why this channel: the router is one asyncio loop and must wait on many workers without a thread each; a
Unix socket is an ordinary stream for ``asyncio.open_unix_connection``, costs tens of microseconds per round
trip, needs no port, is private to the user (the socket lives in a 0700 directory), and a worker's death
shows at once as end-of-stream. JSON keeps the messages (batch ids, sizes, small results, timings)
readable and lets a worker be written in any language; the tensors never cross it (the worker makes its
own inputs).

Messages (the router asks, the worker answers with the same ``id``):
  {"op": "infer", "id": n, "n": items}   -> {"id": n, "ok": true, "out": [int per item], "ms": service ms}
  {"op": "health", "id": n}              -> {"id": n, "ok": true, "model": name, "pid": pid, "warm_ms": ms}
A failure is answered {"id": n, "ok": false, "error": text}. The worker serves each connection on a thread
of its own and answers ``health`` without waiting for the model, so a health check on a connection of its own
is answered while a long batch runs on the router's; a worker that does not answer it is hung, not busy.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

_HEADER = struct.Struct(">I")
MAX_MESSAGE = 1 << 20  # bytes; a batch's results are a few KiB


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(len(body)) + body


def _checked_length(header: bytes) -> int:
    (n,) = _HEADER.unpack(header)
    if n > MAX_MESSAGE:
        raise ConnectionError(f"message of {n} bytes exceeds {MAX_MESSAGE}")
    return n


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The next message; raises ``asyncio.IncompleteReadError`` (a ``EOFError``) when the peer is gone."""
    n = _checked_length(await reader.readexactly(_HEADER.size))
    return json.loads(await reader.readexactly(n))


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise EOFError("peer closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv_message(sock: socket.socket) -> dict[str, Any]:
    """Blocking counterpart of ``read_message`` (the worker's side); ``EOFError`` when the peer is gone."""
    return json.loads(_recv_exactly(sock, _checked_length(_recv_exactly(sock, _HEADER.size))))


async def request(path: str, message: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """One round trip to the worker at socket ``path`` on a connection of its own (health checks, beside the
    router's connection); raises ``TimeoutError`` when the answer takes longer than ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_MESSAGE + 8)
        try:
            writer.write(encode(message))
            return await read_message(reader)
        finally:
            writer.close()
