"""N concurrent builds, each approving its own parent namespace, each making M
helper calls through the setuid path and the broker path (THREATS.md 19)."""

import json
import os
import secrets
import subprocess
import time

from . import common
from .common import HELPER, PROBE, RUN, USER_PY, repo_env


def _launch(tdir, name, ns_path, calls, parallel, paths, i):
    out = open(os.path.join(tdir, "build-%s.out" % i), "wb")
    err = open(os.path.join(tdir, "build-%s.err" % i), "wb")
    cmd = (["nsenter", "--net=" + ns_path, "--"] + RUN
           + ["--unshare-net", "--user", "nobody", "--name", name, "--", USER_PY,
              os.path.join(tdir, "worker.py"), HELPER, PROBE, str(calls), str(parallel),
              ",".join(paths)])
    p = subprocess.Popen(cmd, env=repo_env(), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                         cwd="/")
    out.close()
    err.close()
    return p


def _read(tdir, i):
    with open(os.path.join(tdir, "build-%s.out" % i), "rb") as f:
        out = f.read()
    with open(os.path.join(tdir, "build-%s.err" % i), "rb") as f:
        err = f.read()
    return out, err


def broker_path_works(tdir, log=None):
    """(True, None) when cgnetns-exec under setpriv --no-new-privs reaches a
    broker and lands in the approved namespace; else (False, why)."""
    with common.Cleanup() as cl:
        name = "stressprobe" + secrets.token_hex(3)
        nsname, ns_path = common.add_netns(cl, "cgstress-probe")
        p = _launch(tdir, name, ns_path, 1, 1, ["broker"], "probe")
        rc = p.wait(120)
        out, err = _read(tdir, "probe")
        if rc != 0:
            return False, "probe build failed (%d): %s" % (rc, err.decode(errors="replace")[-300:])
        doc = json.loads(out)
        path, status, stdout, stderr, _ = doc["calls"][0]
        want = "net:[%d]" % common.ns_ino(ns_path)
        if status == 0 and stdout == want:
            return True, None
        return False, "status %d, landed in %s (approved %s): %s" % (status, stdout or "-", want,
                                                                  stderr or "no message")


