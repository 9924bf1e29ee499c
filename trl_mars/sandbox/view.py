"""The filesystem a sandboxed program sees: a new root holding only what the interpreter needs.

Built once per zygote inside its private mount namespace, then entered with ``pivot_root`` (the host's
root is detached, so no path leads back to it). The view holds, all read-only: ``/usr`` (system libraries,
with ``/bin``, ``/lib``... as on the host), the loader's cache in ``/etc``, the interpreter and its standard
library at their host paths (so modules the zygote already imported keep working and Python installed in a
folder other users cannot read is importable), and the packages the config allows (``packages``) at their
host paths. Writable: a size-capped ``/tmp`` (the checks' working directory) and ``/dev/shm``. ``/dev`` has
only null, zero, full, random, urandom; ``/proc`` is this zygote's PID namespace, with other users'
processes hidden. Project sources, datasets, home folders and the rest of the host are not there.
"""

from __future__ import annotations

import glob
import os
import sys
import sysconfig
from importlib.util import find_spec

from trl_mars.sandbox import limits

STAGE = "/tmp"  # where the new root is assembled (a private tmpfs mounted over the host's /tmp)
WORK = "/tmp/work"  # the checks' working directory, inside the view
HOST_TMP = "/.host-tmp"  # where exposed host paths under /tmp (e.g. a virtual environment) appear in the view


def view_path(path: str) -> str:
    """Where host ``path`` appears in the view: at its own path, except under ``/tmp``, the checks' scratch.

    >>> view_path("/usr/lib"), view_path("/tmp/venv/lib/site-packages/numpy")
    ('/usr/lib', '/.host-tmp/tmp/venv/lib/site-packages/numpy')
    """
    return HOST_TMP + path if path == "/tmp" or path.startswith("/tmp/") else path


DEVICES = ("null", "zero", "full", "random", "urandom")
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime")


def _package_paths(names: tuple[str, ...]) -> list[str]:
    """Host paths to expose for each allowed top-level module: the module, its ``<name>.libs`` folder of
    bundled shared libraries and its distribution's metadata (for ``importlib.metadata``)."""
    if not names:
        return []
    from importlib import metadata  # only here: it pulls in email, csv, zipfile... which the zygote need not hold

    paths = []
    dists = metadata.packages_distributions()
    for name in names:
        spec = find_spec(name)
        if spec is None:
            raise ModuleNotFoundError(f"SandboxConfig.packages: no module named {name!r} to expose")
        locations = list(spec.submodule_search_locations or []) or [spec.origin]
        paths += [p for p in locations if p and os.path.exists(p)]
        for location in locations:
            libs = os.path.join(os.path.dirname(location), f"{name}.libs")
            if os.path.isdir(libs):
                paths.append(libs)
        for dist in dists.get(name, []):
            info = metadata.distribution(dist)._path  # the .dist-info folder
            if os.path.isdir(info):
                paths.append(str(info))
    return paths


def _interpreter_paths() -> list[str]:
    """The standard library (with lib-dynload), the interpreter binary and libpython, as host paths."""
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])  # in a venv: the base interpreter's
    dynload = [os.path.realpath(p) for p in sys.path if os.path.basename(p) == "lib-dynload"]
    paths = [stdlib, *dynload, os.path.realpath(sys.executable)]
    paths += glob.glob(os.path.join(sys.base_prefix, "lib", "libpython*.so*"))
    paths = [p for p in paths if os.path.exists(p) and not p.startswith("/usr/")]
    return [p for p in paths if not any(p.startswith(q + "/") for q in paths)]


