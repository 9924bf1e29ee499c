"""For multi-process and sharded tests: a free loopback port, a run that stops cleanly on a hang, and FSDP2
sharding as accelerate applies it.

A hung ``torchrun`` gets SIGTERM, which it forwards to its ranks (they run in sessions of their own, so a SIGKILL
would orphan them); only if it has not stopped 60 s later is it killed.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence

import torch


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for ``--master_port``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_or_stop(cmd: Sequence[str], env: Mapping[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` to completion with its output captured; after ``timeout_s`` SIGTERM it (then SIGKILL after
    60 s) and raise ``AssertionError`` with the tail of its stderr."""
    proc = subprocess.Popen(list(cmd), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        raise AssertionError(
            f"{list(cmd)[:4]} did not finish in {timeout_s}s (hang?); output tail:\n{stderr[-3000:]}"
        ) from None
    return subprocess.CompletedProcess(list(cmd), proc.returncode, stdout, stderr)


def fsdp2_shard(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` sharded by FSDP2 as accelerate does it: each decoder layer (``_no_split_modules``), then the whole
    model, on a CPU mesh over the current process group."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (1,))
    for layer in [m for m in model.modules() if type(m).__name__ in model._no_split_modules]:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
