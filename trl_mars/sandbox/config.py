"""Limits and switches of the execution sandbox, shared by the parent pool and the zygote workers."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SandboxConfig:
    """Per-check limits. ``timeout_s`` bounds the program's top-level code and each test separately;
    ``max_total_s`` bounds the whole check (tests not reached within it are reported as timeouts)."""

    concurrency: int = max(1, os.cpu_count() or 1)
    timeout_s: float = 5.0
    max_total_s: float = 30.0
    memory_bytes: int = 1 << 30  # RLIMIT_AS of every sandboxed process
    max_processes: int = 32  # RLIMIT_NPROC (per sandbox uid when running as root)
    max_file_bytes: int = 16 << 20  # RLIMIT_FSIZE: largest file the program may write
    max_open_files: int = 64  # RLIMIT_NOFILE
    output_cap_bytes: int = 32 << 10  # captured stdout and stderr, each
    tmpfs_bytes: int = 256 << 20  # size of the private /tmp that holds each check's working directory
    uid_base: int = 1_500_000_000  # as root, a zygote runs programs as uid/gid uid_base + its pid
    require_isolation: bool = False  # refuse to run when network/filesystem namespaces are unavailable

    def to_dict(self) -> dict:
        return asdict(self)
