"""cgnetns-run: run a command in a new tagged build cgroup.

Exit status: the command's; 128+N when it was killed by signal N; 2 for a bad
command line; 125 when cgnetns itself failed or refused (nothing was run);
126 when COMMAND is not executable; 127 when it is not found.
"""

import argparse
import errno
import os
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
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
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


def ensure_broker():
    """Start a cgnetnsd for this host's builds when none answers.

    Builds under no_new_privs (Gentoo's sandbox) reach the network only through
    the broker.  Where no service manager runs one, cgnetns-run starts it: in
    its own session, logging to a root-only file, and exiting by itself once
    no connection and no live build is left (--idle-exit).  Two runs racing
    here are harmless: the broker's lock lets one of them listen.
    """
    if broker_answers():
        return
    import subprocess
    import time
    log = os.open(BROKER_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        subprocess.Popen([sys.executable, "-m", "cgnetns.cli.broker",
                          "--idle-exit", str(BROKER_IDLE_EXIT)],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True, close_fds=True)
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

    def on_signal(signum, frame):
        if child is None:
            raise _Stop(signum)
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    old = {s: signal.signal(s, on_signal) for s in FORWARDED}
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
                                restore_signals=True)
        except FileNotFoundError:
            raise CgnetnsError("%s: command not found" % args.command[0],
                               "check the name and PATH", status=EXIT_NOTFOUND) from None
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.ENOEXEC, errno.EPERM):
                raise
            raise CgnetnsError("%s: cannot execute: %s" % (args.command[0], e.strerror),
                               "make it executable for the build user", status=EXIT_NOEXEC) from None
        return status_of(child.wait())
    except _Stop as e:
        return 128 + e.signum
    finally:
        for s in FORWARDED:
            signal.signal(s, _ignore)
        try:
            build.close()
        finally:
            for s, h in old.items():
                signal.signal(s, h)


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
