"""The short version of `make stress` (THREATS 19; issue 12's load in small):
4 concurrent cgnetns-run --unshare-net --user nobody builds, each started
from a network namespace of its own (so each approves a different one), all
starting their calls at once, each keeping 16 helper calls in flight (issue
12's shape), half through the set-user-ID path and half through the broker
path (setpriv --no-new-privs), 48 calls per build.  BOTH paths are required: the run starts
its own cgnetnsd on the system socket (waiting up to 20 s for another broker
to leave it, then failing).

Each call runs the netprobe through the installed cgnetns-exec and connects
to 127.0.0.1 on a port where every approved namespace has a token server of
its own and every build's own namespace a decoy: a set-user-ID call must run
in its build's approved namespace and reach its token; a broker call must be
the caller's own process, in the build's own namespace, and reach its
build's token (its socket minted in the approved one).  Afterwards nothing of
the run is left: cgroups, pins, records, mounts, processes (supervisors
included), descriptors (ours and the broker's).

The run's broker has its default limits: all 32 broker calls in flight here
come from one uid (nobody); over that uid's share they wait in its queue, so
none is refused.  This test is about what happens to calls that are served
(every one lands right, nothing is left) and that a burst is not refused."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stress import load  # noqa: E402


def test_stress_short():
    lines = []
    res = load.run(builds=4, calls=48, parallel=16, paths=("setuid", "broker"), log=lines.append)
    load.report(res, out=lines.append)
    text = "\n".join(lines)
    t = load.totals(res)
    assert res["used_paths"] == ["setuid", "broker"], text
    assert not res["errors"], text
    assert t["calls"] == 4 * 48, text
    assert t["failures"] == 0 and t["mixups"] == 0, text
    for path in ("setuid", "broker"):
        assert res["paths"][path]["ok"] == 4 * 24, text
    assert res["during"]["cgroups"] == 4, text   # all four builds at once
    for k, v in res["leaks"].items():
        assert not v, "leaked %s: %s\n%s" % (k, v, text)
    assert res["broker_drops"] == 0, text
    print(text)
