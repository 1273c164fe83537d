"""N concurrent builds, each approving its own parent namespace, each making M
helper calls through the set-user-ID path and the broker path (THREATS.md 19;
issue 12's figure: the broker path's call time under 64 builds x 16 calls in
flight, half of them through the broker).

Every build's parent namespace runs a token server on one port with a token
of its own, and every build's own namespace a decoy on the same port (the
worker's).  Each call runs the netprobe through the installed front, which
connects to 127.0.0.1:PORT and reports what it reached and its namespace:

  set-user-ID path   the program runs in the approved namespace: it reports
                     that namespace and reaches its build's token
  broker path        (no_new_privs) the program is the caller's own process
                     in the build's own namespace; its socket, minted by the
                     supervisor, reaches its build's token

Reaching another build's token (or landing in another build's namespace) is
a mix-up; anything else but the expected outcome is a failure.  Both paths
are required: the run starts its own cgnetnsd on the system socket (the one
the installed front asks), waiting up to 20 s for another broker to leave it.
"""

import json
import os
import secrets
import subprocess
import time

from . import common
from .common import HELPER, RUN, USER_PY, repo_env

# issue 12's targets for the broker path's call time
TARGET_P50_MS = 50
TARGET_P99_MS = 250


def _launch(tdir, netprobe, name, ns_path, port, calls, parallel, paths, i, hold=0):
    out = open(os.path.join(tdir, "build-%s.out" % i), "wb")
    err = open(os.path.join(tdir, "build-%s.err" % i), "wb")
    cmd = (["nsenter", "--net=" + ns_path, "--"] + RUN
           + ["--unshare-net", "--user", "nobody", "--name", name, "--", USER_PY,
              os.path.join(tdir, "worker.py"), HELPER, netprobe, os.path.join(tdir, "out"),
              str(port), str(calls), str(parallel), ",".join(paths), str(hold), str(i)])
    # our own broker serves the system socket: cgnetns-run need not start one
    p = subprocess.Popen(cmd, env=repo_env(CGNETNS_RUN_NO_BROKER="1"), stdout=out, stderr=err,
                         stdin=subprocess.DEVNULL, cwd="/")
    out.close()
    err.close()
    return p


def _go(tdir, tag):
    with open(os.path.join(tdir, "out", "go-%s" % tag), "w"):
        pass


def _wait_ready(tdir, procs, timeout=120):
    """Until every build's worker is up (its ready-I file), so that all calls
    start together; a build that ended meanwhile stops the wait."""
    deadline = time.monotonic() + timeout
    pending = set(range(len(procs)))
    while pending and time.monotonic() < deadline:
        pending = {i for i in pending if not os.path.exists(
            os.path.join(tdir, "out", "ready-%d" % i)) and procs[i].poll() is None}
        time.sleep(0.02)
    return not pending


def _read(tdir, i):
    with open(os.path.join(tdir, "build-%s.out" % i), "rb") as f:
        out = f.read()
    with open(os.path.join(tdir, "build-%s.err" % i), "rb") as f:
        err = f.read()
    return out, err


def classify(call, own_ino, approved_ino, token, other_tokens, other_inos):
    """'ok', 'mixup' or 'failure', and why (for a failure or mix-up)."""
    path, status, connect, ino, uid, same_pid, stderr, _ = call
    reached = connect[6:] if connect.startswith("token:") else None
    if reached in other_tokens or ino in other_inos:
        return "mixup", "reached %s in namespace %d (build's own %d, approved %d)" % (
            connect, ino, own_ino, approved_ino)
    if status != 0:
        return "failure", "exit %d: %s" % (status, stderr)
    if reached != token:
        return "failure", "reached %s, not the approved namespace's %s" % (connect, token)
    if uid != 65534:
        return "failure", "ran as uid %s" % uid
    if path == "setuid" and ino != approved_ino:
        return "failure", "ran in namespace %d, not the approved %d" % (ino, approved_ino)
    if path == "broker":
        if ino != own_ino:
            return "failure", "left the build's own namespace for %d" % ino
        if not same_pid:
            return "failure", "the program is not the caller's own process"
    return "ok", None


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def broker_path_works(tdir, netprobe, servers):
    """(True, None) when one build's no_new_privs call reaches its approved
    namespace through the broker; else (False, why)."""
    with common.Cleanup() as cl:
        _, ns_path = common.add_netns(cl, "cgstress-probe")
        token = "PROBE-" + secrets.token_hex(4)
        port = servers.add(token, ns_path)
        _go(tdir, "probe")
        p = _launch(tdir, netprobe, "stressprobe", ns_path, port, 1, 1, ["broker"], "probe")
        rc = p.wait(120)
        out, err = _read(tdir, "probe")
        if rc != 0:
            return False, "probe build failed (%d): %s" % (rc, err.decode(errors="replace")[-300:])
        doc = json.loads(out)
        if doc["errors"] or not doc["calls"]:
            return False, "; ".join(doc["errors"]) or "no call made"
        kind, why = classify(doc["calls"][0], doc["own"], common.ns_ino(ns_path), token, (), ())
        return kind == "ok", why


