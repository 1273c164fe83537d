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
import shutil
import signal
import sys

from .. import __version__
from ..build import Build, require_root, resolve_user
from ..broker_start import (BROKER_IDLE_EXIT, BROKER_LOG, BrokerSetup, _RLIMIT_NAMES,
                             _broker_rlimits, broker_answers)
from ..broker_start import ensure_broker as _ensure_broker
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


# Starting the broker when none answers is the library's (cgnetns/broker_start.py),
# shared with Portage's FEATURES=cgnetns; its names stay importable from here.
_FROM_BROKER_START = (BROKER_IDLE_EXIT, BROKER_LOG, BrokerSetup, _RLIMIT_NAMES,
                      _broker_rlimits, broker_answers)


def ensure_broker():
    """Start a cgnetnsd when none answers (cgnetns.broker_start.ensure_broker)."""
    _ensure_broker(PROG)


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
