"""Network namespace identity and pins.

Owns: the identity of a namespace (st_dev, st_ino of its nsfs inode and the
kernel's 64-bit id from NS_GET_ID, 0 where the kernel lacks it — inode numbers
are reused after a namespace is freed, the id is not), and pins: bind mounts of
an nsfs file below a root-only directory in ``/run/cgnetns`` that keep a
namespace alive and findable.  All functions take the run directory as a
parameter; nothing happens at import time.
"""

import errno
import os
import stat
from collections import namedtuple

from . import _sys, paths
from .errors import PinError

RUN_DIR = paths.RUN_DIR
PINS_SUBDIR = "pins"


class NsIdentity(namedtuple("NsIdentity", "dev ino nsid")):
    """Identity of a namespace. ``nsid`` is 0 when the kernel has no NS_GET_ID."""

    def same(self, other):
        if other is None or (self.dev, self.ino) != (other.dev, other.ino):
            return False
        return not (self.nsid and other.nsid) or self.nsid == other.nsid

    def __str__(self):
        return "net:[%d] dev=%d nsid=%d" % (self.ino, self.dev, self.nsid)


def identity_of_fd(fd, expect_type=_sys.CLONE_NEWNET):
    """Identity of the namespace file open at FD; checks it is nsfs of the right type."""
    if _sys.fstatfs_type(fd) != _sys.NSFS_MAGIC:
        raise PinError("not a namespace file (filesystem is not nsfs)")
    if expect_type is not None and _sys.ns_get_nstype(fd) != expect_type:
        raise PinError("namespace file is not a network namespace")
    st = os.fstat(fd)
    return NsIdentity(st.st_dev, st.st_ino, _sys.ns_get_id(fd))


def identity_of_path(path, follow=False):
    """Identity of the namespace file at PATH.

    Pins are opened with O_NOFOLLOW; /proc/PID/ns/* are "magic links" that only
    open when followed (FOLLOW=True), and are never something a caller names.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        return identity_of_fd(fd)
    finally:
        os.close(fd)


def current_identity():
    """Identity of the calling thread's network namespace."""
    return identity_of_path("/proc/thread-self/ns/net", follow=True)


def pins_dir(run_dir=RUN_DIR):
    return os.path.join(run_dir, PINS_SUBDIR)


def ensure_run_dirs(run_dir=RUN_DIR):
    """Create RUN_DIR (0755) and its pins directory (0700), both root-owned.

    An existing directory that is not root-owned, is a symlink, or is writable by
    group or others is refused rather than repaired: someone else made it.
    """
    for path, mode in ((run_dir, 0o755), (pins_dir(run_dir), 0o700)):
        try:
            os.mkdir(path, mode)
            os.chmod(path, mode)  # not subject to umask
        except FileExistsError:
            pass
        except OSError as e:
            raise PinError("cannot create %s: %s" % (path, e.strerror),
                           "make /run writable for root (is it mounted read-only?)") from None
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            raise PinError("%s is not a root-owned directory without group/other write"
                           % path, "remove it and try again")
    st = os.lstat(pins_dir(run_dir))
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(pins_dir(run_dir), 0o700)
    return pins_dir(run_dir)


def pin_path(build_id, run_dir=RUN_DIR):
    return os.path.join(pins_dir(run_dir), build_id)


def pin(build_id, source="/proc/thread-self/ns/net", run_dir=RUN_DIR):
    """Pin the namespace at SOURCE as BUILD_ID; return (path, identity).

    The identity is read from the pin after mounting, and must equal the
    source's, so what the tag records is what the pin holds.
    """
    ensure_run_dirs(run_dir)
    want = identity_of_path(source, follow=True)
    path = pin_path(build_id, run_dir)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o400)
    except FileExistsError:
        raise PinError("pin %s exists already" % path, "run cgnetns-gc") from None
    os.close(fd)
    try:
        _sys.mount(source, path, None, _sys.MS_BIND)
        got = identity_of_path(path)
        if not got.same(want) or got.nsid != want.nsid:
            raise PinError("pin %s does not hold the namespace it was made from" % path)
    except BaseException:
        unpin(build_id, run_dir)
        raise
    return path, want


def unpin(build_id, run_dir=RUN_DIR):
    """Unmount (lazily, every stacked mount) and remove a pin; missing is fine."""
    path = pin_path(build_id, run_dir)
    while True:
        try:
            _sys.umount2(path)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):
                break  # not (or no longer) a mount point
            raise
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def is_mounted(path, proc="/proc"):
    """True when PATH is a mount point in this mount namespace (mountinfo)."""
    want = os.fsencode(path)
    with open(os.path.join(proc, "self", "mountinfo"), "rb") as f:
        for line in f:
            fields = line.split(b" ")
            if len(fields) > 4 and _unescape(fields[4]) == want:
                return True
    return False


def _unescape(field):
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i:i + 1] == b"\\" and i + 3 < len(field) + 0 and field[i + 1:i + 4].isdigit():
            out.append(int(field[i + 1:i + 4], 8))
            i += 4
        else:
            out += field[i:i + 1]
            i += 1
    return bytes(out)


def pin_mounts(run_dir=RUN_DIR, proc="/proc"):
    """Paths of mounts below the pins directory, as this mount namespace sees them."""
    prefix = os.fsencode(pins_dir(run_dir)) + b"/"
    found = []
    with open(os.path.join(proc, "self", "mountinfo"), "rb") as f:
        for line in f:
            fields = line.split(b" ")
            if len(fields) > 4:
                mp = _unescape(fields[4])
                if mp.startswith(prefix):
                    found.append(os.fsdecode(mp))
    return found
