"""cgnetnsd: the root broker (doc/BROKER.rst).

Exit status: 0 on a clean stop (SIGTERM, SIGINT, or --idle-exit); 1 when it
cannot listen (another broker holds the lock, the socket cannot be bound);
2 for a bad command line; 125 when not run as root.
"""

import os
import signal
import sys

from .. import __version__
from ..broker import Broker, HELPER, SOCKET_PATH
from ..build import require_root
from . import Parser, run_main

PROG = "cgnetnsd"


def build_parser():
    p = Parser(
        prog=PROG, allow_abbrev=False,
        description="Broker for cgnetns-exec callers that cannot gain privilege "
                    "(no_new_privs, nosuid, ptrace, user namespaces): starts allow-listed "
                    "programs for them in their build's approved network namespace.")
    p.add_argument("--socket", metavar="PATH", default=SOCKET_PATH,
                   help="listen on PATH (default: %(default)s); a socket passed by systemd "
                        "socket activation (LISTEN_FDS) is used instead when present")
    p.add_argument("--helper", metavar="PATH", default=HELPER,
                   help="the cgnetns-exec binary that does the work (default: %(default)s)")
    p.add_argument("--max-connections", type=int, default=256, metavar="N",
                   help="connections served at once; more are dropped (default: %(default)s)")
    p.add_argument("--request-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="time a client has to send its whole request (default: %(default)s)")
    p.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                   help="exit after SECONDS with no connection and no live build")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--version", action="version", version="%(prog)s " + __version__)
    return p


def serve(argv):
    args = build_parser().parse_args(argv)
    require_root()
    broker = Broker(socket_path=args.socket, helper=args.helper,
                    max_conns=args.max_connections, request_timeout=args.request_timeout,
                    idle_exit=args.idle_exit)
    try:
        broker.listen()
    except (RuntimeError, OSError) as e:
        sys.stderr.write("%s: cannot listen on %s: %s\n" % (PROG, args.socket, e))
        return 1
    signal.signal(signal.SIGTERM, broker.stop)
    signal.signal(signal.SIGINT, broker.stop)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    broker.log("serving %s with %s (pid %d)" % (args.socket, args.helper, os.getpid()))
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
