"""Make sure a broker answers: start cgnetnsd when none does, and check that it
can see a build's pin.

Builds under no_new_privs (Gentoo's sandbox, on by default) reach the network
only through the broker, and distcc's default fallback then compiles locally
without a word when none answers.  ``ensure_broker()`` is what cgnetns-run and
Portage's FEATURES=cgnetns (cgnetns/portage.py) call before a build runs.

``check_broker_sees(build)`` refuses a build whose pin the broker cannot see:
a pin is a bind mount, made in the mount namespace of the process that makes
the build; a broker in another mount namespace (emerge in a private one, the
broker a service of the host) would find an empty file there and refuse every
request of the build with "pin ... is not a namespace file".
"""

import errno
import os
import resource
import signal
import socket
import struct
import sys

from . import namespaces
from .errors import CgnetnsError, PinError

BROKER_LOG = "/run/cgnetns/cgnetnsd.log"
BROKER_IDLE_EXIT = 10.0


def broker_answers(path=None):
    """True when something accepts connections on the broker socket."""
    import socket
    from .broker import SOCKET_PATH
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(path or SOCKET_PATH)
        return True
    except OSError:
        return False
    finally:
        s.close()


# ioprio_set(2) by machine (Python's os module has no wrapper); an unknown
# machine leaves the I/O priority as inherited.
_NR_IOPRIO_SET = {"x86_64": 251, "i386": 289, "i686": 289, "aarch64": 30, "riscv64": 30,
                  "loongarch64": 30, "armv7l": 314, "armv6l": 314, "ppc64le": 273,
                  "ppc64": 273, "s390x": 282}
_IOPRIO_WHO_PROCESS = 1
_PER_MASK = 0xFF  # personality(2): the execution domain; the bits above are flags
# Linux's resources by number (Python's resource module names all but
# RLIMIT_LOCKS, 10, which prlimit takes anyway).
_RLIMIT_NAMES = ("CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "NOFILE", "MEMLOCK",
                 "AS", "LOCKS", "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME")
_RLIMITS = range(len(_RLIMIT_NAMES))
# What the kernel gives init (include/asm-generic/resource.h, INIT_RLIMITS),
# used when PID 1's own limits cannot be read: None keeps the inherited pair.
# RLIMIT_NPROC and RLIMIT_SIGPENDING depend on the machine's memory and do
# not bind root; RLIMIT_CORE only decides whether the broker dumps core.
_INF = resource.RLIM_INFINITY
_INIT_RLIMITS = ((_INF, _INF), (_INF, _INF), (_INF, _INF), (8 << 20, _INF), None, (_INF, _INF),
                 None, (1024, 4096), (8 << 20, 8 << 20), (_INF, _INF), (_INF, _INF), None,
                 (819200, 819200), (0, 0), (0, 0), (_INF, _INF))


def _read_limits(path):
    """[(soft, hard)] in resource order from a /proc/PID/limits, or None."""
    try:
        with open(path) as f:
            rows = f.read().splitlines()[1:]
        out = [tuple(_INF if v == "unlimited" else int(v) for v in row[26:].split()[:2])
               for row in rows]
    except (OSError, ValueError):
        return None
    if len(out) != len(_RLIMIT_NAMES) or any(len(pair) != 2 for pair in out):
        return None
    return out


def _broker_rlimits():
    """[(resource, (soft, hard))] for the auto-started broker: PID 1's limits
    (what a service started at boot would have; /proc/1/limits is readable by
    everyone), else the kernel's defaults for init; RLIMIT_NOFILE's soft limit
    raised to its hard one either way, since a broker serves many connections
    at once."""
    pid1 = _read_limits("/proc/1/limits")
    out = []
    for res in _RLIMITS:
        pair = pid1[res] if pid1 else _INIT_RLIMITS[res]
        if pair is None:
            continue
        if res == resource.RLIMIT_NOFILE:
            hard = pair[1]
            if not pid1:  # the default, or more if we have more
                hard = resource.getrlimit(res)[1]
                hard = _INF if hard == _INF else max(hard, pair[1])
            pair = (hard, hard)
        out.append((res, pair))
    return out


def _lower(a, b):
    """The lower of two rlimit values (RLIM_INFINITY is the highest)."""
    return b if a == _INF else a if b == _INF else min(a, b)


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _pid1(read):
    try:
        return read()
    except (OSError, ValueError):
        return None


