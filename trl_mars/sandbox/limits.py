"""OS-level isolation: namespaces for a zygote (once), rlimits and privilege drop for each child.

A zygote enters new network (only a down loopback), mount and PID namespaces (a user namespace first when
not root) and becomes PID 1 of its PID namespace: sandboxed processes cannot signal it (init ignores
signals from its own namespace that it has no handler for), cannot see host processes, and die with it.
Without namespaces the harness blocks ``socket`` in-process (weak, reported) and cleanup falls back to
finding processes by uid or session. As root each worker runs programs under its own unused uid
(``uid_base`` + the outer zygote's pid), which makes RLIMIT_NPROC effective and keeps /proc private.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
MS_REC, MS_PRIVATE, MNT_DETACH = 16384, 1 << 18, 2
PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
TMPFS_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
_SYS_PIVOT_ROOT = 155  # x86_64 and the generic table (aarch64: 41)

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl  # resolved once, at import (in a zygote: before it forks)
# A check process's one ctypes call, with its arguments made here as C values: in a freshly forked process
# each Python object a call touches is a copied page, and typed arguments (``argtypes``, converting each int
# through ``from_param``) made the first call cost about 60 us and 19 page faults more than a no-op, against
# about 40 us and 13 (a throw-away script, 300 forked children, two runs).
_PDEATHSIG_KILL = (ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL))


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


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data)), f"mount {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_enc(target), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    number = 41 if os.uname().machine == "aarch64" else _SYS_PIVOT_ROOT
    _check(_libc.syscall(number, _enc(new_root), _enc(put_old)), "pivot_root")


def prctl(option: int, value: int) -> None:
    _check(_prctl(ctypes.c_int(option), ctypes.c_ulong(value), ctypes.c_ulong(0), ctypes.c_ulong(0),
                  ctypes.c_ulong(0)), "prctl")  # fmt: skip


def enter_namespaces() -> str:
    """Unshare network + PID namespaces (a user namespace first when not root); the caller's next child is
    PID 1 of the new PID namespace and makes its own mount namespace. Returns the method."""
    if os.geteuid() == 0:
        unshare(CLONE_NEWNET | CLONE_NEWPID)
        return "netns"
    uid, gid = os.geteuid(), os.getegid()
    unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID)
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)
    return "userns+netns"


def read_only_filesystem(tmpfs_bytes: int) -> None:
    """Fallback when the view cannot be built: every mount read-only (in this mount namespace only) and
    fresh tmpfs on the tmp dirs."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    with open("/proc/self/mountinfo") as f:
        targets = [line.split()[4] for line in f]
    for target in targets:
        try:
            mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        except OSError:
            pass  # locked or vanished mounts stay as they are; "/" itself must succeed (checked below)
    for target in TMPFS_DIRS:
        if os.path.isdir(target):
            mount("tmpfs", target, "tmpfs", 0, f"size={tmpfs_bytes},mode=0755")
    if os.access("/", os.W_OK) and os.access("/usr", os.W_OK):
        raise OSError("root filesystem is still writable")


def sandbox_uid(uid_base: int, zygote_pid: int) -> int | None:
    """The uid the programs of a zygote run as (unique on the machine while the zygote lives, so cleanup by
    uid never touches another sandbox's processes), or None when we cannot switch uid (not root)."""
    return uid_base + zygote_pid if os.geteuid() == 0 else None


def child_rlimits(config, uid: int | None) -> tuple[tuple[int, tuple[int, int]], ...]:
    """(resource, (soft, hard)) pairs a check process sets on itself. Without a uid of its own,
    RLIMIT_NPROC counts the processes the zygote's uid already runs, so it is computed anew per check."""
    nproc = config.max_processes if uid is not None else config.max_processes + count_processes(os.getuid())
    return tuple(
        (limit, (value, value))
        for limit, value in (
            (resource.RLIMIT_AS, config.memory_bytes),
            (resource.RLIMIT_CPU, int(config.max_total_s) + 1),
            (resource.RLIMIT_NPROC, nproc),
            (resource.RLIMIT_FSIZE, config.max_file_bytes),
            (resource.RLIMIT_NOFILE, config.max_open_files),
            (resource.RLIMIT_CORE, 0),
        )
    )


def apply_child_limits(rlimits: tuple, uid: int | None, parent: int) -> None:
    """``rlimits`` (from ``child_rlimits``), then the privilege drop, then PDEATHSIG (a uid change clears it,
    so it comes last); called in the forked child just before the harness runs (SIGXFSZ is already ignored,
    by the zygote, so oversized writes fail with EFBIG instead of killing). ``parent`` is the zygote's pid as
    the child sees it: if the zygote died before PDEATHSIG was armed, the child exits here."""
    for limit, value in rlimits:
        resource.setrlimit(limit, value)
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    _check(_prctl(*_PDEATHSIG_KILL), "prctl")
    if os.getppid() != parent:
        os._exit(0)


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


def memory_in_use(pids: list[int]) -> int:
    """Bytes held by these processes, for the watchdog used without a memory cgroup: anonymous and shared
    resident pages of each, plus the size of every memfd they hold open (counted once per file). Shared
    memory mapped by several processes is counted in each, so this may over-count, never under-count."""
    total, memfds = 0, {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(("RssAnon:", "RssShmem:")):
                        total += int(line.split()[1]) << 10
            for fd in os.listdir(f"/proc/{pid}/fd"):
                path = f"/proc/{pid}/fd/{fd}"
                if os.readlink(path).startswith("/memfd:"):
                    st = os.stat(path)
                    memfds[(st.st_dev, st.st_ino)] = st.st_blocks * 512
        except (OSError, ValueError):
            continue  # the process exited meanwhile
    return total + sum(memfds.values())


def remove_tree(path: str) -> None:
    """Delete ``path`` and everything under it without recursion (a 3000-level tree must not raise
    RecursionError) and without building long paths (each step is relative to an open directory)."""
    parent = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    stack = [(parent, os.path.basename(path))]  # (fd of the directory holding it, name)
    fds: list[int] = []  # fds[i] is the open directory stack[i] names
    try:
        while stack:
            dir_fd, name = stack[-1]
            if len(fds) < len(stack):
                try:
                    os.chmod(name, 0o700, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    pass  # a symlink, or not ours: unlinking is what matters
                try:
                    fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd))
                except OSError as e:
                    if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    os.unlink(name, dir_fd=dir_fd)
                    stack.pop()
                    continue
            fd = fds[-1]
            subdir = None
            for entry in os.scandir(fd):
                if entry.is_dir(follow_symlinks=False):
                    subdir = entry.name
                else:
                    os.unlink(entry.name, dir_fd=fd)
            if subdir is not None:
                stack.append((fd, subdir))
                continue
            os.close(fds.pop())
            stack.pop()
            os.rmdir(name, dir_fd=dir_fd)
    finally:
        for fd in fds:
            os.close(fd)
        os.close(parent)
