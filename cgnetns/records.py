"""Run records and locks: how a live build is told from one whose run died.

Owns ``/run/cgnetns/pins/<ID>.json`` (doc/FORMAT.rst) and the locks.  The
process that owns a build holds an exclusive flock(2) on its record for the
build's whole life; the kernel drops the lock when the last descriptor of it
closes, however the owner died, so ``cgnetns-gc`` can lock a record exactly
when its run is gone — no PID-reuse window.  The recorded PID and start time
are for people (``cgnetns-show``), not for the liveness decision.

The global lock ``pins/.lock`` is held shared by a build while it sets up or
tears down, and exclusively by gc, so gc never mistakes a half-made build for
debris.
"""

import contextlib
import fcntl
import json
import os
import time

from . import namespaces

RECORD_SUFFIX = ".json"
GLOBAL_LOCK = ".lock"


def record_path(build_id, run_dir=namespaces.RUN_DIR):
    return os.path.join(namespaces.pins_dir(run_dir), build_id + RECORD_SUFFIX)


def start_time(pid, proc="/proc"):
    """Field 22 of /proc/PID/stat (clock ticks since boot), or None if gone."""
    try:
        with open(os.path.join(proc, str(pid), "stat"), "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and ')'; split after the last ')'.
    rest = data[data.rindex(b")") + 2:].split()
    return int(rest[19])


@contextlib.contextmanager
def global_lock(run_dir=namespaces.RUN_DIR, exclusive=False, blocking=True):
    path = os.path.join(namespaces.ensure_run_dirs(run_dir), GLOBAL_LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        if not blocking:
            flags |= fcntl.LOCK_NB
        fcntl.flock(fd, flags)
        yield
    finally:
        os.close(fd)


def create_record(build_id, data, run_dir=namespaces.RUN_DIR):
    """Create and lock the record; return the open descriptor that holds the lock."""
    path = record_path(build_id, run_dir)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        # Blocking: the file is new, but gc or the broker may be probing it
        # with a brief shared lock (record_is_live) at this very moment.
        fcntl.flock(fd, fcntl.LOCK_EX)
        payload = dict(data, version=1, id=build_id, pid=os.getpid(),
                       start_time=start_time(os.getpid()), created=time.time())
        os.write(fd, json.dumps(payload, sort_keys=True).encode() + b"\n")
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd


def remove_record(build_id, fd, run_dir=namespaces.RUN_DIR):
    try:
        os.unlink(record_path(build_id, run_dir))
    except FileNotFoundError:
        pass
    if fd is not None:
        os.close(fd)


def read_record(path):
    """The record at PATH as a dict, or None when it is missing or unreadable."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def list_records(run_dir=namespaces.RUN_DIR):
    """Paths of every record file in the pins directory."""
    d = namespaces.pins_dir(run_dir)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(d, n) for n in names
                  if n.endswith(RECORD_SUFFIX) and not n.startswith("."))


def record_is_live(path):
    """True when some process holds the record's lock (its run is alive)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
