"""The resolution rule of doc/FORMAT.rst, in Python, for one process — explained.

Owns :func:`explain`: for a PID it walks the same chain as ``cgnetns-exec``
(and the broker) — read ``/proc/PID/cgroup`` from our view, open the cgroup
below the cgroup2 root without following symlinks or leaving the mount, check
that the process is listed in its ``cgroup.procs``, walk up to the nearest
``trusted.cgnetns`` tag, check that the tagged directory is root-owned, parse
the tag, open the pin with O_NOFOLLOW and check nsfs / NS_GET_NSTYPE / st_dev /
st_ino / NS_GET_ID, compare with the process's own netns — and returns an
:class:`Explanation`: every ancestor walked, the tag, the pin and whether it
matches, the verdict (``join``, ``pass-through``, ``refuse``; ``unknown`` when
this process lacks the privilege to read what decides it), a stable
``reason_code``, the reason in words and the fix.  It also says which path
``cgnetns-exec`` started by the process takes (the set-user-ID helper, or the
broker ``cgnetnsd`` where privilege cannot be gained) and, for a join, what
each path gives: on the set-user-ID path the program runs in the approved
namespace; on the broker path it stays in the process's own namespace and only
the AF_INET and AF_INET6 sockets of allow-listed executables are made in the
approved one (helper/notify.c).

A process in a cgroup namespace other than this one's is refused at once, as
the broker refuses a peer in a cgroup namespace other than its own
(helper/resolve.c, step 0): its ``/proc/PID/cgroup`` path would be read
relative to a root it does not see.

It also owns the allow-list check (:func:`check_allow_list`), shared with
``cgnetns-show --check``.

The verdict and its reason category are the ones ``cgnetns-exec`` acts on
(tests compare both on real builds).  Nothing here prints or changes state.

Degrades: without CAP_SYS_ADMIN, ``trusted.*`` attributes read as absent
(ENODATA on cgroupfs), so an unprivileged caller gets verdict ``unknown``
(reason ``tags-unreadable``) together with everything it can see.  Roots
(``/proc``, ``/sys/fs/cgroup``, the run directory, the allow list) are
parameters; their defaults come from :mod:`cgnetns.paths`.
"""

import errno
import os
import select
import stat
import time

from . import allowlist, _sys, cgroups, namespaces, paths, tags
from .errors import CgnetnsError, NoCgroup2Error, TagFormatError

ALLOW_LIST = paths.ALLOW_PATH
RUN_DIR = paths.RUN_DIR

# The init user namespace has this fixed inode number (PROC_USER_INIT_INO),
# the init cgroup namespace this one (PROC_CGROUP_INIT_INO).
INIT_USER_NS_INO = 0xEFFFFFFD
INIT_CGROUP_NS_INO = 0xEFFFFFFB
CAP_SYS_ADMIN = 21

EXIT_NOPROC = 3     # no such process, or it exited while being shown
EXIT_NOPERM = 4     # permission denied

VERDICTS = ("join", "pass-through", "refuse", "unknown")
# Which way cgnetns-exec (the front, helper/front.c) goes for a process:
# "set-user-id" (it execs the set-user-ID helper, which joins the namespace and
# execs the program) or "broker" (no privilege can be gained: it asks cgnetnsd,
# whose supervisor mints the program's sockets).
EXEC_PATHS = ("set-user-id", "broker")

# reason_code -> (verdict, category).  The category is what a refusal of
# cgnetns-exec names; the codes are part of cgnetns-show's JSON interface
# (documented in cgnetns-show(8)); never rename one, only add.
REASONS = {
    # pass-through
    "no-build": ("pass-through", "none"),
    "already-in-approved-netns": ("pass-through", "none"),
    # join
    "approved-netns-differs": ("join", "none"),
    # refuse
    "no-cgroup2": ("refuse", "cgroup"),
    "no-cgroup2-membership": ("refuse", "cgroup"),
    "cgroup-unreachable": ("refuse", "cgroup"),
    "not-in-cgroup": ("refuse", "cgroup"),
    "cgroupns": ("refuse", "cgroup"),
    "tag-owner": ("refuse", "tag"),
    "tag-format": ("refuse", "tag"),
    "tag-version": ("refuse", "tag"),
    "pins-dir-unsafe": ("refuse", "pin"),
    "pin-missing": ("refuse", "pin"),
    "pin-not-nsfs": ("refuse", "pin"),
    "pin-not-net": ("refuse", "pin"),
    "pin-mismatch": ("refuse", "pin"),
    "allow-list-unsafe": ("refuse", "allow-list"),
    "allow-list-missing": ("refuse", "allow-list"),
    # unknown: this process may not read what decides it
    "tags-unreadable": ("unknown", "privilege"),
    "netns-unreadable": ("unknown", "privilege"),
}


class ProcessGone(CgnetnsError):
    """The process does not exist, or exited while it was being examined."""

    status = EXIT_NOPROC


class NoPermission(CgnetnsError):
    """This process may not read what it was asked to show."""

    status = EXIT_NOPERM


class _Verdict(Exception):
    """Ends the walk with a decision (refusals, but also join/pass-through)."""

    def __init__(self, code, reason, fix=None):
        super().__init__(reason)
        self.code, self.reason, self.fix = code, reason, fix


# ---------------------------------------------------------------- utilities