def _bind(source: str, flags: int, pinned: dict[str, int] | None = None) -> None:
    """Read-only (per ``flags``) bind of host ``source`` at ``view_path(source)`` under ``STAGE``; a source under
    the host's /tmp (hidden by the stage) is read through the ``O_PATH`` descriptor ``pinned`` holds for it."""
    host = f"/proc/self/fd/{pinned[source]}" if pinned and source in pinned else source
    target = STAGE + view_path(source)
    if os.path.isdir(host):
        os.makedirs(target, mode=0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        open(target, "a").close()
    limits.mount(host, target, None, limits.MS_BIND)
    limits.mount(None, target, None, limits.MS_REMOUNT | limits.MS_BIND | flags)


def build(tmpfs_bytes: int, packages: tuple[str, ...]) -> list[str]:
    """Assemble the view and ``pivot_root`` into it (in the zygote, in its own mount namespace, as the
    namespace's root). Returns the import path the checks get: the entries of ``sys.path`` still present."""
    ro = limits.MS_RDONLY | limits.MS_NOSUID | limits.MS_NODEV
    packages_paths = _package_paths(packages)
    # paths under the host's /tmp vanish once the stage is mounted there: hold them open first
    pinned = {p: os.open(p, os.O_PATH) for p in packages_paths if view_path(p) != p}
    limits.mount(None, "/", None, limits.MS_REC | limits.MS_PRIVATE)
    limits.mount("tmpfs", STAGE, "tmpfs", limits.MS_NOSUID | limits.MS_NODEV, "size=1m,mode=0755")
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr"):
        host = f"/{name}"
        if os.path.islink(host):
            os.symlink(os.readlink(host), STAGE + host)
        elif os.path.isdir(host):
            _bind(host, ro)
    for name in ETC:
        host = f"/etc/{name}"
        os.makedirs(STAGE + "/etc", mode=0o755, exist_ok=True)
        if os.path.islink(host):
            os.symlink(os.readlink(host), STAGE + host)
        elif os.path.exists(host):
            _bind(host, ro)
    for path in _interpreter_paths():
        _bind(path, ro)
    # a plain (non-venv) install keeps its packages inside the stdlib folder: hide them, then add the allowed
    base_site = os.path.join(os.path.realpath(sysconfig.get_paths()["stdlib"]), "site-packages")
    if os.path.isdir(STAGE + base_site):
        limits.mount("tmpfs", STAGE + base_site, "tmpfs", limits.MS_NOSUID | limits.MS_NODEV, "size=1m,mode=0755")
    for path in packages_paths:
        _bind(path, ro, pinned)
    for fd in pinned.values():
        os.close(fd)
    if os.path.isdir(STAGE + base_site):
        limits.mount(None, STAGE + base_site, None, limits.MS_REMOUNT | ro)
    if os.path.realpath(sys.executable) != sys.executable and not os.path.lexists(STAGE + sys.executable):
        os.makedirs(os.path.dirname(STAGE + sys.executable), mode=0o755, exist_ok=True)
        os.symlink(os.path.realpath(sys.executable), STAGE + sys.executable)
    os.makedirs(STAGE + "/dev/shm", mode=0o755)
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            _bind(f"/dev/{name}", limits.MS_NOSUID | limits.MS_NOEXEC)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):  # fmt: skip
        os.symlink(target, f"{STAGE}/dev/{name}")
    for name in ("proc", "tmp"):
        os.makedirs(f"{STAGE}/{name}", mode=0o755)
    limits.mount("proc", STAGE + "/proc", "proc", limits.MS_NOSUID | limits.MS_NODEV | limits.MS_NOEXEC, "hidepid=2")
    limits.mount(None, STAGE, None, limits.MS_REMOUNT | ro)
    os.chdir(STAGE)
    limits.pivot_root(".", ".")
    limits.umount(".", limits.MNT_DETACH)
    os.chdir("/")
    mount_scratch(tmpfs_bytes)
    if os.access("/usr", os.W_OK) or os.path.exists(os.path.realpath(__file__)):
        raise OSError("the filesystem view is incomplete")
    return [view_path(p) for p in sys.path if p and os.path.isdir(view_path(p))]


def mount_scratch(tmpfs_bytes: int) -> None:
    """Fresh writable tmpfs on /tmp (with the working directory) and /dev/shm, replacing any before."""
    for target, mode in (("/tmp", "0755"), ("/dev/shm", "1777")):
        if os.path.ismount(target):
            limits.umount(target, limits.MNT_DETACH)
        limits.mount("tmpfs", target, "tmpfs", limits.MS_NOSUID | limits.MS_NODEV, f"size={tmpfs_bytes},mode={mode}")
    os.mkdir(WORK, 0o755)
