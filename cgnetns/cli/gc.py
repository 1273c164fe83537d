"""cgnetns-gc: remove the tags, pins, cgroups and records that dead runs left.

Prints one line for each thing it removes (or, with --dry-run, would remove).
Exit status: 0 when everything found was removed (or nothing was found, or
--dry-run); 1 when something could not be removed; 2 for a bad command line;
4 when not run as root; 125 when cgnetns itself failed (e.g. /run/cgnetns is
unsafe, or the global lock stayed busy).
"""

import json
import os
import sys

from .. import __version__
from ..gc import EXIT_PARTIAL, collect
from . import Parser, run_main

PROG = "cgnetns-gc"


def build_parser():
    p = Parser(
        prog=PROG, allow_abbrev=False,
        description="Remove what runs that died left behind: the tags, pins, build cgroups "
                    "(killing processes left in them) and run records of builds whose "
                    "cgnetns-run (or Python owner) is gone.  A run is alive while it holds "
                    "the lock on its record; live builds are never touched.")
    p.add_argument("--dry-run", "-n", action="store_true",
                   help="only report what would be removed")
    p.add_argument("--json", "-J", action="store_true",
                   help="print one JSON document instead of lines")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--version", action="version", version="%(prog)s " + __version__)
    return p


def run(argv):
    args = build_parser().parse_args(argv)

    def report(action):
        if args.json:
            return
        try:
            if action.error:
                sys.stderr.write("%s: cannot %s: %s\n"
                                 % (PROG, action.describe(True)[len("would "):], action.error))
            else:
                sys.stdout.write(action.describe(args.dry_run) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader went away (| head): finish the work, stop printing.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())

    result = collect(dry_run=args.dry_run, on_action=report)
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for sk in result.skipped:
            sys.stdout.write("left alone %s: %s\n" % (sk["path"], sk["why"]))
    if not args.json and not result.actions:
        sys.stdout.write("nothing to remove (%d live build%s)\n"
                         % (len(result.live), "" if len(result.live) == 1 else "s"))
    return EXIT_PARTIAL if result.failed else 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    return run_main(PROG, run, argv, debug="--debug" in argv)


if __name__ == "__main__":
    sys.exit(main())