def ns_name(ident):
    return None if ident is None else "net:[%d]" % ident.ino


def ns_dict(ident):
    """JSON form of an NsIdentity (numbers are numbers)."""
    if ident is None:
        return None
    return {"name": ns_name(ident), "dev": ident.dev, "ino": ident.ino, "nsid": ident.nsid}


def same_netns(a, b):
    """Same namespace: dev and ino equal, and the ids too where both are known."""
    return a is not None and b is not None and a.same(b)


def can_read_trusted_xattrs(proc="/proc"):
    """True when this process can read ``trusted.*`` attributes: CAP_SYS_ADMIN
    in its effective set, in the initial user namespace."""
    try:
        with open(os.path.join(proc, "self", "status")) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    break
            else:
                return False
        if not caps & (1 << CAP_SYS_ADMIN):
            return False
        return os.stat(os.path.join(proc, "self", "ns", "user")).st_ino == INIT_USER_NS_INO
    except (OSError, ValueError):
        return False


def _user_name(uid):
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _read_at(dir_fd, name, limit=1 << 20):
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        chunks = []
        size = 0
        while size < limit:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
            size += len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


# ------------------------------------------------------------- allow list

def _unsafe_owner_mode(st, what):
    if st.st_uid != 0:
        return "%s is owned by uid %d, not root" % (what, st.st_uid)
    if st.st_mode & 0o022:
        return "%s is group or other writable (mode %04o)" % (what, stat.S_IMODE(st.st_mode))
    return None


def trusted_path_problem(path, want_dir=False):
    """Why PATH is not trusted (root-owned, not group/other writable, every
    directory above it likewise, no symlinks), or None when it is."""
    if not os.path.isabs(path):
        return "%s is not an absolute path" % path
    parts = [p for p in path.split("/") if p]
    cur = "/"
    try:
        st = os.lstat(cur)
        problem = _unsafe_owner_mode(st, cur)
        if problem:
            return problem
        for i, part in enumerate(parts):
            if part in (".", ".."):
                return "%s is not canonical" % path
            cur = os.path.join(cur, part)
            st = os.lstat(cur)
            last = i == len(parts) - 1
            if stat.S_ISLNK(st.st_mode):
                return "%s is a symbolic link" % cur
            if not last or want_dir:
                if not stat.S_ISDIR(st.st_mode):
                    return "%s is not a directory" % cur
            elif not stat.S_ISREG(st.st_mode):
                return "%s is not a regular file" % cur
            problem = _unsafe_owner_mode(st, cur)
            if problem:
                return problem
    except FileNotFoundError:
        return "%s does not exist" % cur
    except PermissionError:
        return "%s cannot be examined (permission denied)" % cur
    return None


def check_allow_list(path=ALLOW_LIST):
    """The allow list as cgnetns-exec sees it.

    Returns a dict: ``path``; ``state`` — ``ok``, ``missing`` or ``unsafe``
    (cgnetns-exec refuses every call: 125), ``unreadable`` (to this process; the helper reads it as
    root); ``problem`` (words, or None); ``programs`` (the entries, or None
    when unreadable); ``bad_programs`` (entries that cgnetns-exec would not
    run, each ``{"path", "problem"}``).
    """
    out = {"path": path, "state": "ok", "problem": None, "programs": None, "bad_programs": []}
    try:
        os.lstat(path)
    except FileNotFoundError:
        pass
    except PermissionError:
        out.update(state="unreadable", problem="%s cannot be examined by this user" % path)
        return out
    # In the helper's order (helper/path.c): from "/" down, the first
    # component that is unsafe or missing decides, so a missing list below an
    # unsafe directory is unsafe, not missing.
    problem = trusted_path_problem(path)
    if problem:
        if not os.path.lexists(path) and problem.endswith(" does not exist"):
            out.update(state="missing", problem="%s does not exist: cgnetns-exec refuses every "
                       "call" % path)
        else:
            out.update(state="unsafe", problem=problem)
        return out
    try:
        with open(path, "rb") as f:
            data = f.read(64 * 1024 + 1)
    except PermissionError:
        out.update(state="unreadable",
                   problem="%s is readable only by root (cgnetns-exec reads it as root)" % path)
        return out
    if len(data) > allowlist.ALLOW_MAX:
        out.update(state="unsafe", problem="%s is larger than 64 KiB" % path)
        return out
    found, bad = allowlist.entries(data)
    if found is None:
        line = data.split(b"\n")[bad - 1] if bad <= data.count(b"\n") + 1 else b""
        out.update(state="unsafe",
                   problem="%s line %d: %r is not a canonical absolute path"
                   % (path, bad, line.strip(b" \t").decode(errors="replace")))
        return out
    programs = [e.decode(errors="surrogateescape") for e in found]
    out["programs"] = programs
    for prog in programs:
        p = trusted_path_problem(prog)
        if p is None and os.path.realpath(prog) != prog:
            p = "%s is not canonical (it resolves to %s)" % (prog, os.path.realpath(prog))
        if p is not None:
            out["bad_programs"].append({"path": prog, "problem": p})
    return out


# --------------------------------------------------------------- explain

