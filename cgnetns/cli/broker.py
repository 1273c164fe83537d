"""cgnetnsd: the root broker (doc/BROKER.rst).

Exit status: 0 on a clean stop (SIGTERM, SIGINT, or --idle-exit); 1 when it
cannot listen (another broker holds the lock, the socket cannot be bound);
2 for a bad command line; 125 when not run as root.
"""

import argparse
import os
import signal
import sys

from .. import __version__
from ..broker import Broker, HELPER, SOCKET_PATH, escape
from ..build import require_root
from . import Parser, run_main

PROG = "cgnetnsd"


def positive_int(text):
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError("%r is not a whole number of at least 1" % text)
    return n


def build_parser():
    p = Parser(
        prog=PROG, allow_abbrev=False,
        description="Broker for cgnetns-exec callers that cannot gain privilege "
                    "(no_new_privs, nosuid, ptrace, user namespaces): decides for the "
                    "process that connects, and makes the sockets of its allow-listed "
                    "programs in its build's approved network namespace.")
    p.add_argument("--socket", metavar="PATH", default=SOCKET_PATH,
                   help="listen on PATH (default: %(default)s); a socket passed by systemd "
                        "socket activation (LISTEN_FDS) is used instead when present")
    p.add_argument("--helper", metavar="PATH", default=HELPER,
                   help="the set-user-ID helper whose --supervise mode serves each "
                        "connection (default: %(default)s)")
    p.add_argument("--max-pending", type=positive_int, default=256, metavar="N",
                   help="requests in progress at once; more are dropped (default: %(default)s)")
    p.add_argument("--max-pending-per-uid", type=positive_int, default=128, metavar="N",
                   help="requests in progress at once from one uid; more wait, in order, "
                        "up to the request deadline (default: %(default)s)")
    p.add_argument("--peer-auth", choices=("pidfd", "peercred"), default="pidfd",
                   help="pidfd: the kernel's SO_PEERPIDFD (Linux 6.5), falling back to "
                        "peercred where the kernel lacks it; peercred: always the fallback "
                        "(a pidfd by the connect's pid, refused when that pid names a newer "
                        "process)")
    p.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                   help="exit after SECONDS with no connection and no live build")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--version", action="version", version="%(prog)s " + __version__)
    return p


def serve(argv):
    args = build_parser().parse_args(argv)
    require_root()
    broker = Broker(socket_path=args.socket, helper=args.helper,
                    max_pending=args.max_pending,
                    max_pending_per_uid=args.max_pending_per_uid,
                    idle_exit=args.idle_exit, peer_auth=args.peer_auth)
    try:
        broker.listen()
    except (RuntimeError, OSError) as e:
        sys.stderr.write("%s: cannot listen on %s: %s\n" % (PROG, args.socket, e))
        return 1
    try:
        broker.start_fork_server()
    except OSError as e:
        broker.close()
        sys.stderr.write("%s: cannot start %s --fork-server: %s (is --helper the installed "
                         "cgnetns-helper?)\n" % (PROG, args.helper, e.strerror or e))
        return 1
    signal.signal(signal.SIGTERM, broker.stop)
    signal.signal(signal.SIGINT, broker.stop)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    broker.log("serving %s with %s (pid %d)" % (escape(args.socket), escape(args.helper),
                                                os.getpid()))
    try:
        broker.serve()
    finally:
        broker.close()
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    return run_main(PROG, serve, argv, debug="--debug" in argv)


if __name__ == "__main__":
    sys.exit(main())