def run(builds=4, calls=20, parallel=None, paths=("setuid", "broker"), log=print,
        broker_args=(), hold=0):
    """Run the load; return a dict of figures (see report())."""
    parallel = parallel or calls
    use = list(paths)
    res = {"builds": builds, "calls_per_build": calls, "parallel": parallel, "hold": hold,
           "used_paths": use, "paths": {}, "broker": None, "leaks": {}, "errors": []}
    with common.Cleanup() as cl:
        tdir = common.make_tdir(cl)
        netprobe = common.build_netprobe(cl, tdir)
        servers = common.TokenServers(cl)
        daemon = None
        if "broker" in use:
            common.wait_system_socket_free(20)
            daemon = common.Daemon(cl, tdir=tdir, extra=list(broker_args),
                                   log=os.path.join(tdir, "cgnetnsd.log"))
            res["broker"] = "started cgnetnsd (pid %d) on %s%s" % (
                daemon.pid, common.SOCKET, (" " + " ".join(broker_args)) if broker_args else "")
            ok, why = broker_path_works(tdir, netprobe, servers)
            if not ok:
                raise AssertionError("the broker path does not work: %s\nbroker log:\n%s"
                                     % (why, daemon.text()[-2000:]))
        name = "stress" + secrets.token_hex(4)
        prefix = name + "-"
        before = common.cgnetns_state(prefix)
        namespaces = [common.add_netns(cl, "cgstress%d" % i)[1] for i in range(builds)]
        inos = [common.ns_ino(p) for p in namespaces]
        assert len(set(inos)) == builds
        tokens = ["B%d-%s" % (i, secrets.token_hex(4)) for i in range(builds)]
        port = 0
        for tok, ns in zip(tokens, namespaces):
            port = servers.add(tok, ns, port)
        my_fds = common.fd_count(os.getpid())
        broker_fds = daemon.idle_fds() if daemon else None
        broker_rss = daemon.rss() if daemon else None
        log_start = len(daemon.text()) if daemon else 0
        t_launch = t0 = time.monotonic()
        procs = []
        during = None
        try:
            for i, ns_path in enumerate(namespaces):
                procs.append(_launch(tdir, netprobe, name, ns_path, port, calls, parallel, use, i,
                                     hold))
            if not _wait_ready(tdir, procs):
                res["errors"].append("not every build started within 120 s")
            res["setup_seconds"] = time.monotonic() - t_launch
            t0 = time.monotonic()
            for i in range(builds):
                _go(tdir, i)
            during = common.cgnetns_state(prefix)   # every build is up now
            while any(p.poll() is None for p in procs):
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
        samples = {}    # why -> [count, first build]
        all_tokens, all_inos = set(tokens), set(inos)
        for i, p in enumerate(procs):
            out, err = _read(tdir, i)
            doc = None
            if p.returncode == 0:
                try:
                    doc = json.loads(out)
                except ValueError:
                    pass
            if doc is None:
                res["errors"].append("build %d: cgnetns-run exit %d: %s"
                                     % (i, p.returncode, err.decode(errors="replace")[-300:]))
                continue
            res["errors"] += ["build %d: %s" % (i, e) for e in doc["errors"]]
            if doc["own"] == inos[i]:
                res["errors"].append("build %d: the build's own namespace is the approved one" % i)
            for call in doc["calls"]:
                s = res["paths"][call[0]]
                s["calls"] += 1
                s["lat"].append(call[-1])
                kind, why = classify(call, doc["own"], inos[i], tokens[i],
                                     all_tokens - {tokens[i]}, all_inos - {inos[i]})
                s[{"ok": "ok", "failure": "failures", "mixup": "mixups"}[kind]] += 1
                if why:
                    key = "%s: %s" % (call[0], why)
                    if key in samples:
                        samples[key][0] += 1
                    elif len(samples) < 8:
                        samples[key] = [1, i]
        res["samples"] = ["%dx %s (first in build %d)" % (n, k, i) for k, (n, i) in samples.items()]
        for path, s in res["paths"].items():
            lat = sorted(s.pop("lat"))
            s["p50_ms"] = percentile(lat, 0.5) * 1000 if lat else None
            s["p99_ms"] = percentile(lat, 0.99) * 1000 if lat else None
            s["max_ms"] = lat[-1] * 1000 if lat else None
            want = calls // len(use) + (1 if use.index(path) < calls % len(use) else 0)
            if s["calls"] != want * builds:
                res["errors"].append("%s path: %d calls reported, %d made"
                                     % (path, s["calls"], want * builds))
        # -- leaks: everything this run made must be gone (supervisors live in
        # the approved namespaces until no task uses their filter)
        deadline = time.monotonic() + 10
        while True:
            after = common.cgnetns_state(prefix)
            procs_left = sorted(set(common.pids_in_netns(inos)) | set(common.pids_matching(tdir)))
            if (not any(after.values()) and not procs_left) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        leaks = {k: sorted(after[k] - before[k]) for k in after}
        leaks["processes"] = procs_left
        leaks["fds (driver)"] = common.fd_count(os.getpid()) - my_fds
        if daemon is not None:
            leaks["fds (broker)"] = daemon.settle_fds(broker_fds) - broker_fds
            res["broker_rss_kib"] = (broker_rss, daemon.rss())
            text = daemon.text()[log_start:]
            res["broker_drops"] = sum(1 for l in text.splitlines() if "dropping" in l)
            res["broker_log_errors"] = [l for l in text.splitlines()
                                        if "error:" in l or "killed" in l][:5]
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