class Explanation:
    """What cgnetns-exec would do for one process, and why.

    Attributes mirror the JSON document of ``cgnetns-show --json`` (see
    :meth:`to_dict` and cgnetns-show(8)).
    """

    def __init__(self, pid):
        self.pid = pid
        self.tgid = pid
        self.uid = None
        self.user = None
        self.command = None
        self.netns = None            # NsIdentity or None
        self.netns_error = None
        self.privileged = False
        self.cgroup_root = None
        self.cgroup = None
        self.in_cgroup_procs = None
        self.ancestors = []          # dicts, from the process's cgroup upwards
        self.tagged_cgroup = None
        self.tag_raw = None
        self.tag = None              # tags.Tag or None
        self.tag_error = None
        self.pin = None              # dict or None
        self.approved = None         # NsIdentity from the tag
        self.record = None           # dict or None
        self.allow_list = None       # dict from check_allow_list
        self.same_cgroupns = None    # in cgnetns-show's cgroup namespace (None: unknown)
        self.exec_path = None        # one of EXEC_PATHS, or None
        self.exec_path_reason = None
        self.verdict = None
        self.reason_code = None
        self.reason = None
        self.fix = None
        self.notes = []

    @property
    def category(self):
        return REASONS[self.reason_code][1] if self.reason_code else None

    def decide(self, code, reason, fix=None):
        assert code in REASONS, code
        self.verdict = REASONS[code][0]
        self.reason_code, self.reason, self.fix = code, reason, fix

    def on_join(self):
        """For a join: what cgnetns-exec gives on each path, in words."""
        if self.verdict != "join":
            return None
        approved = ns_name(self.approved)
        own = ns_name(self.netns)
        return {
            "set_user_id": "the helper joins %s and executes the program there: the program "
                           "and everything it starts run in the approved namespace, with the "
                           "process's ids, descriptors and environment" % approved,
            "broker": "the program runs as the process itself, in its own %s, with "
                      "no_new_privs and a seccomp filter: the AF_INET and AF_INET6 sockets "
                      "that allow-listed executables of the build ask for are made in %s "
                      "(with the process's uid, groups and cgroup); every other socket, and "
                      "every socket of a program that is not on the allow list (what distcc "
                      "starts, the interpreter of a \"#!\" script), stays in %s"
                      % (own, approved, own),
        }

    def to_dict(self):
        tag = None
        if self.tag_raw is not None:
            tag = {"raw": self.tag_raw, "valid": self.tag is not None, "error": self.tag_error,
                   "pin": self.tag.pin if self.tag else None,
                   "dev": self.tag.dev if self.tag else None,
                   "ino": self.tag.ino if self.tag else None,
                   "nsid": self.tag.nsid if self.tag else None}
        return {
            "version": 1,
            "pid": self.pid,
            "tgid": self.tgid,
            "uid": self.uid,
            "user": self.user,
            "command": self.command,
            "netns": ns_dict(self.netns),
            "netns_error": self.netns_error,
            "privileged": self.privileged,
            "cgroup_root": self.cgroup_root,
            "cgroup": self.cgroup,
            "in_cgroup_procs": self.in_cgroup_procs,
            "ancestors": self.ancestors,
            "tagged_cgroup": self.tagged_cgroup,
            "tag": tag,
            "approved_netns": ns_dict(self.approved),
            "pin": self.pin,
            "build": self.record,
            "allow_list": self.allow_list,
            "in_approved_netns": (same_netns(self.netns, self.approved)
                                  if self.netns is not None and self.approved is not None
                                  else None),
            "verdict": self.verdict,
            "reason_code": self.reason_code,
            "category": self.category,
            "reason": self.reason,
            "fix": self.fix,
            "notes": self.notes,
            "same_cgroupns": self.same_cgroupns,
            "exec_path": self.exec_path,
            "exec_path_reason": self.exec_path_reason,
            "on_join": self.on_join(),
        }


def _gone(pid, during=False):
    if during:
        return ProcessGone("process %d exited while it was being shown" % pid,
                           "show a process that is still running")
    return ProcessGone("no such process: %d" % pid, "name the PID of a running process (ps -e)")


class _Subject:
    """/proc/PID opened once: every read goes through this descriptor, so a
    PID reused while we look is never confused with the one we started with
    (reads through a dead process's /proc directory fail with ESRCH)."""

    def __init__(self, pid, proc):
        self.pid = pid
        try:
            self.fd = os.open(os.path.join(proc, str(pid)),
                              os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError, NotADirectoryError):
            raise _gone(pid) from None
        except PermissionError:
            raise NoPermission("cannot open %s/%d: permission denied" % (proc, pid),
                               "run cgnetns-show as root") from None
        if _sys.fstatfs_type(self.fd) != _sys.PROC_SUPER_MAGIC:
            os.close(self.fd)
            raise CgnetnsError("%s is not a procfs mount" % proc, "mount proc on /proc")
        try:
            self.pidfd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            self.pidfd = None

    def read(self, name):
        try:
            return _read_at(self.fd, name)
        except (FileNotFoundError, ProcessLookupError):
            raise _gone(self.pid, during=True) from None
        except PermissionError:
            raise NoPermission("cannot read %s of process %d: permission denied"
                               % (name, self.pid), "run cgnetns-show as root") from None

    def alive(self):
        if self.pidfd is not None:
            r, _, _ = select.select([self.pidfd], [], [], 0)
            if r:
                return False
        try:
            data = _read_at(self.fd, "stat")
        except OSError:
            return False
        return data[data.rindex(b")") + 2:][:1] not in (b"Z", b"X")

    def close(self):
        os.close(self.fd)
        if self.pidfd is not None:
            os.close(self.pidfd)


