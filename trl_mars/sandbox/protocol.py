"""Length-prefixed JSON messages between the parent pool and a zygote, over a pair of pipes."""

from __future__ import annotations

import json
import os
import select
import struct
import time

_HEADER = struct.Struct("!Q")
MAX_MESSAGE = 256 << 20


class ChannelClosed(EOFError):
    """The other end died or sent garbage."""


def send_msg(fd: int, obj) -> None:
    data = json.dumps(obj).encode()
    data = _HEADER.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data) :]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, left = [], n
    while left:
        if deadline is not None:
            wait = deadline - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                raise TimeoutError("no answer from the sandbox worker")
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise ChannelClosed("sandbox worker closed its channel")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv_msg(fd: int, deadline: float | None = None):
    """Next message; raises ``TimeoutError`` past ``deadline`` (monotonic) and ``ChannelClosed`` on EOF."""
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    if size > MAX_MESSAGE:
        raise ChannelClosed(f"message of {size} bytes")
    try:
        return json.loads(_read_exact(fd, size, deadline))
    except ValueError as e:
        raise ChannelClosed(f"malformed message: {e}") from e
