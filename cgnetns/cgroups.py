"""cgroup2: where it is mounted, where build cgroups go, and their life cycle.

Owns: finding the cgroup2 mount (unified at ``/sys/fs/cgroup`` or hybrid at
``/sys/fs/cgroup/unified``, decided by the filesystem magic, not the name),
reading a process's ``0::`` line, choosing the parent of a build cgroup
(delegated own cgroup, else ``<root>/cgnetns`` on hosts where systemd does not
manage cgroups), creating, attaching to, killing and removing cgroups.

Degrades: a host without cgroup2 raises NoCgroup2Error with a hint; kernels
without ``cgroup.kill`` (before 5.14) are handled by freezing the cgroup,
killing every member and thawing it.  Roots (``/proc``, ``/sys/fs/cgroup``,
``/run/systemd/system``) are parameters with defaults.
"""

import errno
import os
import signal
import time

from . import _sys, tags
from .errors import CgnetnsError, NoCgroup2Error, PlacementError

SYS_CGROUP = "/sys/fs/cgroup"
SYSTEMD_RUNDIR = "/run/systemd/system"
CGNETNS_SUBTREE = "cgnetns"

NO_CGROUP2_HINT = ("mount it (mount -t cgroup2 none /sys/fs/cgroup/unified) or boot with "
                   "systemd.unified_cgroup_hierarchy=1; cgnetns needs cgroup2")


def find_cgroup2(sys_cgroup=SYS_CGROUP):
    """Absolute path of the cgroup2 mount: unified or hybrid layout."""
    for path in (sys_cgroup, os.path.join(sys_cgroup, "unified")):
        try:
            if _sys.statfs_type(path) == _sys.CGROUP2_SUPER_MAGIC:
                return path
        except OSError:
            continue
    raise NoCgroup2Error("no cgroup2 hierarchy at %s or %s/unified" % (sys_cgroup, sys_cgroup),
                         NO_CGROUP2_HINT)


def _component_ok(c):
    return 0 < len(c) <= 255 and c not in (b".", b"..")


def parse_cgroup_file(data):
    """The helper's rule (helper/parse.c, parse_cgroup_file) for the bytes of
    /proc/PID/cgroup: ``("OK", path)`` with the 0:: path (bytes, with its
    leading '/'), ``("NONE", None)`` without a 0:: line (a v1-only host), or
    ``("BAD", None)``: a line without its newline, a NUL, two 0:: lines, or a
    0:: path that is not "/" or canonical (no empty, "." or ".." component,
    none longer than 255 bytes).  tests/parser_cases.py holds the cases both
    implementations pass."""
    found = None
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            return "BAD", None
        line = data[pos:nl]
        if b"\0" in line:
            return "BAD", None
        if line.startswith(b"0::"):
            path = line[3:]
            if found is not None or not path.startswith(b"/") or len(path) >= 4096:
                return "BAD", None
            if path != b"/" and not all(_component_ok(c) for c in path[1:].split(b"/")):
                return "BAD", None
            found = path
        pos = nl + 1
    return ("OK", found) if found is not None else ("NONE", None)


def parse_proc_cgroup(text):
    """The cgroup2 path from the text of /proc/PID/cgroup, or None (v1 only,
    or a file the helper would refuse)."""
    state, path = parse_cgroup_file(text.encode(errors="surrogateescape")
                                    if isinstance(text, str) else text)
    return path.decode(errors="surrogateescape") if state == "OK" else None


def cgroup_of(pid="self", proc="/proc"):
    """The cgroup2 path of PID relative to the cgroup2 root, e.g. ``/cgnetns/x``."""
    with open(os.path.join(proc, str(pid), "cgroup")) as f:
        path = parse_proc_cgroup(f.read())
    if path is None:
        raise NoCgroup2Error("process %s has no cgroup2 membership (v1-only host)" % pid,
                             NO_CGROUP2_HINT)
    # A path ending in " (deleted)" means the cgroup was removed under us.
    return path