def explain(pid=None, *, proc="/proc", sys_cgroup=cgroups.SYS_CGROUP,
            run_dir=RUN_DIR, allow_list=ALLOW_LIST, privileged=None,
            lock_holders=None, helper=paths.HELPER):
    """Explain what cgnetns-exec would do for PID (default: this process).

    Raises ProcessGone (no such process, or it exited meanwhile), NoPermission,
    or CgnetnsError (e.g. /proc is not procfs).  Every other outcome — refusals
    included — is an answer: an :class:`Explanation`.
    """
    if pid is None:
        pid = os.getpid()
    ex = Explanation(pid)
    ex.privileged = can_read_trusted_xattrs(proc) if privileged is None else privileged
    subj = _Subject(pid, proc)
    try:
        _describe_process(ex, subj, helper)
        ex.allow_list = check_allow_list(allow_list)
        try:
            _resolve(ex, subj, sys_cgroup, run_dir, proc, lock_holders)
        except _Verdict as r:
            ex.decide(r.code, r.reason, r.fix)
        # Step 0 (helper/resolve.c): the broker refuses a peer in a cgroup
        # namespace other than its own before it looks at the cgroup at all.
        if ex.same_cgroupns is False:
            ex.notes.append("judged from this cgroup namespace the verdict would be %s (%s)"
                            % (ex.verdict, ex.reason))
            if ex.exec_path == "set-user-id":
                ex.notes.append("on the set-user-ID path the helper judges by the process's "
                                "own cgroup and mount namespaces, where it may join; to see "
                                "that view: nsenter -t %d -m -C cgnetns-show %d"
                                % (ex.pid, ex.pid))
            ex.decide("cgroupns",
                      "process %d is in a cgroup namespace of its own (not cgnetns-show's, "
                      "which is where cgnetnsd runs): its cgroup path is relative to a root "
                      "the resolver does not see, so the broker refuses it (125) at once; "
                      "the set-user-ID helper judges it by its own view and refuses (125) "
                      "unless its path names its cgroup on the cgroup2 mount it sees"
                      % ex.tgid,
                      "call the program from the build's own cgroup namespace (no "
                      "unshare -C / --cgroup between the build and cgnetns-exec)")
        # cgnetns-exec reads its allow list first and refuses every call when
        # the file is unsafe or missing (helper/allow.c, before any other
        # step on both paths).
        state = ex.allow_list["state"]
        if state in ("unsafe", "missing"):
            ex.notes.append("without the allow-list problem the verdict would be %s (%s)"
                            % (ex.verdict, ex.reason))
            if state == "unsafe":
                ex.decide("allow-list-unsafe",
                          "the allow list is unsafe: %s; cgnetns-exec refuses every call"
                          % ex.allow_list["problem"],
                          "chown root:root %s && chmod 644 %s (and the directories above it)"
                          % (allow_list, allow_list))
            else:
                ex.decide("allow-list-missing", ex.allow_list["problem"],
                          "list the allowed programs in %s (one absolute path a line)"
                          % allow_list)
        if not subj.alive():
            raise _gone(pid, during=True)
    finally:
        subj.close()
    return ex


def _describe_process(ex, subj, helper=paths.HELPER):
    status = subj.read("status").decode(errors="replace")
    fields = {}
    for line in status.splitlines():
        k, _, v = line.partition(":")
        fields[k] = v.strip()
    if fields.get("State", "").startswith(("Z", "X")):
        raise ProcessGone("process %d has exited (a zombie its parent has not reaped)" % ex.pid,
                          "show a process that is still running")
    ex.tgid = int(fields.get("Tgid", ex.pid))
    ex.uid = int(fields["Uid"].split()[0])
    ex.user = _user_name(ex.uid)
    if ex.tgid != ex.pid:
        ex.notes.append("%d is a thread of process %d" % (ex.pid, ex.tgid))
    cmdline = subj.read("cmdline")
    if cmdline:
        ex.command = " ".join(a.decode(errors="replace") for a in cmdline.rstrip(b"\0").split(b"\0"))
    else:
        ex.command = "[%s]" % fields.get("Name", "?")
    ex.same_cgroupns = _same_ns(subj, "cgroup")
    if ex.same_cgroupns is None:
        ex.notes.append("cannot tell whether the process shares cgnetns-show's cgroup "
                        "namespace (its /proc/%d/ns/cgroup is not readable here)" % ex.pid)
    if _same_ns(subj, "mnt") is False:
        ex.notes.append(
            "the process is in another mount namespace than cgnetns-show: cgnetnsd, like "
            "cgnetns-show, reads the allow list, the pins and cgroup2 in its own view, shown "
            "here; the set-user-ID helper reads them in the process's view (to see that: "
            "nsenter -t %d -m cgnetns-show %d)" % (ex.pid, ex.pid))
    userns = _ns_ino(subj, "user")
    ex.exec_path, ex.exec_path_reason = exec_path(fields, userns, helper)
    try:
        fd = os.open("ns/net", os.O_RDONLY | os.O_CLOEXEC, dir_fd=subj.fd)
    except (FileNotFoundError, ProcessLookupError):
        raise _gone(ex.pid, during=True) from None
    except PermissionError as e:
        ex.netns_error = "cannot open /proc/%d/ns/net: %s" % (ex.pid, e.strerror)
        return
    try:
        ex.netns = namespaces.identity_of_fd(fd)
    finally:
        os.close(fd)


