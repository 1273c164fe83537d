"""cgnetns-run: run a command in a new tagged build cgroup.

Exit status: the command's; 128+N when it was killed by signal N; 2 for a bad
command line; 125 when cgnetns itself failed or refused (nothing was run);
126 when COMMAND is not executable; 127 when it is not found.

The terminal (THREATS 24): with --user, COMMAND starts in a session of its own
(setsid), so it has no controlling terminal.  It keeps its descriptors 0-2 on
root's terminal (pipes and log files stay what they were, as Portage needs),
but TIOCSTI on a terminal that is not the caller's controlling terminal fails
with EPERM, /dev/tty fails with ENXIO, and TIOCSCTTY cannot take a terminal
that root's shell holds: the build cannot type into root's shell.  A pty
relayed by cgnetns-run (``su --pty``) would also hide the terminal's modes and
input, but would turn every tty descriptor into a pty and needs a raw-mode
relay with its own job-control rules; setsid keeps COMMAND's descriptors as
they are.  cgnetns-run then stands in for the terminal: what a terminal sends
to its foreground process group (SIGINT, SIGQUIT, SIGHUP, SIGWINCH) goes to
COMMAND's process group, as it did before, and Ctrl-Z (SIGTSTP) freezes the
build's cgroup while cgnetns-run itself stops as a job; fg/bg thaws it.  What
is lost: COMMAND cannot open /dev/tty, and a build that cgnetns-run runs in
the background (``&``, ``bg``) is no longer stopped by SIGTTIN when it reads
the terminal.  Without --user COMMAND runs as root, which can type into any
terminal anyway (CAP_SYS_ADMIN passes TIOCSTI's checks): it stays in
cgnetns-run's process group and session, with job control as before.
"""

import argparse
import errno
import os
import resource
import shutil
import signal
import sys

from .. import __version__
from ..build import Build, require_root, resolve_user
from ..cgroups import find_cgroup2
from ..errors import (CgnetnsError, PlacementError, EXIT_NOEXEC, EXIT_NOTFOUND,
                      EXIT_USAGE)
from . import Parser, run_main

PROG = "cgnetns-run"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# With --user, COMMAND has its own session and process group (THREATS 24; see
# the module docstring): the terminal now reaches only cgnetns-run's group,
# and cgnetns-run passes on to COMMAND's whole group what a terminal sends to
# its foreground group (Ctrl-C, Ctrl-\, hangup, window size), so that make's
# children get Ctrl-C as they did when they were on the terminal themselves.
# SIGTERM still goes to COMMAND alone (it comes from kill, not a terminal).
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGWINCH)
SCOPED_MARK = "CGNETNS_RUN_IN_SCOPE"


class _Stop(Exception):
    """A forwarded signal arrived before the command existed: stop setting up."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _ignore(signum, frame):
    """Teardown must finish: signals arriving during it are not acted on."""


def build_parser():
    p = Parser(
        prog=PROG, allow_abbrev=False,
        description="Run COMMAND in a new build cgroup that approves the network namespace "
                    "cgnetns-run is in, so that allow-listed programs started inside it "
                    "(through cgnetns-exec) can return there.")
    p.add_argument("--user", metavar="USER",
                   help="run COMMAND as USER (name or uid), as Portage's userpriv does")
    p.add_argument("--unshare-net", action="store_true",
                   help="run COMMAND in a new network namespace with only lo up")
    p.add_argument("--name", metavar="NAME", default="build",
                   help="a name for the build, shown by cgnetns-show (default: build)")
    p.add_argument("--no-broker", action="store_true",
                   help="do not start cgnetnsd when no broker answers (builds that cannot "
                        "use the setuid helper then run their programs without network)")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--version", action="version", version="%(prog)s " + __version__)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    return p


def parse(argv):
    args = build_parser().parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    return args


def check_command(cmd):
    """Fail early, before anything is made, when COMMAND cannot run."""
    path = shutil.which(cmd) if "/" not in cmd else cmd
    if path is None or not os.path.exists(path):
        raise CgnetnsError("%s: command not found" % cmd, "check the name and PATH",
                           status=EXIT_NOTFOUND)
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise CgnetnsError("%s: not executable" % path, "chmod +x it or name another program",
                           status=EXIT_NOEXEC)


BROKER_LOG = "/run/cgnetns/cgnetnsd.log"
BROKER_IDLE_EXIT = 10.0


def broker_answers(path=None):
    """True when something accepts connections on the broker socket."""
    import socket
    from ..broker import SOCKET_PATH
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

    def __init__(self):
        import platform
        from .. import cgroups
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
        os.write(2, ("%s: starting cgnetnsd: %s\n" % (PROG, text)).encode())

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


def ensure_broker():
    """Start a cgnetnsd for this host's builds when none answers.

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
    setup = BrokerSetup()
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


