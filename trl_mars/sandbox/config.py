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
    memory_bytes: int = 1 << 30  # all processes of a check together (cgroup), and RLIMIT_AS of each
    max_processes: int = 32  # tasks of a check together (cgroup), and RLIMIT_NPROC
    max_file_bytes: int = 16 << 20  # RLIMIT_FSIZE: largest file the program may write
    max_open_files: int = 64  # RLIMIT_NOFILE
    output_cap_bytes: int = 32 << 10  # captured stdout and stderr, each
    tmpfs_bytes: int = 256 << 20  # size of the private /tmp that holds each check's working directory
    uid_base: int = 1_500_000_000  # as root, a zygote runs programs as uid/gid uid_base + its pid
    require_isolation: bool = False  # refuse to run when network/filesystem namespaces are unavailable
    use_cgroup: bool = True  # one cgroup per worker bounds a check's total memory and tasks (where available)
    cpu_weight: int = 100  # the checks' CPU weight in that cgroup (cgroup v2 scale: 1..10000, 100 = default)
    packages: tuple[str, ...] = ()  # top-level modules of the trainer's environment programs may import

    def __post_init__(self) -> None:
        object.__setattr__(self, "packages", tuple(self.packages))
        if not 1 <= self.cpu_weight <= 10000:
            raise ValueError(f"SandboxConfig.cpu_weight must be in 1..10000, got {self.cpu_weight}")
        bad = [p for p in self.packages if not (isinstance(p, str) and p.isidentifier())]
        if bad:
            raise ValueError(f"SandboxConfig.packages must be top-level module names, got {bad}")

    def to_dict(self) -> dict:
        return asdict(self)