def _ns_ino(subj, ns):
    try:
        st = os.stat("ns/" + ns, dir_fd=subj.fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _same_ns(subj, ns):
    """Whether the process is in this process's namespace of kind NS (None:
    cannot be told)."""
    theirs = _ns_ino(subj, ns)
    try:
        st = os.stat("/proc/self/ns/" + ns)
    except OSError:
        return None
    return None if theirs is None else theirs == (st.st_dev, st.st_ino)


def helper_usable(helper=paths.HELPER):
    """Why the set-user-ID helper cannot gain privilege as installed, or None
    when it can (root-owned, set-user-ID, not on a nosuid mount)."""
    try:
        st = os.stat(helper)
    except OSError as e:
        return "the set-user-ID helper %s cannot be found (%s)" % (helper, e.strerror)
    if st.st_uid != 0 or not st.st_mode & stat.S_ISUID:
        return "the helper %s is not set-user-ID root" % helper
    try:
        if os.statvfs(helper).f_flag & os.ST_NOSUID:
            return "the helper %s is on a nosuid mount" % helper
    except OSError:
        pass
    return None


def exec_path(fields, userns=None, helper=paths.HELPER):
    """Which path cgnetns-exec started by a process takes, as helper/front.c
    and helper/main.c decide it: (one of EXEC_PATHS, why).

    FIELDS: the process's /proc/PID/status as a dict; USERNS: (st_dev, st_ino)
    of its user namespace, or None when unknown.  Children inherit
    no_new_privs, the user namespace and the bounding set, so this holds for
    what the process starts as well.  The helper is privileged when it runs
    as effective root with CAP_SYS_ADMIN in the initial user namespace; after
    an exec as root (by the set-user-ID bit or not) the capabilities are the
    bounding set."""
    if fields.get("NoNewPrivs") == "1":
        return "broker", ("no_new_privs is set (Gentoo's sandbox sets it): the front does not "
                          "execute the set-user-ID helper and asks cgnetnsd")
    if userns is not None and userns[1] != INIT_USER_NS_INO:
        return "broker", ("the process is in a user namespace, where the set-user-ID bit gains "
                          "nothing: the helper asks cgnetnsd")
    try:
        bounding = int(fields["CapBnd"], 16)
    except (KeyError, ValueError):
        bounding = None
    if bounding is not None and not bounding & (1 << CAP_SYS_ADMIN):
        return "broker", ("the process's capability bounding set lacks CAP_SYS_ADMIN, so the "
                          "helper gains no privilege: it asks cgnetnsd")
    try:
        euid = int(fields["Uid"].split()[1])
    except (KeyError, IndexError, ValueError):
        euid = None
    if euid == 0:
        return "set-user-id", ("the process is root with CAP_SYS_ADMIN in its bounding set: "
                               "the helper is privileged without its set-user-ID bit")
    tracer = fields.get("TracerPid", "0")
    if tracer not in ("", "0"):
        return "broker", ("the process is traced (by process %s): a set-user-ID exec under "
                          "ptrace gains nothing (unless the tracer has CAP_SYS_PTRACE), and "
                          "the helper then asks cgnetnsd" % tracer)
    problem = helper_usable(helper)
    if problem:
        return "broker", problem + ": the front asks cgnetnsd"
    why = "no no_new_privs, ptrace or user namespace: the front executes the set-user-ID helper"
    if userns is None:
        why += " (the process's user namespace cannot be read here)"
    return "set-user-id", why


def _open_cgroup(ex, root_fd, cgpath):
    """Open each component below the root with O_NOFOLLOW, never leaving the
    mount.  Returns [(relpath, fd)] from the root down to the cgroup."""
    root_dev = os.fstat(root_fd).st_dev
    chain = [("/", root_fd)]
    parts = [p for p in cgpath.split("/") if p]
    rel = ""
    for part in parts:
        if part in (".", ".."):
            raise _Verdict("cgroup-unreachable",
                          "the process's cgroup %s lies outside this view of the cgroup2 "
                          "hierarchy (another cgroup namespace?)" % cgpath,
                          "run cgnetns-show in the process's cgroup namespace")
        rel += "/" + part
        try:
            fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         dir_fd=chain[-1][1])
        except OSError as e:
            raise _Verdict("cgroup-unreachable", "cannot open the cgroup %s: %s"
                          % (rel, e.strerror), "the process may have moved; try again")
        chain.append((rel, fd))
        if os.fstat(fd).st_dev != root_dev or _sys.fstatfs_type(fd) != _sys.CGROUP2_SUPER_MAGIC:
            raise _Verdict("cgroup-unreachable", "%s is not on the cgroup2 mount" % rel)
    return chain