def status_of(returncode):
    return 128 - returncode if returncode < 0 else returncode


def _reexec_in_scope(argv):
    """On a systemd host outside a delegated cgroup, move into a Delegate=yes scope."""
    systemd_run = shutil.which("systemd-run")
    if systemd_run is None or os.environ.get(SCOPED_MARK) == "1":
        return False
    env = dict(os.environ, **{SCOPED_MARK: "1"})
    os.execve(systemd_run, [systemd_run, "--scope", "-p", "Delegate=yes", "--quiet",
                            "--collect", "--", sys.executable, "-m", "cgnetns.cli.run"]
              + list(argv), env)
    return True  # not reached


def run(argv):
    args = parse(argv)
    if not args.command:
        sys.stderr.write("%s: no COMMAND given; usage: %s [--user USER] [--unshare-net] "
                         "[--name NAME] [--] COMMAND [ARG...]\n" % (PROG, PROG))
        return EXIT_USAGE
    require_root()
    find_cgroup2()
    if args.user is not None:
        resolve_user(args.user)
    check_command(args.command[0])

    child = None
    # With --user, COMMAND gets a session of its own: no controlling terminal,
    # so TIOCSTI cannot type into root's shell (THREATS 24; module docstring).
    # As root, COMMAND could do that anyway: it stays on the terminal.
    detached = args.user is not None

    def on_signal(signum, frame):
        if child is None:
            raise _Stop(signum)
        if child.returncode is not None:
            return  # reaped: its PID (and group ID) may be someone else's now
        try:
            if detached and signum in TERMINAL_SIGNALS:
                os.killpg(child.pid, signum)  # setsid made its PID its group's ID
            else:
                child.send_signal(signum)
        except ProcessLookupError:
            pass

    def on_tstp(signum, frame):
        # Ctrl-Z reaches only cgnetns-run's group now.  Freeze the build, then
        # stop as the job the shell sees, by SIGTSTP's default action (which
        # the kernel discards in an orphaned process group, as it would have
        # for the build); fg or bg continues cgnetns-run, which thaws it.
        _freeze(build.cgroup_path, child.pid, True)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        try:
            os.kill(os.getpid(), signal.SIGTSTP)
        finally:
            signal.signal(signal.SIGTSTP, on_tstp)
            _freeze(build.cgroup_path, child.pid, False)

    old = {s: signal.signal(s, on_signal) for s in FORWARDED}
    old_job = {}
    build = Build(name=args.name)
    try:
        try:
            build.create()
        except PlacementError:
            _reexec_in_scope(argv)
            raise
        if not (args.no_broker or os.environ.get("CGNETNS_RUN_NO_BROKER") == "1"):
            try:
                ensure_broker()
            except OSError as e:  # the build still runs; the helper says why
                sys.stderr.write("%s: could not start cgnetnsd: %s\n" % (PROG, e))
        try:
            child = build.spawn(args.command, user=args.user, unshare_net=args.unshare_net,
                                restore_signals=True, start_new_session=detached)
        except FileNotFoundError:
            raise CgnetnsError("%s: command not found" % args.command[0],
                               "check the name and PATH", status=EXIT_NOTFOUND) from None
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.ENOEXEC, errno.EPERM):
                raise
            raise CgnetnsError("%s: cannot execute: %s" % (args.command[0], e.strerror),
                               "make it executable for the build user", status=EXIT_NOEXEC) from None
        if detached:
            old_job[signal.SIGWINCH] = signal.signal(signal.SIGWINCH, on_signal)
            old_job[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, on_tstp)
        return status_of(child.wait())
    except _Stop as e:
        return 128 + e.signum
    finally:
        for s, h in old_job.items():
            signal.signal(s, h)
        for s in FORWARDED:
            signal.signal(s, _ignore)
        try:
            build.close()
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _freeze(cgroup_path, pgid, frozen):
    """Freeze or thaw the build: its cgroup (cgroup.freeze, Linux 5.2), every
    process in it; before 5.2, COMMAND's process group with SIGSTOP/SIGCONT."""
    try:
        with open(os.path.join(cgroup_path, "cgroup.freeze"), "w") as f:
            f.write("1" if frozen else "0")
        return
    except FileNotFoundError:
        pass
    except OSError:
        return  # job control is a convenience: never fail the run for it
    try:
        os.killpg(pgid, signal.SIGSTOP if frozen else signal.SIGCONT)
    except OSError:
        pass


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    return run_main(PROG, run, argv, debug=_wants_debug(argv))


def _wants_debug(argv):
    """--debug among cgnetns-run's own options (not COMMAND's arguments)."""
    try:
        return parse(argv).debug
    except CgnetnsError:
        return False


if __name__ == "__main__":
    sys.exit(main())
