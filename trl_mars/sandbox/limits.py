"""OS-level isolation: namespaces for a zygote (once), rlimits and privilege drop for each child.

Network: a fresh network namespace (only a down loopback) via ``unshare``; without it the harness blocks
``socket`` in-process (weak, reported). Filesystem: a private mount namespace where every mount is
re-mounted read-only and /tmp, /var/tmp, /dev/shm are fresh size-capped tmpfs that only the zygote
may write (each check gets its own directory there, owned by the sandbox uid). As root each worker runs
programs under its own unused uid (``uid_base`` + its pid), which makes RLIMIT_NPROC effective and lets cleanup kill by uid.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
TMPFS_DIRS = ("/tmp", "/var/tmp", "/dev/shm")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    """``os.unshare`` on Python >= 3.12, libc ``unshare`` otherwise."""
    if hasattr(os, "unshare"):
        os.unshare(flags)
    else:
        _check(_libc.unshare(flags), "unshare")


def _enc(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data)), f"mount {target}")


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), "prctl")


def _enter_namespaces() -> str:
    """Unshare network + mount namespaces (a user namespace first when not root). Returns the method."""
    if os.geteuid() == 0:
        unshare(CLONE_NEWNET | CLONE_NEWNS)
        return "netns"
    uid, gid = os.geteuid(), os.getegid()
    unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS)
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    return "userns+netns"


def _private_filesystem(tmpfs_bytes: int) -> None:
    """Make every mount read-only (in this mount namespace only) and put fresh tmpfs on the tmp dirs."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    with open("/proc/self/mountinfo") as f:
        targets = [line.split()[4] for line in f]
    for target in targets:
        try:
            _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        except OSError:
            pass  # locked or vanished mounts stay as they are; "/" itself must succeed (checked below)
    for target in TMPFS_DIRS:
        if os.path.isdir(target):
            _mount("tmpfs", target, "tmpfs", 0, f"size={tmpfs_bytes},mode=0755")
    if os.access("/", os.W_OK) and os.access("/usr", os.W_OK):
        raise OSError("root filesystem is still writable")


def isolate_zygote(tmpfs_bytes: int) -> dict:
    """Called once in a fresh zygote. Returns a report of what isolation is in force."""
    report: dict = {"network": "harness socket block (weak)", "filesystem": "none", "warnings": []}
    try:
        prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of sandboxed programs are reparented here and reaped
    except OSError as e:
        report["warnings"].append(f"no subreaper: {e}")
    try:
        report["network"] = _enter_namespaces()
    except OSError as e:
        report["warnings"].append(f"no network/mount namespace: {e}")
        return report
    try:
        _private_filesystem(tmpfs_bytes)
        report["filesystem"] = "read-only mounts + private tmpfs"
    except OSError as e:
        report["warnings"].append(f"no private filesystem: {e}")
    return report


def _others_can_read(path: str) -> bool:
    """Whether an unrelated uid can list ``path`` (o+rx) and reach it (o+x on every ancestor)."""
    parts = os.path.realpath(path).split(os.sep)
    ancestors = [os.sep.join(parts[:i]) or os.sep for i in range(1, len(parts))]
    modes = [os.stat(p).st_mode for p in [*ancestors, os.path.realpath(path)]]
    return all(m & 0o001 for m in modes) and bool(modes[-1] & 0o004)


def expose_import_paths(paths: list[str], root: str = "/tmp/.python-path") -> list[str]:
    """Read-only bind mounts, under the private /tmp, of the import directories the sandbox uid could not
    read (e.g. a Python installed under /root); returns ``paths`` with those entries replaced."""
    exposed = []
    for i, path in enumerate(paths):
        if not path or not os.path.isdir(path) or _others_can_read(path):
            exposed.append(path)
            continue
        target = os.path.join(root, str(i))
        os.makedirs(target, mode=0o755)
        os.chmod(root, 0o755)
        _mount(path, target, None, MS_BIND)
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        exposed.append(target)
    return exposed


def sandbox_uid(uid_base: int, zygote_pid: int) -> int | None:
    """The uid the programs of a zygote run as (unique on the machine while the zygote lives, so cleanup by
    uid never touches another sandbox's processes), or None when we cannot switch uid (not root)."""
    return uid_base + zygote_pid if os.geteuid() == 0 else None


def apply_child_limits(config, uid: int | None) -> None:
    """rlimits, then the privilege drop; called in the forked child just before the harness runs."""
    cpu = int(config.max_total_s) + 1
    nproc = config.max_processes if uid is not None else config.max_processes + count_processes(os.getuid())
    for limit, value in (
        (resource.RLIMIT_AS, config.memory_bytes),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_NPROC, nproc),
        (resource.RLIMIT_FSIZE, config.max_file_bytes),
        (resource.RLIMIT_NOFILE, config.max_open_files),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(limit, (value, value))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversized writes fail with EFBIG instead of killing
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)


def _proc_fields(pid: str) -> tuple[int, int, str] | None:
    """(uid, session id, state) of a process from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read().rsplit(")", 1)[1].split()
        return os.stat(f"/proc/{pid}").st_uid, int(stat[3]), stat[0]
    except (OSError, IndexError, ValueError):
        return None


def sandbox_pids(uid: int | None = None, sid: int | None = None) -> list[int]:
    """Live (non-zombie) processes owned by ``uid`` or in session ``sid``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fields = _proc_fields(pid)
        if fields and fields[2] != "Z" and (fields[0] == uid or fields[1] == sid):
            found.append(int(pid))
    return found


def count_processes(uid: int) -> int:
    return len(sandbox_pids(uid=uid))


def kill_all(uid: int | None = None, sid: int | None = None) -> None:
    """SIGKILL every live process found by ``sandbox_pids`` (used when a zygote died with children)."""
    for pid in sandbox_pids(uid, sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def block_sockets() -> None:
    """In-process fallback when no network namespace exists: make creating sockets raise. A determined
    program can undo this (e.g. via ctypes); it only stops casual network use."""
    import _socket
    import socket

    def refuse(*args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")

    for module in (socket, _socket):
        for name in ("socket", "create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
            if hasattr(module, name):
                setattr(module, name, refuse)