def _read_cgroup_file(ex, subj):
    """The bytes of /proc/PID/cgroup, parsed by the helper's rule
    (helper/cgroup.c, read_subject_cgroup): only procfs tells the truth about
    a process, so a file mounted over it is refused; no 0:: line, or a 0::
    line the helper would not use, is refused too.  Returns the cgroup path
    (str; bytes that are not UTF-8 kept as surrogates, so that opening it
    names the very cgroup the helper opens)."""
    try:
        fd = os.open("cgroup", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=subj.fd)
    except (FileNotFoundError, ProcessLookupError):
        raise _gone(ex.pid, during=True) from None
    except PermissionError:
        raise NoPermission("cannot read cgroup of process %d: permission denied" % ex.pid,
                           "run cgnetns-show as root") from None
    try:
        if _sys.fstatfs_type(fd) != _sys.PROC_SUPER_MAGIC:
            raise _Verdict("cgroup-unreachable",
                           "/proc/%d/cgroup is not on procfs (something is mounted over it): "
                           "the helper refuses to judge by it" % ex.pid,
                           "unmount what covers /proc/%d/cgroup" % ex.pid)
        data = b""
        while len(data) <= 64 * 1024:
            b = os.read(fd, 65536)
            if not b:
                break
            data += b
    except ProcessLookupError:
        raise _gone(ex.pid, during=True) from None
    finally:
        os.close(fd)
    state, path = cgroups.parse_cgroup_file(data)
    if state == "NONE":
        raise _Verdict("no-cgroup2-membership",
                       "the process has no cgroup2 membership (no 0:: line in "
                       "/proc/%d/cgroup): a cgroup v1-only host" % ex.pid, cgroups.NO_CGROUP2_HINT)
    if state != "OK" or len(data) > 64 * 1024:
        raise _Verdict("cgroup-unreachable",
                       "the 0:: line of /proc/%d/cgroup is not a path the helper uses (a path "
                       "outside this cgroup namespace, \"..\", or a malformed file)" % ex.pid,
                       "run cgnetns-show in the process's cgroup namespace")
    return path.decode(errors="surrogateescape")


