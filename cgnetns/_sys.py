"""Thin ctypes wrappers for the system calls Python's os module lacks.

Owns: mount(2), umount2(2), setns(2), unshare(2) and the nsfs ioctls.  Each
wrapper raises OSError with errno on failure.  Loading libc happens on first
use, never at import time.
"""

import ctypes
import ctypes.util
import errno
import fcntl
import os
import struct

MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000

# include/uapi/linux/nsfs.h: NSIO 0xb7; NS_GET_NSTYPE _IO(NSIO, 0x3);
# NS_GET_ID _IOR(NSIO, 0xd, __u64) (new in 6.x; older kernels answer ENOTTY).
NS_GET_NSTYPE = (0xB7 << 8) | 0x3
NS_GET_ID = (2 << 30) | (8 << 16) | (0xB7 << 8) | 0xD

NSFS_MAGIC = 0x6E736673
CGROUP2_SUPER_MAGIC = 0x63677270
PROC_SUPER_MAGIC = 0x9FA0

_libc = None


def libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                ctypes.c_ulong, ctypes.c_void_p]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc.unshare.argtypes = [ctypes.c_int]
        _libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
        _libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
    return _libc


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def _b(path):
    return os.fsencode(path) if path is not None else None


def mount(source, target, fstype, flags, data=None):
    _check(libc().mount(_b(source), _b(target), _b(fstype), flags, _b(data)),
           "mount %s" % target)


def umount2(target, flags=MNT_DETACH | UMOUNT_NOFOLLOW):
    _check(libc().umount2(_b(target), flags), "umount %s" % target)


def setns(fd, nstype):
    _check(libc().setns(fd, nstype), "setns")


def unshare(flags):
    _check(libc().unshare(flags), "unshare")


def _statfs_type(buf):
    # struct statfs on Linux starts with a long f_type.
    return struct.unpack_from("l", buf, 0)[0] & 0xFFFFFFFF


def statfs_type(path):
    """Filesystem magic of PATH (statfs(2) f_type)."""
    buf = ctypes.create_string_buffer(256)
    _check(libc().statfs(_b(path), buf), "statfs %s" % path)
    return _statfs_type(buf.raw)


def fstatfs_type(fd):
    buf = ctypes.create_string_buffer(256)
    _check(libc().fstatfs(fd, buf), "fstatfs")
    return _statfs_type(buf.raw)


def ns_get_nstype(fd):
    return fcntl.ioctl(fd, NS_GET_NSTYPE)


def ns_get_id(fd):
    """The kernel's 64-bit namespace id, or 0 when the kernel lacks NS_GET_ID."""
    buf = bytearray(8)
    try:
        fcntl.ioctl(fd, NS_GET_ID, buf)
    except OSError as e:
        if e.errno in (errno.ENOTTY, errno.EINVAL, errno.ENOSYS):
            return 0
        raise
    return struct.unpack("Q", bytes(buf))[0]
