"""One build's load (runs inside cgnetns-run as the build user, with Debian's
/usr/bin/python3 and the standard library only).

argv: HELPER PROBE CALLS PARALLEL PATHS(comma list of setuid,broker)
Makes CALLS helper calls, PARALLEL at a time, alternating the paths call by
call; each call runs ``PROBE /proc/self/ns/net`` (readlink) through the helper.
Prints one JSON document: the worker's own namespace and every call's
[path, exit status, stdout, stderr, seconds].
"""

import json
import os
import subprocess
import sys
import threading
import time


def main():
    helper, probe, calls, parallel, paths = sys.argv[1:6]
    calls, parallel, paths = int(calls), int(parallel), paths.split(",")
    argv = {"setuid": [helper, probe, "/proc/self/ns/net"],
            "broker": ["setpriv", "--no-new-privs", "--", helper, probe, "/proc/self/ns/net"]}
    results = [None] * calls
    lock = threading.Lock()
    nxt = [0]

    def run():
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= calls:
                return
            path = paths[i % len(paths)]
            t = time.monotonic()
            try:
                r = subprocess.run(argv[path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, timeout=120)
                results[i] = [path, r.returncode, r.stdout.decode(errors="replace").strip(),
                              r.stderr.decode(errors="replace").strip()[:300],
                              time.monotonic() - t]
            except Exception as e:
                results[i] = [path, -1000, "", "worker: %s" % e, time.monotonic() - t]

    threads = [threading.Thread(target=run) for _ in range(max(1, min(parallel, calls)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    json.dump({"own": os.readlink("/proc/self/ns/net"), "uid": os.getuid(),
               "calls": results}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