def in_initial_cgroupns(proc="/proc"):
    """Whether this process is in the initial cgroup namespace (its nsfs
    inode is PROC_CGROUP_INIT_INO), as helper/cgroup.c tells it: False when
    it cannot be told."""
    try:
        fd = os.open(os.path.join(proc, "self", "ns", "cgroup"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return (_sys.fstatfs_type(fd) == _sys.NSFS_MAGIC
                and os.fstat(fd).st_ino == INIT_CGROUP_NS_INO)
    except OSError:
        return False
    finally:
        os.close(fd)


def _resolve(ex, subj, sys_cgroup, run_dir, proc, lock_holders):
    # 1. The 0:: line, from our view, read and parsed as the helper does it
    #    (before it looks for cgroup2).
    cgpath = _read_cgroup_file(ex, subj)
    try:
        ex.cgroup_root = cgroups.find_cgroup2(sys_cgroup)
    except NoCgroup2Error as e:
        raise _Verdict("no-cgroup2", e.message, e.hint)
    root_fd = os.open(ex.cgroup_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    chain = [("/", root_fd)]
    try:
        # 2. Open it below the root; check membership (retry once: it may move).
        for attempt in range(3):
            ex.cgroup = cgpath
            for _, fd in chain[1:]:
                os.close(fd)
            chain = _open_cgroup(ex, root_fd, cgpath)
            try:
                members = _read_at(chain[-1][1], "cgroup.procs").split()
            except OSError as e:
                raise _Verdict("cgroup-unreachable", "cannot read %s/cgroup.procs: %s"
                              % (cgpath, e.strerror))
            ex.in_cgroup_procs = str(ex.tgid).encode() in members
            if ex.in_cgroup_procs:
                break
            time.sleep(0.01)
            cgpath = _read_cgroup_file(ex, subj)
        # Outside the initial cgroup namespace the path is relative to our
        # namespace's root and may name another cgroup of the mount: the
        # helper checks membership at once there (helper/cgroup.c), tag or no
        # tag.
        if not ex.in_cgroup_procs and not in_initial_cgroupns(proc):
            raise _Verdict("not-in-cgroup",
                          "process %d is not listed in %s/cgroup.procs: cgnetns-show is not "
                          "in the initial cgroup namespace, where a cgroup path is relative "
                          "to its namespace's root and may name another cgroup of the mount, "
                          "so membership is checked at once, as the helper checks it"
                          % (ex.tgid, cgpath),
                          "run cgnetns-show in the process's cgroup namespace")
        # 3. Walk up to the nearest tag.  Membership (step 2) matters only once
        #    a tag is found, as in the helper (helper/cgroup.c): without a tag the
        #    verdict is pass-through whatever cgroup the path named.
        tagged_fd = None
        for rel, fd in reversed(chain):
            st = os.fstat(fd)
            entry = {"cgroup": rel, "owner_uid": st.st_uid, "tag": None,
                     "tag_readable": ex.privileged}
            try:
                raw = tags.read_raw_tag(fd)
            except OSError as e:
                raise _Verdict("cgroup-unreachable", "cannot read the attributes of %s: %s"
                              % (rel, e.strerror))
            ex.ancestors.append(entry)
            if raw is not None:
                entry["tag"] = raw.decode("ascii", errors="backslashreplace")
                entry["tag_readable"] = True
                ex.tagged_cgroup = rel
                ex.tag_raw = entry["tag"]
                tagged_fd = fd
                tagged_st = st
                tagged_raw = raw
                break
        if tagged_fd is None:
            if not ex.privileged:
                hint = _unprivileged_hint(ex, chain)
                raise _Verdict("tags-unreadable",
                              "this process cannot read trusted.* attributes (only with "
                              "CAP_SYS_ADMIN), so it cannot see whether %s or an ancestor "
                              "is a tagged build%s" % (ex.cgroup, hint),
                              "run cgnetns-show as root to see the verdict")
            raise _Verdict("no-build",
                          "neither the cgroup %s nor any ancestor carries a tag: the process is in "
                          "no build, allow-listed programs run unchanged in its own netns"
                          % ex.cgroup,
                          "start the build with cgnetns-run (or Build() in Python) if it "
                          "should reach the network")
        if not ex.in_cgroup_procs:
            raise _Verdict("not-in-cgroup",
                          "process %d is not listed in %s/cgroup.procs (its cgroup path "
                          "does not match this view of the hierarchy)" % (ex.tgid, cgpath),
                          "run cgnetns-show in the process's cgroup namespace")
        # The helper reads at most TAG_MAX bytes of the tag: a longer one is
        # refused before the owner is looked at (helper/cgroup.c).
        if len(tagged_raw) > tags.TAG_MAX:
            ex.tag_error = "tag is %d bytes long (at most %d)" % (len(tagged_raw), tags.TAG_MAX)
            raise _Verdict("tag-format", "the tag of %s is not usable: %s"
                          % (ex.tagged_cgroup, ex.tag_error),
                          "remove the cgroup's tag (cgnetns-gc after its run ended) "
                          "or restart the build")
        # 4. Root-owned.
        if tagged_st.st_uid != 0:
            raise _Verdict("tag-owner", "the tagged cgroup %s is owned by uid %d, not root: "
                          "its tag is not trusted" % (ex.tagged_cgroup, tagged_st.st_uid),
                          "build cgroups must stay owned by root; remove the tag or "
                          "chown the cgroup back to root")
        # 5. Parse; the pin.
        try:
            ex.tag = tags.parse_tag(tags.read_raw_tag(tagged_fd))
        except TagFormatError as e:
            ex.tag_error = e.message
            code = "tag-version" if "format version" in e.message else "tag-format"
            raise _Verdict(code, "the tag of %s is not usable: %s" % (ex.tagged_cgroup, e.message),
                          e.hint or "remove the cgroup's tag (cgnetns-gc after its run ended) "
                          "or restart the build")
        except OSError as e:
            raise _Verdict("cgroup-unreachable", "cannot read the tag of %s: %s"
                          % (ex.tagged_cgroup, e.strerror))
        ex.approved = namespaces.NsIdentity(ex.tag.dev, ex.tag.ino, ex.tag.nsid)
        ex.record = _record_info(ex.tag.pin, run_dir, proc, lock_holders)
        _check_pin(ex, run_dir)
    finally:
        for _, fd in chain[1:]:
            os.close(fd)
        os.close(root_fd)
    # 6. Already there, or join.
    if ex.netns is None:
        raise _Verdict("netns-unreadable",
                      "the build's pin is valid, but this process cannot read the network "
                      "namespace of process %d (%s), so it cannot tell join from "
                      "pass-through" % (ex.pid, ex.netns_error),
                      "run cgnetns-show as root")
    if same_netns(ex.netns, ex.approved):
        raise _Verdict("already-in-approved-netns",
                      "the process is already in the approved network namespace %s: "
                      "allow-listed programs run unchanged" % ns_name(ex.approved))
    raise _Verdict("approved-netns-differs",
                  "the process is in %s, its build %s approves %s: allow-listed programs "
                  "started through cgnetns-exec get the approved namespace (the program "
                  "runs there on the set-user-ID path; on the broker path its AF_INET and "
                  "AF_INET6 sockets are made there)"
                  % (ns_name(ex.netns), ex.tagged_cgroup, ns_name(ex.approved)))


def _unprivileged_hint(ex, chain):
    for rel, _ in chain:
        parent, base = os.path.split(rel)
        if parent == "/" + cgroups.CGNETNS_SUBTREE and tags.valid_id(base):
            return " (by its place, %s looks like a cgnetns build)" % rel
    return ""


PIN_STATES = ("ok", "missing", "unsafe-dir", "not-nsfs", "not-net", "mismatch")


def inspect_pin(pin_id, tag=None, run_dir=RUN_DIR):
    """The pin PIN_ID checked as cgnetns-exec checks it (step 5 of the rule).

    Returns a dict: ``path``; ``state`` (one of PIN_STATES, ``ok`` also when
    TAG is None and the pin holds a network namespace); ``netns`` (what it
    holds, or None); ``matches`` (it holds what TAG names); ``reason_code``
    and ``reason`` (None when ok); ``fix``.
    """
    path = os.path.join(namespaces.pins_dir(run_dir), pin_id)
    out = {"path": path, "state": "ok", "netns": None, "matches": False, "error": None,
           "reason_code": None, "reason": None, "fix": None}

    def bad(state, code, reason, fix="restart the build; cgnetns-gc removes what a dead "
                                       "run left"):
        out.update(state=state, reason_code=code, reason=reason, fix=fix)
        return out

    try:
        dfd = _open_trusted_dir(run_dir, namespaces.pins_dir(run_dir))
    except _Verdict as v:
        return bad("missing" if v.code == "pin-missing" else "unsafe-dir", v.code, v.reason, v.fix)
    try:
        try:
            fd = os.open(pin_id, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dfd)
        except FileNotFoundError:
            return bad("missing", "pin-missing", "the pin %s does not exist (removed by hand, "
                       "or the run is over)" % path)
        except OSError as e:
            out["error"] = e.strerror
            return bad("not-nsfs", "pin-not-nsfs", "cannot open the pin %s: %s"
                       % (path, e.strerror))
        try:
            if _sys.fstatfs_type(fd) != _sys.NSFS_MAGIC:
                return bad("not-nsfs", "pin-not-nsfs", "the pin %s holds no namespace (not an "
                           "nsfs file: unmounted by hand?)" % path)
            if _sys.ns_get_nstype(fd) != _sys.CLONE_NEWNET:
                return bad("not-net", "pin-not-net", "the pin %s holds a namespace that is not "
                           "a network namespace" % path)
            st = os.fstat(fd)
            got = namespaces.NsIdentity(st.st_dev, st.st_ino, _sys.ns_get_id(fd))
        finally:
            os.close(fd)
    finally:
        os.close(dfd)
    out["netns"] = ns_dict(got)
    if tag is None:
        return out
    if (got.dev, got.ino) != (tag.dev, tag.ino) or (tag.nsid and got.nsid != tag.nsid):
        what = ("its namespace id is %d, the tag says %d (same inode number, another "
                "namespace: the approved one is gone)" % (got.nsid, tag.nsid)
                if (got.dev, got.ino) == (tag.dev, tag.ino)
                else "it holds %s (dev %d), the tag says net:[%d] (dev %d)"
                % (ns_name(got), got.dev, tag.ino, tag.dev))
        return bad("mismatch", "pin-mismatch", "the pin %s does not match the tag: %s"
                   % (path, what), "the tag or the pin was changed by hand: restart the build")
    out["matches"] = True
    return out


def _check_pin(ex, run_dir):
    info = inspect_pin(ex.tag.pin, ex.tag, run_dir)
    ex.pin = {k: info[k] for k in ("path", "state", "netns", "matches", "error")}
    if info["state"] != "ok":
        raise _Verdict(info["reason_code"], "build %s: %s" % (ex.tagged_cgroup, info["reason"]),
                       info["fix"])


def _open_trusted_dir(run_dir, pdir):
    """Open the pins directory as cgnetns-exec does (helper/path.c): from "/",
    one component at a time without following symlinks, every directory
    root-owned and without group/other write (FORMAT.rst)."""
    parts = [p for p in pdir.split("/") if p]
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    cur = "/"
    try:
        for i in range(len(parts) + 1):
            st = os.fstat(fd)
            if st.st_uid != 0 or st.st_mode & 0o022:
                raise _Verdict("pins-dir-unsafe", "%s is not a root-owned directory without "
                               "group/other write (owner uid %d, mode %04o)"
                               % (cur, st.st_uid, stat.S_IMODE(st.st_mode)),
                               "remove it (no build may be running) and let the next build "
                               "make it" if cur.startswith(run_dir) else
                               "chown root %s && chmod go-w %s" % (cur, cur))
            if i == len(parts):
                break
            cur = os.path.join(cur, parts[i])
            try:
                nfd = os.open(parts[i], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                              | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                raise _Verdict("pin-missing", "%s does not exist, so no pin does" % cur,
                               "restart the build; cgnetns-gc removes what its run left")
            except OSError as e:
                code = "pins-dir-unsafe" if e.errno in (errno.ELOOP, errno.ENOTDIR) else \
                    "pin-missing"
                raise _Verdict(code, "cannot open %s: %s" % (cur, e.strerror),
                               "it must be a root-owned directory (not a symlink)")
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


# ------------------------------------------------------------- records

def lock_holders(proc="/proc"):
    """flock(2) locks from /proc/locks: {(major, minor, ino): [(pid, 'READ'|'WRITE')]}.

    Reading /proc/locks takes no lock, so looking never disturbs a build that is
    just creating and locking its record (a probe with flock could)."""
    out = {}
    try:
        with open(os.path.join(proc, "locks")) as f:
            for line in f:
                fields = line.split()
                if "->" in fields[:2]:
                    continue  # a waiter, not a holder
                if len(fields) < 6 or fields[1] != "FLOCK":
                    continue
                try:
                    pid = int(fields[4])
                    maj, mnr, ino = fields[5].split(":")
                    key = (int(maj, 16), int(mnr, 16), int(ino))
                except ValueError:
                    continue
                out.setdefault(key, []).append((pid, fields[3]))
    except OSError:
        pass
    return out


def record_owner(path, holders):
    """(live, pid): whether some process holds the record's exclusive lock."""
    try:
        st = os.stat(path)
    except OSError:
        return False, None
    key = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for pid, kind in holders.get(key, []):
        if kind == "WRITE":
            return True, pid
    return False, None


def _record_info(build_id, run_dir, proc, holders):
    from . import records
    path = records.record_path(build_id, run_dir)
    data = records.read_record(path)
    if data is None and not os.path.exists(path):
        return {"id": build_id, "record": path, "exists": False, "live": None}
    if holders is None:
        holders = lock_holders(proc)
    live, lock_pid = record_owner(path, holders)
    data = data or {}
    created = data.get("created")
    return {"id": build_id, "record": path, "exists": True, "live": live,
            "name": data.get("name"), "owner_pid": data.get("pid"),
            "created": created,
            "age": round(time.time() - created, 3) if isinstance(created, (int, float)) else None,
            "cgroup": data.get("cgroup")}