def run(builds=4, calls=20, parallel=None, paths=("setuid", "broker"), log=print,
        require_broker=False):
    """Run the load; return a dict of figures (see stress.report)."""
    parallel = parallel or calls
    res = {"builds": builds, "calls_per_build": calls, "parallel": parallel,
           "paths": {}, "broker": None, "leaks": {}, "errors": []}
    with common.Cleanup() as cl:
        tdir = common.make_tdir(cl)
        common.allow_probe(cl)
        use = list(paths)
        daemon = None
        if "broker" in use:
            if common.system_broker_running():
                res["broker"] = "a broker already serves %s (fd count not measured)" % common.SOCKET
            elif common.lock_busy():
                res["broker"] = "the broker lock is held but nothing listens: broker path off"
                use.remove("broker")
            else:
                daemon = common.Daemon(cl, log=os.path.join(tdir, "cgnetnsd.log"))
                res["broker"] = "started cgnetnsd (pid %d) on %s" % (daemon.pid, common.SOCKET)
            if "broker" in use:
                ok, why = broker_path_works(tdir)
                if not ok:
                    if require_broker:
                        raise AssertionError("broker path does not work: %s" % why)
                    res["broker"] += "; broker path OFF: %s" % why
                    use.remove("broker")
        res["used_paths"] = use
        name = "stress" + secrets.token_hex(4)
        prefix = name + "-"
        before = common.cgnetns_state(prefix)
        my_fds = common.fd_count(os.getpid())
        broker_fds = daemon.fds() if daemon else None
        broker_rss = daemon.rss() if daemon else None
        namespaces = []
        for i in range(builds):
            namespaces.append(common.add_netns(cl, "cgstress%d" % i))
        inos = [common.ns_ino(p) for _, p in namespaces]
        assert len(set(inos)) == builds
        t0 = time.monotonic()
        procs = []
        try:
            for i, (_, ns_path) in enumerate(namespaces):
                procs.append(_launch(tdir, name, ns_path, calls, parallel, use, i))
            during = None
            while any(p.poll() is None for p in procs):
                if during is None and time.monotonic() - t0 > 1:
                    during = common.cgnetns_state(prefix)
                time.sleep(0.05)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
        res["duration"] = time.monotonic() - t0
        res["during"] = {k: len(v) for k, v in (during or {}).items()}
        for path in use:
            res["paths"][path] = {"calls": 0, "ok": 0, "failures": 0, "mixups": 0, "lat": []}
        samples = []
        for i, p in enumerate(procs):
            out, err = _read(tdir, i)
            want = "net:[%d]" % inos[i]
            if p.returncode != 0:
                res["errors"].append("build %d: cgnetns-run exit %d: %s"
                                     % (i, p.returncode, err.decode(errors="replace")[-300:]))
                for path in use:
                    n = sum(1 for j in range(calls) if use[j % len(use)] == path)
                    res["paths"][path]["calls"] += n
                    res["paths"][path]["failures"] += n
                continue
            doc = json.loads(out)
            if doc["own"] == want:
                res["errors"].append("build %d: the build's own namespace is the approved one" % i)
            for path, status, stdout, stderr, dt in doc["calls"]:
                s = res["paths"][path]
                s["calls"] += 1
                s["lat"].append(dt)
                if status != 0:
                    s["failures"] += 1
                    if len(samples) < 5:
                        samples.append("build %d %s: exit %d: %s" % (i, path, status, stderr))
                elif stdout != want:
                    s["mixups"] += 1
                    if len(samples) < 5:
                        samples.append("build %d %s: landed in %s, approved %s (own %s)"
                                       % (i, path, stdout, want, doc["own"]))
                else:
                    s["ok"] += 1
        res["samples"] = samples
        for s in res["paths"].values():
            lat = sorted(s.pop("lat"))
            s["p50_ms"] = lat[len(lat) // 2] * 1000 if lat else None
            s["p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else None
        # -- leaks: everything this run made must be gone
        deadline = time.monotonic() + 10
        while True:
            after = common.cgnetns_state(prefix)
            procs_left = sorted(set(common.pids_in_netns(inos))
                                | set(common.pids_matching(tdir)))
            if (not any(after.values()) and not procs_left) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        leaks = {k: sorted(after[k] - before[k]) for k in after}
        leaks["processes"] = procs_left
        n = common.fd_count(os.getpid())
        leaks["fds (driver)"] = n - my_fds
        if daemon is not None:
            leaks["fds (broker)"] = daemon.settle_fds(broker_fds) - broker_fds
            res["broker_rss_kib"] = (broker_rss, daemon.rss())
            if not daemon.alive():
                res["errors"].append("cgnetnsd died during the run")
        res["leaks"] = leaks
    return res


def totals(res):
    t = {"calls": 0, "failures": 0, "mixups": 0}
    for s in res["paths"].values():
        for k in t:
            t[k] += s[k]
    t["leaks"] = sum(len(v) if isinstance(v, list) else abs(v) for v in res["leaks"].values())
    return t


def report(res, out=print):
    out("cgnetns stress: %d builds x %d helper calls (%d at a time per build), paths: %s"
        % (res["builds"], res["calls_per_build"], res["parallel"], ", ".join(res["used_paths"])))
    if res["broker"]:
        out("broker: %s" % res["broker"])
    out("")
    out("%-8s %8s %8s %8s %8s %9s %9s" % ("path", "calls", "ok", "failed", "mix-ups",
                                          "p50 ms", "p99 ms"))
    for path, s in res["paths"].items():
        out("%-8s %8d %8d %8d %8d %9.1f %9.1f" % (path, s["calls"], s["ok"], s["failures"],
                                                  s["mixups"], s["p50_ms"] or 0, s["p99_ms"] or 0))
    t = totals(res)
    out("%-8s %8d %8s %8d %8d" % ("total", t["calls"], "", t["failures"], t["mixups"]))
    out("")
    out("during the run: %s" % ", ".join("%s %d" % kv for kv in sorted(res["during"].items())))
    out("leaked afterwards: %s" % ", ".join(
        "%s %d" % (k, len(v) if isinstance(v, list) else v) for k, v in res["leaks"].items()))
    if "broker_rss_kib" in res:
        out("broker RSS before/after: %s/%s KiB" % res["broker_rss_kib"])
    out("duration: %.1f s (%.0f calls/s)" % (res["duration"], t["calls"] / res["duration"]
                                            if res["duration"] else 0))
    for s in res["samples"]:
        out("  e.g. %s" % s)
    for e in res["errors"]:
        out("ERROR: %s" % e)
