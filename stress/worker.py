"""One build's load (runs inside cgnetns-run as the build user, with Debian's
/usr/bin/python3 and the standard library only).

    worker.py FRONT NETPROBE OUTDIR PORT CALLS PARALLEL PATHS HOLD_MS TAG
        The build: a decoy server on 127.0.0.1:PORT in the build's own
        namespace (sends "DECOY"), then one part per path in PATHS (comma
        list of setuid, broker), all at once: CALLS calls in all, PARALLEL in
        flight, shared equally between the paths.  The broker part runs under
        setpriv --no-new-privs, where the set-user-ID bit gains nothing and
        the front asks the broker.  The parts start when OUTDIR/go-TAG exists
        (after the worker made OUTDIR/ready-TAG), so that every build's calls
        are in flight together.  Prints one JSON document: the build's own
        namespace (inode) and every call.
    worker.py part PATH FRONT NETPROBE OUTDIR PORT CALLS PARALLEL HOLD_MS
        One path's calls: FRONT NETPROBE report OUT --connect=PORT
        [--hold=HOLD_MS] (the program then stays HOLD_MS after its connect,
        as distcc waits for a remote compile), PARALLEL at a time; prints
        the calls as JSON.

A call is [path, exit status, connect (the token reached, or the error),
network namespace inode of the program, uid, program pid == the pid the
front was started as, stderr, seconds from spawn to exit].
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time


def part(path, front, netprobe, outdir, port, calls, parallel, hold):
    calls, parallel = int(calls), int(parallel)
    extra = ["--hold=" + hold] if int(hold) > 0 else []
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
            out = os.path.join(outdir, "%s-%d-%d.json" % (path, os.getpid(), i))
            t = time.monotonic()
            try:
                p = subprocess.Popen([front, netprobe, "report", out, "--connect=" + port] + extra,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
                _, err = p.communicate(timeout=120)
                dt = time.monotonic() - t
                try:
                    with open(out) as f:
                        rep = json.load(f)
                    os.unlink(out)
                except (OSError, ValueError):
                    rep = {}
                results[i] = [path, p.returncode, rep.get("connect", "no report"),
                              (rep.get("netns") or [0, 0])[1], rep.get("uid"),
                              rep.get("pid") == p.pid,
                              err.decode(errors="replace").strip()[:300], dt]
            except Exception as e:
                results[i] = [path, -1000, "", 0, None, False, "worker: %s" % e,
                              time.monotonic() - t]

    threads = [threading.Thread(target=run) for _ in range(max(1, min(parallel, calls)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")


def decoy(port):
    """What a socket made in the build's own namespace reaches."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(1024)

    def serve():
        while True:
            c, _ = s.accept()
            try:
                c.send(b"DECOY\n")
            except OSError:
                pass
            c.close()
    threading.Thread(target=serve, daemon=True).start()


def build(front, netprobe, outdir, port, calls, parallel, paths, hold, tag):
    calls, parallel, paths = int(calls), int(parallel), paths.split(",")
    decoy(int(port))
    with open(os.path.join(outdir, "ready-" + tag), "w"):
        pass
    go = os.path.join(outdir, "go-" + tag)
    while not os.path.exists(go):   # the driver's start signal, for all builds at once
        time.sleep(0.01)
    me = os.path.abspath(__file__)
    procs = []
    for k, path in enumerate(paths):
        n = calls // len(paths) + (1 if k < calls % len(paths) else 0)
        par = max(1, parallel // len(paths))
        argv = [sys.executable, me, "part", path, front, netprobe, outdir, port, str(n), str(par),
                hold]
        if path == "broker":
            argv = ["setpriv", "--no-new-privs", "--"] + argv
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL))
    results, errors = [], []
    for path, p in zip(paths, procs):
        out, _ = p.communicate()
        if p.returncode != 0:
            errors.append("%s part: exit %d" % (path, p.returncode))
            continue
        results += json.loads(out)
    json.dump({"own": os.stat("/proc/self/ns/net").st_ino, "uid": os.getuid(),
               "calls": results, "errors": errors}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    if sys.argv[1] == "part":
        part(*sys.argv[2:10])
    else:
        build(*sys.argv[1:10])