def ok(res):
    t = totals(res)
    return not (t["failures"] or t["mixups"] or t["leaks"] or res["errors"]) and t["calls"] > 0


def report(res, out=print):
    out("cgnetns stress: %d builds x %d helper calls (%d in flight per build), paths: %s%s"
        % (res["builds"], res["calls_per_build"], res["parallel"], ", ".join(res["used_paths"]),
           "; each program holds its connection %d ms" % res["hold"] if res["hold"] else ""))
    if res["broker"]:
        out("broker: %s" % res["broker"])
    out("")
    out("%-8s %8s %8s %8s %8s %9s %9s %9s" % ("path", "calls", "ok", "failed", "mix-ups",
                                              "p50 ms", "p99 ms", "max ms"))
    for path, s in res["paths"].items():
        out("%-8s %8d %8d %8d %8d %9.1f %9.1f %9.1f"
            % (path, s["calls"], s["ok"], s["failures"], s["mixups"], s["p50_ms"] or 0,
               s["p99_ms"] or 0, s["max_ms"] or 0))
    t = totals(res)
    out("%-8s %8d %8s %8d %8d" % ("total", t["calls"], "", t["failures"], t["mixups"]))
    out("")
    b = res["paths"].get("broker")
    if b and b["calls"]:
        hold = res["hold"]
        p50, p99 = b["p50_ms"] - hold, b["p99_ms"] - hold
        out("broker path call time (spawn of cgnetns-exec to exit of the program%s): "
            "median %.1f ms (target <= %d: %s), p99 %.1f ms (target <= %d: %s)"
            % (", less the %d ms hold" % hold if hold else "",
               p50, TARGET_P50_MS, "met" if p50 <= TARGET_P50_MS else "MISSED",
               p99, TARGET_P99_MS, "met" if p99 <= TARGET_P99_MS else "MISSED"))
    s = res["paths"].get("setuid")
    if b and s and b["calls"] and s["calls"] and s["p50_ms"] and s["p99_ms"]:
        # Both paths under the same load: what the broker adds, apart from
        # what the machine's CPUs allow any path (Little's law: the mean
        # call time is the calls in flight over the rate they complete at).
        out("the set-user-ID calls of the same run (no broker on their path): median %.1f ms, "
            "p99 %.1f ms; broker path over set-user-ID path: %.2fx median, %.2fx p99"
            % (s["p50_ms"], s["p99_ms"], b["p50_ms"] / s["p50_ms"], b["p99_ms"] / s["p99_ms"]))
        t = totals(res)
        if res["duration"]:
            rate = t["calls"] / res["duration"]
            in_flight = res["builds"] * res["parallel"]
            out("%d calls in flight on %d CPUs completing at %.0f calls/s: %.0f ms a call on "
                "average for any path (calls in flight / rate)"
                % (in_flight, os.cpu_count() or 0, rate, 1e3 * in_flight / rate))
    if "broker_drops" in res:
        out("broker: %d log lines about dropped connections (over --max-pending or "
            "--max-pending-per-uid; at most one a second)" % res["broker_drops"])
        if res["broker_drops"]:
            out("  (every build runs as nobody: all broker calls count against one uid's cap; "
                "--broker-arg=--max-pending-per-uid=N measures without it)")
        for line in res["broker_log_errors"]:
            out("  broker log: %s" % line)
    out("during the run: %s" % ", ".join("%s %d" % kv for kv in sorted(res["during"].items())))
    out("leaked afterwards: %s" % ", ".join(
        "%s %d" % (k, len(v) if isinstance(v, list) else v) for k, v in res["leaks"].items()))
    if "broker_rss_kib" in res:
        out("broker RSS before/after: %s/%s KiB" % res["broker_rss_kib"])
    out("duration: %.1f s (%.0f calls/s) after %.1f s to start the builds"
        % (res["duration"], t["calls"] / res["duration"] if res["duration"] else 0,
           res.get("setup_seconds", 0)))
    for s in res["samples"]:
        out("  e.g. %s" % s)
    for e in res["errors"]:
        out("ERROR: %s" % e)