class BrokerSetup:
    """What the auto-started broker resets between fork and exec (THREATS 26).

    cgnetns-run's caller may be a build tool that runs it niced, ioniced, with
    a raised oom_score_adj, low rlimits, blocked or ignored signals, pinned to
    one CPU (emerge renices and ionices itself: PORTAGE_NICENESS,
    PORTAGE_IONICE_COMMAND).  All of that is inherited across fork and exec; the
    broker would keep it, serve every later build with it, and hand it on to
    the helpers it starts (posix_spawn passes the mask, the ignored signals,
    nice, ioprio and rlimits through).  subprocess's own options already do:
    setsid (start_new_session: no controlling terminal, out of the caller's
    session and process group, so the terminal's Ctrl-C and hangup do not
    reach it), umask 022 (a daemon's umask, not the caller's 077), cwd / (it
    keeps no caller's directory busy), and restore_signals (SIGPIPE, SIGXFSZ).
    This object does the rest, as root, in the child before exec:

    * cgroup: out of the caller's cgroup (a build's, when cgnetns-run runs
      inside one, whose teardown would kill it; or one with the caller's
      pids/memory limits) into the cgroup2 root, where a host without a
      service manager's cgroups keeps its daemons.  Not <root>/cgnetns: that
      subtree exists only while builds do, and a process in it would block
      its removal and controllers for builds (cgroup v2's no-internal-process
      rule).  Where systemd manages cgroups nothing is moved (only systemd
      may move processes there): the broker stays in cgnetns-run's own
      delegated cgroup (an outer build's, if cgnetns-run runs inside one),
      never in the build cgroup, which cgnetns-run itself never joins.
      cgroup v1 memberships stay as inherited.
    * signals: every disposition to the default (ignored ones survive exec)
      and an empty mask (the mask survives exec too).
    * scheduling: SCHED_OTHER, nice 0, I/O priority IOPRIO_CLASS_NONE (which
      follows nice), PID 1's CPU affinity.
    * oom_score_adj 0, so that neither a -1000 nor a 1000 is inherited.
    * rlimits: PID 1's (_broker_rlimits).
    * personality: the execution domain kept, every flag cleared (``setarch
      -R`` would turn off ASLR for the broker and the helpers it starts).

    Root in a container may lack CAP_SYS_RESOURCE or CAP_SYS_NICE: then a
    hard rlimit the caller lowered cannot be raised again (the broker gets
    the lower of PID 1's and the caller's), and a niceness or oom_score_adj
    below the inherited one cannot be set; each such step says so in the log
    and the rest goes on.  What cannot be undone here at all stays: a seccomp
    filter, a Landlock domain, no_new_privs, an LSM label.  A host where that
    matters, and every host with a service manager, runs the broker as a
    service (contrib/systemd, contrib/openrc); starting it from cgnetns-run
    is the fallback.  Any other step failing ends the child before exec with
    one line in the log.
    """

    def __init__(self, prog="cgnetns"):
        import platform
        self.prog = prog
        from . import cgroups
        self.cgroup_procs = None
        if not cgroups.systemd_manages_cgroups():
            self.cgroup_procs = os.path.join(cgroups.find_cgroup2(), "cgroup.procs")
        self.rlimits = _broker_rlimits()
        self.affinity = _pid1(lambda: os.sched_getaffinity(1))
        self.nr_ioprio_set = _NR_IOPRIO_SET.get(platform.machine())
        import ctypes  # here: the child imports nothing between fork and exec
        self.ctypes = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)

    def _check(self, ret):
        if ret == -1:
            e = self.ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    def _note(self, text):
        os.write(2, ("%s: starting cgnetnsd: %s\n" % (self.prog, text)).encode())

    def _may_lack_capability(self, step, func, *args):
        try:
            func(*args)
        except PermissionError as e:
            self._note("%s: %s; kept the inherited value" % (step, e.strerror))

    def __call__(self):
        step = "starting"
        try:
            if self.cgroup_procs is not None:
                step = "moving to the cgroup2 root"
                with open(self.cgroup_procs, "w") as f:
                    f.write("0")
            step = "resetting signal dispositions"
            for s in signal.valid_signals():
                if s not in (signal.SIGKILL, signal.SIGSTOP):
                    signal.signal(s, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
            step = "resetting the scheduling policy"
            self._may_lack_capability(step, os.sched_setscheduler, 0, os.SCHED_OTHER,
                                      os.sched_param(0))
            step = "resetting nice"
            self._may_lack_capability(step, os.setpriority, os.PRIO_PROCESS, 0, 0)
            if self.nr_ioprio_set is not None:
                step = "resetting the I/O priority"
                self._check(self.libc.syscall(self.nr_ioprio_set, _IOPRIO_WHO_PROCESS, 0, 0))
            if self.affinity:
                step = "resetting the CPU affinity"
                os.sched_setaffinity(0, self.affinity)
            step = "resetting oom_score_adj"
            self._may_lack_capability(step, _write, "/proc/self/oom_score_adj", "0")
            step = "setting rlimits"
            kept = []
            for res, (soft, hard) in self.rlimits:
                try:
                    resource.prlimit(0, res, (soft, hard))
                except PermissionError:  # raising a hard limit: CAP_SYS_RESOURCE
                    hard = resource.getrlimit(res)[1]
                    soft = hard if res == resource.RLIMIT_NOFILE else _lower(soft, hard)
                    resource.prlimit(0, res, (soft, hard))
                    kept.append("RLIMIT_" + _RLIMIT_NAMES[res])
            if kept:
                self._note("kept the caller's lower hard rlimits %s (raising them needs "
                           "CAP_SYS_RESOURCE)" % ", ".join(kept))
            step = "resetting the personality"
            persona = self.libc.personality(self.ctypes.c_ulong(0xFFFFFFFF))  # query
            self._check(persona)
            if persona & ~_PER_MASK:
                self._check(self.libc.personality(self.ctypes.c_ulong(persona & _PER_MASK)))
        except BaseException as e:
            self._note("%s failed: %s" % (step, e))
            raise


def ensure_broker(prog="cgnetns"):
    """Start a cgnetnsd for this host's builds when none answers.

    PROG starts the lines the start-up writes to the broker's log (cgnetns-run
    passes its name).  Call it before the caller joins a build (Portage,
    cgnetns.portage): where systemd manages cgroups the broker stays in the
    caller's cgroup, and a build's teardown kills everything in the build.
    Raises OSError when the broker could not be started.

    Builds under no_new_privs (Gentoo's sandbox) reach the network only through
    the broker.  Where no service manager runs one, cgnetns-run starts it,
    detached from its caller and reset (BrokerSetup): stdin and stdout on
    /dev/null, stderr appended to a root-only log, exiting by itself once no
    connection and no live build is left (--idle-exit).  Two runs racing here
    are harmless: the broker's lock lets one of them listen.  On a host with
    systemd or OpenRC the broker should be a service (contrib/); this is the
    fallback for hosts where none was set up.
    """
    if broker_answers():
        return
    import subprocess
    import time
    setup = BrokerSetup(prog)
    # start_new_session, umask, cwd, restore_signals and the preexec step:
    # see BrokerSetup.  The environment stays cgnetns-run's (root's own; the
    # broker passes none of it on: helpers start with an empty one).
    log = os.open(BROKER_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
                  | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(log, 0o600)  # whatever umask made it, or an older run
        subprocess.Popen([sys.executable, "-m", "cgnetns.cli.broker",
                          "--idle-exit", str(BROKER_IDLE_EXIT)],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                         close_fds=True, start_new_session=True, umask=0o022, cwd="/",
                         restore_signals=True, preexec_fn=setup)
    except subprocess.SubprocessError:
        raise OSError("its set-up failed (see %s)" % BROKER_LOG) from None
    finally:
        os.close(log)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and not broker_answers():
        time.sleep(0.02)


def broker_pid(path=None):
    """PID of the process that listens on the broker socket (SO_PEERCRED: the
    broker, or the service manager that made the socket), or None when nothing
    answers there."""
    from .broker import SOCKET_PATH
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(path or SOCKET_PATH)
        pid, _, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                      struct.calcsize("3i")))
        return pid or None
    except OSError:
        return None
    finally:
        s.close()


