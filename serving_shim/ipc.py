"""The channel between the router and its workers: a Unix domain stream socket per worker, carrying
messages of a JSON header and binary arrays: 4-byte big-endian length, the UTF-8 JSON header, then the raw
bytes of each array the header lists under ``"blobs"`` (``[dtype, shape]`` each, C order).

Why this channel: the router is one asyncio loop and must wait on many workers without a thread each; a
Unix socket is an ordinary stream for ``asyncio.open_unix_connection``, costs tens of microseconds per round
trip, needs no port, is private to the user (the socket lives in a 0700 directory), and a worker's death
shows at once as end-of-stream. The header keeps batch ids, results and timings readable and lets a worker be
written in any language; inputs and the children's items cross as raw bytes (an image is its pixels, not JSON
of numbers), written from the arrays' own memory.

Messages (the router asks, the worker answers with the same ``id``):
  {"op": "infer", "id": n, "blobs": [one per input]}
      -> {"id": n, "ok": true, "ms": service ms, "out": [per input {"value": ..., "forward": [[label, blob], ...]}
          or {"error": text, "refused": bool}], "blobs": [...]}
  {"op": "health", "id": n}  -> {"id": n, "ok": true, "model": name, "pid": pid, "warm_ms": ms}
A failure of the whole batch is answered {"id": n, "ok": false, "error": text}. The worker serves each
connection on a thread of its own and answers ``health`` without waiting for the model, so a health check on a
connection of its own is answered while a long batch runs on the router's; a worker that does not answer it is
hung, not busy.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import struct
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

_HEADER = struct.Struct(">I")
MAX_MESSAGE = 1 << 20  # bytes of JSON header; a batch's results are a few KiB
HANDLER_EXIT = 2  # a worker's exit status when its handler does not load (its log's last line says why)
MAX_BLOB_BYTES = 1 << 28  # bytes of arrays in one message: a batch of 8 images of 4096 x 4096 x 3 fits
Message = tuple[dict[str, Any], list[np.ndarray]]


def encode(message: dict[str, Any], blobs: Sequence[np.ndarray] = ()) -> list[bytes | memoryview]:
    """``message`` and ``blobs`` as the buffers to write, in order (the arrays' memory, not copies)."""
    arrays = [np.ascontiguousarray(b) for b in blobs]
    if arrays:
        message = {**message, "blobs": [[a.dtype.str, list(a.shape)] for a in arrays]}
    body = json.dumps(message, separators=(",", ":")).encode()
    return [_HEADER.pack(len(body)) + body, *(memoryview(a).cast("B") for a in arrays if a.size)]


def _checked_length(header: bytes) -> int:
    (n,) = _HEADER.unpack(header)
    if n > MAX_MESSAGE:
        raise ConnectionError(f"message of {n} bytes exceeds {MAX_MESSAGE}")
    return n


def _blob_layout(message: dict[str, Any]) -> list[tuple[np.dtype[Any], tuple[int, ...], int]]:
    """(dtype, shape, bytes) of each array the header lists; ``ConnectionError`` for a header that is not ours."""
    try:
        layout = [(np.dtype(d), tuple(int(x) for x in shape)) for d, shape in message.get("blobs", ())]
    except (TypeError, ValueError) as e:
        raise ConnectionError(f"malformed blob list ({e})") from None
    sized = [(d, shape, d.itemsize * math.prod(shape)) for d, shape in layout]
    if any(d.hasobject or min(shape, default=1) < 0 for d, shape, _ in sized) or sum(n for *_, n in sized) > MAX_BLOB_BYTES:
        raise ConnectionError("blobs of an unsupported type or over the size limit")
    return sized


def _arrays(layout: list[tuple[np.dtype[Any], tuple[int, ...], int]], data: bytes) -> list[np.ndarray]:
    arrays, at = [], 0
    for d, shape, n in layout:
        arrays.append(np.frombuffer(data, dtype=d, count=n // d.itemsize if d.itemsize else 0, offset=at).reshape(shape))
        at += n
    return arrays


async def read_message(reader: asyncio.StreamReader) -> Message:
    """The next message and its arrays; raises ``asyncio.IncompleteReadError`` (an ``EOFError``) when the peer is
    gone."""
    n = _checked_length(await reader.readexactly(_HEADER.size))
    message = json.loads(await reader.readexactly(n))
    layout = _blob_layout(message)
    total = sum(b for *_, b in layout)
    return message, _arrays(layout, await reader.readexactly(total) if total else b"")


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buffer = bytearray(n)
    view, got = memoryview(buffer), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            raise EOFError("peer closed the connection")
        got += k
    return bytes(buffer)


def recv_message(sock: socket.socket) -> Message:
    """Blocking counterpart of ``read_message`` (the worker's side); ``EOFError`` when the peer is gone."""
    message = json.loads(_recv_exactly(sock, _checked_length(_recv_exactly(sock, _HEADER.size))))
    layout = _blob_layout(message)
    return message, _arrays(layout, _recv_exactly(sock, sum(b for *_, b in layout)))


def send_message(sock: socket.socket, message: dict[str, Any], blobs: Sequence[np.ndarray] = ()) -> None:
    """Blocking counterpart of writing ``encode``'s buffers (the worker's side)."""
    for buffer in encode(message, blobs):
        sock.sendall(buffer)


class Channel(Protocol):
    """The router's connection to one worker: messages go out without waiting, answers come back as they are
    ready (matched by ``id``). A backend makes one per worker (``Backend.connect``)."""

    def send(self, message: dict[str, Any], blobs: Sequence[np.ndarray] = ()) -> None: ...

    async def receive(self) -> Message:
        """The next answer; raises ``EOFError`` or ``ConnectionError`` once the worker is gone."""
        ...

    def close(self) -> None: ...


class SocketChannel:
    """A ``Channel`` over a worker's Unix socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: str) -> SocketChannel:
        return cls(*await asyncio.open_unix_connection(path, limit=MAX_MESSAGE + 8))

    def send(self, message: dict[str, Any], blobs: Sequence[np.ndarray] = ()) -> None:
        self.writer.writelines(encode(message, blobs))

    async def receive(self) -> Message:
        return await read_message(self.reader)

    def close(self) -> None:
        self.writer.close()


async def request(path: str, message: dict[str, Any], timeout_s: float, blobs: Sequence[np.ndarray] = ()
                  ) -> dict[str, Any]:
    """One round trip to the worker at socket ``path`` on a connection of its own (health checks, beside the
    router's connection); raises ``TimeoutError`` when the answer takes longer than ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_MESSAGE + 8)
        try:
            writer.writelines(encode(message, blobs))
            return (await read_message(reader))[0]
        finally:
            writer.close()
