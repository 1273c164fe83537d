"""The short version of `make stress` (issue 8, THREATS.md 19): 4 concurrent
cgnetns-run --unshare-net builds, each started from its own network namespace
(so each approves a different one), each making 20 helper calls at once,
alternating the setuid path and the broker path (setpriv --no-new-privs; on
when the installed helper reaches a broker).  Every call's probe
(readlink /proc/self/ns/net) must report its build's approved namespace;
afterwards nothing of the run is left: cgroups, pins, records, mounts,
processes, fds (ours and the broker's)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stress import load  # noqa: E402


def test_stress_short():
    lines = []
    res = load.run(builds=4, calls=20, parallel=20, log=lines.append)
    load.report(res, out=lines.append)
    text = "\n".join(lines)
    t = load.totals(res)
    assert not res["errors"], text
    assert t["calls"] == 4 * 20, text
    assert t["failures"] == 0 and t["mixups"] == 0, text
    for k, v in res["leaks"].items():
        assert not v, "leaked %s: %s\n%s" % (k, v, text)
    for path in res["used_paths"]:
        assert res["paths"][path]["ok"] > 0, text
    print(text)