def _same_file(a, b):
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_broker_sees(build, pid=None, path=None, proc="/proc"):
    """Refuse (CgnetnsError) when the broker cannot see BUILD's pin.

    PID: the broker's (broker_pid(), asked here when not given).  Nothing to
    check when no broker answers (the set-user-ID path reads the pin in the
    build's own mount namespace), when the broker is in the caller's mount
    namespace, or when the broker's namespace cannot be looked into
    (another user namespace; then the helper says why, later).  Otherwise
    the pin is looked up through ``/proc/PID/root``, that is in the broker's
    mount namespace: it must be the namespace the build approves.
    """
    if pid is None:
        pid = broker_pid(path)
    if pid is None:
        return
    try:
        if _same_file(os.path.join(proc, "self", "ns", "mnt"),
                      os.path.join(proc, str(pid), "ns", "mnt")):
            return
    except OSError:
        return
    seen = os.path.join(proc, str(pid), "root") + build.pin_path
    try:
        ok = namespaces.identity_of_path(seen).same(build.identity)
    except PinError:
        ok = False
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            return
        ok = False
    if not ok:
        raise CgnetnsError(
            "cgnetnsd (pid %d) runs in another mount namespace and cannot see the pin %s: "
            "it would refuse every program of this build" % (pid, build.pin_path),
            "run this in the broker's mount namespace (nsenter --mount=/proc/%d/ns/mnt), or "
            "start a cgnetnsd in this one" % pid)
