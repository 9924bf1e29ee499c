"""The pipes between the pool and a zygote: requests (parent to zygote) as ``marshal``, results (zygote to
parent) as JSON; a malformed or oversized message of either kind ends the channel, never a wrong value."""

from __future__ import annotations

import marshal
import os
import struct

import pytest

from trl_mars.sandbox.protocol import MAX_MESSAGE, ChannelClosed, frame, recv_msg, recv_request, request, unframe


def _pipe_with(data: bytes) -> int:
    read, write = os.pipe()
    os.write(write, data)
    os.close(write)
    return read


def test_a_request_carries_bytes_and_nested_values_as_they_are():
    check = {"program": "def f():\n    return 1\n", "compiled": marshal.dumps(compile("1", "<t>", "eval")),
             "tests": [{"holes": ["f()"], "stdin": None, "stdout_cap": 1024}], "stdio": False}  # fmt: skip
    fd = _pipe_with(request({"check": check}) + request({"check": {**check, "stdio": True}}))
    assert recv_request(fd) == {"check": check}
    assert recv_request(fd)["check"]["stdio"] is True
    with pytest.raises(ChannelClosed):  # the parent closed its end
        recv_request(fd)


@pytest.mark.parametrize(
    "data",
    [
        struct.pack("!Q", 5) + b"\xff\x00\x01\x02\x03",  # not marshal data
        struct.pack("!Q", 3) + marshal.dumps([1, 2, 3])[:3],  # cut short inside the value
        struct.pack("!Q", MAX_MESSAGE + 1),  # announces more than any message may hold
        struct.pack("!Q", 100) + b"x",  # the pipe closes mid-message
    ],
)
def test_a_malformed_request_closes_the_channel(data):
    with pytest.raises(ChannelClosed):
        recv_request(_pipe_with(data))


def test_results_stay_json_and_a_marshalled_one_is_refused():
    result = {"verdicts": [{"status": "passed", "actual": "[1]"}], "stdout": "é\udc80"}
    assert recv_msg(_pipe_with(frame(result))) == {"verdicts": [{"status": "passed", "actual": "[1]"}],
                                                   "stdout": "é\udc80"}  # fmt: skip
    body = marshal.dumps(result)
    with pytest.raises(ChannelClosed):  # the parent never unmarshals what comes from the sandbox's side
        unframe(bytearray(struct.pack("!Q", len(body)) + body))
