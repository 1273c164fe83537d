"""python -m stress [--builds N] [--calls M] [--parallel P] [--hostile] ...

Exit status 0 when every figure that must be zero is zero, 1 otherwise."""

import argparse
import os
import sys

from . import load


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m stress")
    p.add_argument("--builds", "-N", type=int, default=64)
    p.add_argument("--calls", "-M", type=int, default=200)
    p.add_argument("--parallel", "-P", type=int, default=None,
                   help="helper calls in flight per build (default: all M at once)")
    p.add_argument("--paths", default="setuid,broker")
    p.add_argument("--require-broker", action="store_true",
                   help="fail when the broker path does not work (default: leave it out)")
    p.add_argument("--hostile", action="store_true", help="the hostile-input run instead")
    p.add_argument("--cases", type=int, default=10000, help="hostile: hypothesis cases")
    p.add_argument("--connections", type=int, default=1000, help="hostile: simultaneous connections")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("stress: run as root\n")
        return 2
    if args.hostile:
        from . import hostile
        res = hostile.run(cases=args.cases, connections=args.connections)
        hostile.report(res)
        return 0 if hostile.ok(res) else 1
    res = load.run(args.builds, args.calls, args.parallel, args.paths.split(","),
                   require_broker=args.require_broker)
    load.report(res)
    t = load.totals(res)
    return 0 if not (t["failures"] or t["mixups"] or t["leaks"] or res["errors"]) else 1


if __name__ == "__main__":
    sys.exit(main())
