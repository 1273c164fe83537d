"""The build tag: which network namespace a build cgroup approves.

Owns the format of the ``trusted.cgnetns`` xattr (doc/FORMAT.rst, version 1),
its strict parser, and reading/writing it on a cgroup directory.  ``trusted.*``
attributes need CAP_SYS_ADMIN to set and to read (an unprivileged read gets
ENODATA on cgroupfs, see FIELD-NOTES.md), so an unprivileged caller simply sees
no tag: :func:`read_tag` reports that as ``None`` and callers that care check
their privilege first.  ``user.*`` attributes are never consulted.
"""

import errno
import os
import re
from collections import namedtuple

from .errors import TagFormatError

TAG_XATTR = "trusted.cgnetns"
DELEGATE_XATTRS = ("trusted.delegate", "user.delegate")
TAG_VERSION = 1
TAG_MAX = 255

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")
_U64 = r"(0|[1-9][0-9]{0,19})"
_TAG_RE = re.compile(r"v1 pin=(%s) dev=%s ino=%s nsid=%s\Z"
                     % (ID_RE.pattern[:-2], _U64, _U64, _U64))

Tag = namedtuple("Tag", "pin dev ino nsid")


def valid_id(build_id):
    """True when BUILD_ID may name a pin (doc/FORMAT.rst, ``ID``)."""
    return (isinstance(build_id, str) and ID_RE.match(build_id) is not None
            and not build_id.endswith((".json", ".lock")))


def format_tag(pin, identity):
    """The tag value for pin id PIN and namespace IDENTITY (an NsIdentity)."""
    if not valid_id(pin):
        raise TagFormatError("invalid pin id %r" % (pin,),
                             "use letters, digits, '_', '.', '-' (at most 100)")
    value = "v1 pin=%s dev=%d ino=%d nsid=%d" % (pin, identity.dev, identity.ino,
                                                identity.nsid)
    return value.encode("ascii")


def parse_tag(raw):
    """Parse a tag value (bytes); raise TagFormatError when it is not version 1."""
    if len(raw) > TAG_MAX:
        raise TagFormatError("tag is %d bytes long (at most %d)" % (len(raw), TAG_MAX))
    # In the helper's order (helper/parse.c, parse_tag): a NUL anywhere is
    # malformed; then a version other than v1 ("v" and digits, then a blank
    # or the end) is a version error, whatever follows; then v1, exactly.
    if b"\0" in raw:
        raise TagFormatError("tag %r contains a NUL byte" % raw[:80])
    if not raw.startswith(b"v1 "):
        m = re.match(rb"(v[0-9]+)(?: |\Z)", raw)
        if m:
            raise TagFormatError("tag has format version %s; this cgnetns reads v1"
                                 % m.group(1).decode(), "use the cgnetns that made the build")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise TagFormatError("tag is not ASCII") from None
    m = _TAG_RE.match(text)
    if m is None:
        raise TagFormatError("tag %r does not parse as format v1" % text[:80])
    pin, dev, ino, nsid = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
    if max(dev, ino, nsid) >= 1 << 64 or not valid_id(pin):
        raise TagFormatError("tag %r is out of range" % text[:80])
    return Tag(pin, dev, ino, nsid)


def read_raw_tag(dir_fd_or_path):
    """The raw tag bytes of a cgroup directory, or None when it has none."""
    try:
        return os.getxattr(dir_fd_or_path, TAG_XATTR)
    except OSError as e:
        if e.errno == errno.ENODATA:
            return None
        raise


def read_tag(dir_fd_or_path):
    """The parsed tag of a cgroup directory, or None when it has none."""
    raw = read_raw_tag(dir_fd_or_path)
    return None if raw is None else parse_tag(raw)


def write_tag(dir_fd_or_path, pin, identity):
    os.setxattr(dir_fd_or_path, TAG_XATTR, format_tag(pin, identity))


def remove_tag(dir_fd_or_path):
    """Remove the tag; a missing tag or directory is not an error."""
    try:
        os.removexattr(dir_fd_or_path, TAG_XATTR)
    except OSError as e:
        if e.errno not in (errno.ENODATA, errno.ENOENT):
            raise


def mark_delegated(dir_fd_or_path):
    """Mark a cgroup delegated, as systemd does for Delegate=yes units."""
    for name in DELEGATE_XATTRS:
        os.setxattr(dir_fd_or_path, name, b"1")


def is_delegated(dir_fd_or_path):
    """True when trusted.delegate or user.delegate is ``1``.

    Used only to choose where to *create* build cgroups (systemd's convention),
    never to decide what a build may join.
    """
    for name in DELEGATE_XATTRS:
        try:
            if os.getxattr(dir_fd_or_path, name) == b"1":
                return True
        except OSError:
            pass
    return False