def to_abs(root, cgpath):
    """Join the cgroup2 mount ROOT and a cgroup path, refusing '..' escapes."""
    parts = [p for p in cgpath.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise CgnetnsError("cgroup path %r is not canonical" % cgpath)
    return os.path.join(root, *parts) if parts else root


def to_rel(root, abspath):
    rel = os.path.relpath(abspath, root)
    return "/" if rel == "." else "/" + rel


def systemd_manages_cgroups(systemd_rundir=SYSTEMD_RUNDIR):
    """sd_booted(3): systemd is PID 1 when /run/systemd/system is a directory."""
    return os.path.isdir(systemd_rundir)


def choose_parent(root, pid="self", proc="/proc", systemd_rundir=SYSTEMD_RUNDIR):
    """The cgroup (absolute path) under which this process should create builds.

    Inside a delegated cgroup: that cgroup.  Otherwise, where systemd does not
    manage cgroups: ``<root>/cgnetns``.  A systemd host outside a delegated
    subtree raises PlacementError with the systemd-run hint.
    """
    own = to_abs(root, cgroup_of(pid, proc))
    if tags.is_delegated(own):
        return own
    if systemd_manages_cgroups(systemd_rundir):
        raise PlacementError(
            "systemd manages cgroups here and this process is not in a delegated cgroup",
            "run it inside: systemd-run --scope -p Delegate=yes -- cgnetns-run ...")
    return os.path.join(root, CGNETNS_SUBTREE)


def ensure_dir(path):
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass


def create(path, make_parent=False):
    """Create a new cgroup directory; it must not exist already.

    MAKE_PARENT: create the parent too when missing.  Another build's teardown
    may remove that parent (remove_if_empty) between the two mkdirs: retry.
    """
    try:
        for attempt in range(5):
            if make_parent:
                ensure_dir(os.path.dirname(path))
            try:
                os.mkdir(path, 0o755)
                return
            except FileNotFoundError:
                if not make_parent or attempt == 4:
                    raise
    except FileExistsError:
        raise CgnetnsError("cgroup %s exists already" % path, "run cgnetns-gc") from None
    except OSError as e:
        raise CgnetnsError("cannot create cgroup %s: %s" % (path, e.strerror),
                           "run as root on a writable cgroup2 hierarchy") from None


def remove_if_empty(path):
    """Remove the cgroup at PATH if nothing is in or below it; else leave it."""
    try:
        os.rmdir(path)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EBUSY):
            raise


def attach(path, pid=0):
    """Move PID (0: the caller) into the cgroup at PATH."""
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write("%d\n" % pid)


def procs(path):
    """PIDs directly in the cgroup at PATH (empty when it is gone)."""
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def subtree(path):
    """PATH and every cgroup below it, deepest first."""
    out = []
    for dirpath, dirnames, _ in os.walk(path, topdown=False):
        out.append(dirpath)
    return out


def populated(path):
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k == "populated":
                    return v.strip() == "1"
    except FileNotFoundError:
        return False
    return False


def kill(path, timeout=10.0):
    """SIGKILL everything in the cgroup at PATH and below; wait until it is empty."""
    if not os.path.isdir(path):
        return
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")
    except FileNotFoundError:
        _freeze_and_kill(path)  # cgroup.kill is new in 5.14
    deadline = time.monotonic() + timeout
    while populated(path):
        if time.monotonic() > deadline:
            raise CgnetnsError("processes in %s did not die" % path,
                               "look for processes stuck in D state (ps -eo stat,pid,cmd)")
        time.sleep(0.005)


def _freeze_and_kill(path):
    # Freezing first stops forks racing the kill loop (cgroup-v2.rst, "freezer").
    dirs = subtree(path)
    for d in reversed(dirs):
        _write_quiet(os.path.join(d, "cgroup.freeze"), "1")
    for d in dirs:
        for pid in procs(d):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for d in dirs:
        _write_quiet(os.path.join(d, "cgroup.freeze"), "0")


def _write_quiet(path, value):
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError:
        pass


def remove(path, timeout=10.0):
    """Kill what is left and remove the cgroup and everything below it."""
    if not os.path.isdir(path):
        return
    kill(path, timeout)
    deadline = time.monotonic() + timeout
    for d in subtree(path):
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                # EBUSY while the last task is still exiting (cgroup-v2.rst).
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
