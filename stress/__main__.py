"""python -m stress [--builds N] [--calls M] [--parallel P] [--paths LIST]
                 [--broker-arg ARG]... | --hostile [--cases N] [--connections N]

The load run's defaults are issue 12's figure: 64 builds, 16 calls in flight
in each, half through the broker; it prints the broker path's median and p99
call time against the targets (50 ms, 250 ms).  Exit status 0 when every
figure that must be zero is zero, 1 otherwise, 2 on a bad command line or
when not root."""

import argparse
import os
import sys

from . import load


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m stress")
    p.add_argument("--builds", "-N", type=int, default=64)
    p.add_argument("--calls", "-M", type=int, default=160, help="helper calls per build")
    p.add_argument("--parallel", "-P", type=int, default=16,
                   help="helper calls in flight per build, shared equally by the paths")
    p.add_argument("--paths", default="setuid,broker",
                   help="setuid, broker or both (default); each one named must work")
    p.add_argument("--hold", type=int, default=0, metavar="MS",
                   help="each program keeps its connection MS milliseconds (as distcc waits "
                        "for a remote compile); the figures are then given less the hold")
    p.add_argument("--broker-arg", action="append", default=[], metavar="ARG",
                   help="an option for the run's cgnetnsd (e.g. --broker-arg=--max-pending-per-uid=64)")
    p.add_argument("--hostile", action="store_true", help="the hostile-input run instead")
    p.add_argument("--cases", type=int, default=2000, help="hostile: hypothesis cases")
    p.add_argument("--connections", type=int, default=1000,
                   help="hostile: simultaneous connections from another uid")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        sys.stderr.write("stress: run as root\n")
        return 2
    paths = [x for x in args.paths.split(",") if x]
    if not paths or set(paths) - {"setuid", "broker"}:
        p.error("--paths: setuid, broker or setuid,broker")
    if args.hostile:
        from . import hostile
        res = hostile.run(cases=args.cases, connections=args.connections)
        hostile.report(res)
        return 0 if hostile.ok(res) else 1
    res = load.run(args.builds, args.calls, args.parallel, paths, broker_args=args.broker_arg,
                   hold=args.hold)
    load.report(res)
    return 0 if load.ok(res) else 1


if __name__ == "__main__":
    sys.exit(main())
