"""A cgroup that bounds everything one check runs: total memory (shmem and memfd pages included), number of
tasks, CPU weight.

Each zygote gets its own cgroup, created by its outer process under the cgroup it was started in, and the
process that forks the checks (the zygote, or its forker) joins it before the first check; it runs one check
at a time, so the cgroup holds exactly one check's processes (plus that process's own few new pages; the pages
it had before joining stay charged where they were). Children are born in it, so no migration is paid per
check. cgroup v2 is used where the memory and pids controllers are delegated to our cgroup, else the v1
hierarchies (memory, pids, cpu) when they are writable; otherwise ``create`` returns ``None`` with the reason
and the zygote falls back to per-process rlimits and an RSS watchdog.
"""

from __future__ import annotations

import os
import time

PREFIX = "trl-mars-"


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, fstype, super options) of every cgroup mount."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], set(fields[sep + 3].split(","))
            if fstype in ("cgroup", "cgroup2"):
                found.append((fields[3], fields[4], fstype, options))
    return found


def _own_paths() -> dict[str, str]:
    """Our cgroup path per hierarchy: key '' for v2, else the v1 controller names ('memory', 'pids', ...)."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for name in controllers.split(",") if controllers else [""]:
                paths[name] = path
    return paths


def _join_path(mount_root: str, mount_point: str, path: str) -> str | None:
    if not (path == mount_root or path.startswith(mount_root.rstrip("/") + "/")):
        return None  # our cgroup is outside what this mount shows (a cgroup namespace boundary)
    return os.path.normpath(os.path.join(mount_point, os.path.relpath(path, mount_root)))


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


class CheckCgroup:
    """The cgroup directories of one zygote (one per hierarchy) and its limits."""

    def __init__(self, version: int, dirs: dict[str, str], controllers: set[str] | None = None):
        self.version, self.dirs = version, dirs
        self.controllers = controllers  # v2 only: those enabled for it (v1: the keys of ``dirs``)
        self._events: int | None = None
        self._procs: list[int] | None = None

    @property
    def describe(self) -> str:
        names = self.controllers if self.version == 2 else set(self.dirs)
        return f"cgroup v{self.version} ({', '.join(sorted(names & {'cpu', 'memory', 'pids'}))})"

    def open(self) -> None:
        """Open what ``join`` and ``oom_kills`` use (each hierarchy's ``cgroup.procs``, the OOM counter), so
        both keep working after the process (and the processes it forks) left the host's filesystem."""
        self._procs = [
            os.open(os.path.join(d, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC) for d in self.dirs.values()
        ]
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        self._events = os.open(os.path.join(self.dirs["" if self.version == 2 else "memory"], name), os.O_RDONLY)

    def join(self) -> None:
        """Move the calling process into the cgroup (its children are then born there)."""
        if self._procs is None:
            self.open()
        for fd in self._procs:
            os.write(fd, b"0")

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has killed in this cgroup so far."""
        for line in os.pread(self._events, 4096, 0).decode().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self, wait_s: float = 0.0) -> None:
        """rmdir each directory; a cgroup whose last task just exited can stay busy a moment, so retry for
        up to ``wait_s``."""
        give_up = time.monotonic() + wait_s
        for d in self.dirs.values():
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > give_up:
                        break
                    time.sleep(0.005)


def _sweep(parent: str, ours: str) -> None:
    """Remove empty cgroups of zygotes that died without cleaning up (rmdir fails on non-empty ones),
    including one left under our own name by an earlier process with our pid."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        pid = name[len(PREFIX) :]
        if (name.startswith(PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}")) or name == ours:
            try:
                os.rmdir(os.path.join(parent, name))
            except OSError:
                pass


def _v2_parent(own: str, mount_point: str) -> tuple[str, set[str]]:
    """The v2 cgroup to create the check's cgroup in, and the controllers enabled for its children: our own
    cgroup when it can have children with the memory and pids controllers (it is the root, or holds no
    process), else its parent when those are delegated there (e.g. a systemd unit with ``Delegate=yes``)."""
    reasons = []
    candidates = [(own, True)] + ([(os.path.dirname(own), False)] if own != mount_point else [])
    for parent, may_enable in candidates:
        with open(os.path.join(parent, "cgroup.subtree_control")) as f:
            enabled = set(f.read().split())
        with open(os.path.join(parent, "cgroup.controllers")) as f:
            available = set(f.read().split())
        missing = {"memory", "pids"} - enabled
        if missing and may_enable and missing <= available:
            try:
                _write(os.path.join(parent, "cgroup.subtree_control"), " ".join(f"+{c}" for c in missing))
                missing = set()
            except OSError as e:
                reasons.append(f"cannot enable {sorted(missing)} in {parent}: {e}")
        if not missing and os.access(parent, os.W_OK):
            return parent, enabled | {"memory", "pids"}
        reasons.append(f"{parent}: memory and pids not delegated to its children")
    raise OSError("; ".join(reasons))


def _create_v2(mounts, paths, name: str, memory: int, tasks: int, cpu_weight: int) -> CheckCgroup:
    if "" not in paths:
        raise OSError("no cgroup v2 hierarchy")
    for root, point, fstype, _ in mounts:
        own = _join_path(root, point, paths[""]) if fstype == "cgroup2" else None
        if own is None:
            continue
        parent, enabled = _v2_parent(own, point)
        _sweep(parent, name)
        path = os.path.join(parent, name)
        os.mkdir(path)
        group = CheckCgroup(2, {"": path}, enabled)
        try:
            _write(os.path.join(path, "memory.max"), str(memory))
            if os.path.exists(os.path.join(path, "memory.swap.max")):
                _write(os.path.join(path, "memory.swap.max"), "0")
            _write(os.path.join(path, "pids.max"), str(tasks))
            if "cpu" in enabled:
                _write(os.path.join(path, "cpu.weight"), str(cpu_weight))
        except OSError:
            group.remove()
            raise
        return group
    raise OSError("no cgroup v2 mount shows our cgroup")


def _create_v1(mounts, paths, name: str, memory: int, tasks: int, cpu_weight: int) -> CheckCgroup:
    dirs = {}
    for root, point, fstype, options in mounts:
        for controller in ("memory", "pids", "cpu"):
            if fstype == "cgroup" and controller in options and controller in paths and controller not in dirs:
                parent = _join_path(root, point, paths[controller])
                if parent is not None:
                    dirs[controller] = parent
    if not {"memory", "pids"} <= set(dirs):
        raise OSError("no writable cgroup v1 memory and pids hierarchies")
    created: dict[str, str] = {}
    group = CheckCgroup(1, created)
    try:
        for controller, parent in dirs.items():
            _sweep(parent, name)
            created[controller] = os.path.join(parent, name)
            os.mkdir(created[controller])
        memory_dir = created["memory"]
        _write(os.path.join(memory_dir, "memory.limit_in_bytes"), str(memory))
        if os.path.exists(os.path.join(memory_dir, "memory.memsw.limit_in_bytes")):
            _write(os.path.join(memory_dir, "memory.memsw.limit_in_bytes"), str(memory))
        _write(os.path.join(created["pids"], "pids.max"), str(tasks))
        if "cpu" in created:
            _write(os.path.join(created["cpu"], "cpu.shares"), str(max(2, cpu_weight * 1024 // 100)))
    except OSError:
        group.remove()
        raise
    return group


def create(owner_pid: int, memory: int, tasks: int, cpu_weight: int) -> tuple[CheckCgroup | None, str]:
    """The cgroup for the zygote of ``owner_pid`` with these limits, or (None, why not)."""
    try:
        mounts, paths = _mounts(), _own_paths()
    except OSError as e:
        return None, f"cannot read the cgroup configuration: {e}"
    reasons = []
    for make in (_create_v2, _create_v1):
        try:
            return make(mounts, paths, f"{PREFIX}{owner_pid}", memory, tasks, cpu_weight), ""
        except (OSError, ValueError) as e:
            reasons.append(str(e))
    return None, "; ".join(reasons)
