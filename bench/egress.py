"""Part 7 (egress): what the egress policy costs (issue 16, cgnetns/egress.py).

* data path of a build: the tcpbench client (bench/tcpbench.c) runs as the
  build user in a build's cgroup, in the parent namespace (the socket a
  build gets through cgnetns-exec: made by a process of the build cgroup in
  the approved namespace), against the server on 127.0.0.1 there.  Each
  round makes a build with a policy that lists the server's port, runs the
  client in it and removes it, then the same without a policy (so with no
  cgnetns table at all), in alternating order; many short rounds, so that
  other load on the machine touches both alike; the ratio column is the
  median over rounds of the ratio of the round's two runs (``_paired``),
  the value columns the medians of all samples.  Before each client run
  the kernel has finished freeing what the previous change deleted (the
  table of the previous round's build: an RCU grace period in a worker).  Target: the build with a
  policy keeps at least 0.97x the speed of the one without (latency and
  throughput; the ratio column is the time ratio).
* traffic outside builds: the same client outside any build, with 1,000
  live builds (cgnetns.build.Build, each with its own policy and filter),
  round by round with the table hooked (as it runs) and unhooked (its
  output chain removed: no packet meets nftables, the data path of a host
  without any filter), alternating; and once before the builds are made and
  once after they are gone, with no table at all.  Target: at least 0.98x
  the speed.
* filter install plus removal per build: ``egress.install`` then
  ``egress.uninstall`` of one build's filter (one policy line), timed
  in-process, first as the only build with a filter (so each round also
  makes and removes the table and its hook), then beside 1,000 other
  builds' filters.  Target: under 20 ms.  For scale, the whole
  ``Build(egress=...).create()`` plus ``close()`` against a build without
  a policy.

The system's policy file is not read (``paths.EGRESS_PATH`` points at a
missing file for the run): builds without ``egress=`` have no policy.
Loopback only; everything made is removed by name or PID.
"""

import os
import subprocess
import time

from cgnetns import egress, paths
from cgnetns.build import Build

from .common import (BUILD_USER, BenchError, Cleanup, Row, allow_listed, communicate,
                     kill_wait, last_line, median, signals_held, start_in_build, start_outside)
from .datapath import parse   # tcpbench's lines, as part 3 reads them

PART = 7
NAME = "egress"
NBYTES = 256 << 20
N_BUILDS = 1000


def _measure(start, what, into):
    """One client run: its samples go INTO (latencies, throughputs, per-run
    medians)."""
    proc = start()
    out, err = communicate(proc, what="tcpbench client (%s)" % what)
    if proc.returncode != 0:
        raise BenchError("tcpbench client (%s) exit %d: %s" % (what, proc.returncode,
                                                                last_line(err)))
    lat, xfer = parse(out)
    into[0].extend(lat)
    into[1].extend(xfer)
    into[2].append((median(lat), median(xfer)))


def _paired(got, base_key, key):
    """Median over rounds of the ratio of the round's two runs (latency, and
    throughput as a time ratio): runs side by side in time meet the same
    load, and a run's client and server land on the same or on different
    CPUs as a whole, which makes single samples bimodal on two CPUs."""
    pairs = list(zip(got[base_key][2], got[key][2]))
    return (median([v[0] / b[0] for b, v in pairs]), median([b[1] / v[1] for b, v in pairs]))


def _close_all(builds):
    with signals_held():
        while builds:
            builds.pop().close()


def _install_removal(b, policy, n):
    """[(install s, removal s)] of N rounds of B's filter."""
    out = []
    b.egress = policy
    for _ in range(n):
        plan = egress.prepare(b)
        with signals_held():
            t0 = time.perf_counter()
            egress.install(b, plan)
            t1 = time.perf_counter()
            egress.uninstall(b, plan)
            t2 = time.perf_counter()
        out.append((t1 - t0, t2 - t1))
    b.egress = None
    return out


def _settle():
    """Let the kernel finish what a change left to do before measuring: it
    frees deleted nftables objects after an RCU grace period, in a worker,
    and the close of a netfilter netlink socket waits for that work."""
    import socket
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12).close()  # NETLINK_NETFILTER
    time.sleep(0.02)


def _hook(on):
    """Put the table's output chain (its only hook) back, or take it away."""
    def op(nft):
        names = egress._chains(nft) or ()
        if ("output" in names) == on:
            return
        if not on:
            nft.run("delete chain inet cgnetns output")
            return
        levels = egress._levels(names) or ()
        nft.run(egress._skeleton()[1:] + ["add rule inet cgnetns output jump %s%d"
                                          % (egress.LEVEL_PREFIX, lvl) for lvl in sorted(levels)])
    egress._in_netns(None, None, op)


def run(sess):
    lat_n = sess.pick(100, 20)
    rounds = sess.pick(96, 6)        # short client runs, alternating with and without
    n_inst = sess.pick(200, 50)
    n_lib = sess.pick(200, 50)
    tcp = sess.tool("tcpbench")
    with Cleanup() as stack:
        saved = paths.EGRESS_PATH
        paths.EGRESS_PATH = os.path.join(sess.tooldir, "no-such-egress-policy")
        stack.callback(setattr, paths, "EGRESS_PATH", saved)
        stack.enter_context(allow_listed([tcp]))
        server = subprocess.Popen([tcp, "serve"], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, cwd="/", start_new_session=True)
        stack.callback(kill_wait, server)
        stack.callback(server.stdout.close)
        port = server.stdout.readline().decode().strip()
        if not port.isdigit():
            raise BenchError("tcpbench server did not start")
        policy = egress.Policy.parse("tcp 127.0.0.1 %s\n" % port, "<bench>")
        client = [tcp, "client", port, str(lat_n), str(NBYTES), "1"]
        try:
            egress.check()  # loads libnftables; a missing one is this part's error
        except Exception as e:
            raise BenchError("nftables: %s" % e)
        if egress.table_exists():
            raise BenchError("an inet cgnetns table exists (a build with a policy runs on "
                             "this host): no baseline without one")

        # -- the data path of a build, with and without a policy
        data = {k: ([], [], []) for k in ("policy", "none")}
        counted = 0
        for r in range(rounds):
            sess.log("egress: data path, round %d/%d" % (r + 1, rounds))
            for key in (("policy", "none") if r % 2 else ("none", "policy")):
                with signals_held():
                    b = Build(name="bench-egress-data",
                              egress=policy if key == "policy" else None).create()
                try:
                    _settle()
                    _measure(lambda: start_in_build(b.cgroup_path, client, user=BUILD_USER,
                                                    unshare_net=False), key, data[key])
                    if key == "policy":
                        counted += sum(x["packets"] or 0 for x in egress.counters(b) or ()
                                       if x["comment"] == "line 1")
                finally:
                    with signals_held():
                        b.close()
        if counted < rounds:
            raise BenchError("the policy's rule counted %d connections in %d rounds: the "
                             "filter was not on the data path" % (counted, rounds))

        # -- traffic outside builds with 1,000 builds' filters; install + removal there
        outside = {k: ([], [], []) for k in ("none", "many", "notable")}
        outside_client = lambda: start_outside(client, user=BUILD_USER)  # noqa: E731
        sess.log("egress: outside builds, no table")
        _measure(outside_client, "outside, no table", outside["notable"])
        many = []
        with Cleanup() as phase:
            phase.callback(_close_all, many)
            sess.log("egress: making %d builds with a policy each" % N_BUILDS)
            t0 = time.perf_counter()
            for i in range(N_BUILDS):
                with signals_held():
                    many.append(Build(name="bench-egress-many", egress=egress.Policy.parse(
                        "tcp 127.0.0.1 %d\n" % (20000 + i), "<bench>")).create())
            setup_each = (time.perf_counter() - t0) / N_BUILDS
            if len(egress.chains()) < N_BUILDS:
                raise BenchError("only %d filters installed" % len(egress.chains()))
            phase.callback(_hook, True)  # never leave the builds unhooked
            for r in range(rounds):
                sess.log("egress: outside builds, round %d/%d" % (r + 1, rounds))
                for key in (("many", "none") if r % 2 else ("none", "many")):
                    _hook(key == "many")
                    _settle()
                    _measure(outside_client, "outside (%s)" % key, outside[key])
            _hook(True)
            sess.log("egress: install + removal beside %d filters" % N_BUILDS)
            with signals_held():
                b = Build(name="bench-egress-one").create()
                phase.callback(b.close)
            inst_many = _install_removal(b, policy, n_inst)
        sess.log("egress: removed the %d builds" % N_BUILDS)
        _measure(outside_client, "outside, no table", outside["notable"])

        # -- install + removal as the only build with a filter; the whole library call
        sess.log("egress: install + removal, the only build with a filter")
        with Cleanup() as one:
            with signals_held():
                b = Build(name="bench-egress-one").create()
                one.callback(b.close)
            inst_one = _install_removal(b, policy, n_inst)
        lib = {"policy": [], "none": []}
        for i in range(n_lib):
            for k in (("policy", "none") if i % 2 else ("none", "policy")):
                with signals_held():
                    t0 = time.perf_counter()
                    b = Build(name="bench-egress-lib",
                              egress=policy if k == "policy" else None).create()
                    b.close()
                    lib[k].append(time.perf_counter() - t0)

    def rows_for(got, base_key, key, label, base_label, target):
        lat_b, lat_v = median(got[base_key][0]), median(got[key][0])
        thr_b, thr_v = median(got[base_key][1]), median(got[key][1])
        lat_r, thr_r = _paired(got, base_key, key)
        return [
            Row(PART, label + ": connect + echo latency", lat_v, unit="us", n=len(got[key][0]),
                baseline=base_label, baseline_value=lat_b, ratio=lat_r,
                target="speed >= %.2fx" % target, met=1 / lat_r >= target),
            Row(PART, label + ": 256 MiB throughput (time ratio)", thr_v, unit="MiB/s",
                n=len(got[key][1]), baseline=base_label, baseline_value=thr_b,
                ratio=thr_r, target="speed >= %.2fx" % target, met=1 / thr_r >= target),
        ]

    one = [a + r for a, r in inst_one]
    many_ = [a + r for a, r in inst_many]
    rows = rows_for(data, "none", "policy", "build with a policy (data path)",
                    "build without", 0.97)
    rows += rows_for(outside, "none", "many", "outside builds, %s builds' filters"
                     % format(N_BUILDS, ","), "unhooked", 0.98)
    rows += [
        Row(PART, "filter install + removal: the only build with one", median(one) * 1e3,
            n=len(one), target="< 20 ms", met=median(one) * 1e3 < 20),
        Row(PART, "filter install + removal: beside %s builds' filters" % format(N_BUILDS, ","),
            median(many_) * 1e3, n=len(many_), target="< 20 ms", met=median(many_) * 1e3 < 20),
        Row(PART, "library: Build(egress=policy).create() + close()",
            median(lib["policy"]) * 1e3, n=len(lib["policy"]), baseline="no policy",
            baseline_value=median(lib["none"]) * 1e3),
    ]
    sess.add(*rows)
    sess.note("egress: outside builds with no cgnetns table at all (before the %d builds and "
              "after): latency %.2f us, throughput %.0f MiB/s (n=%d, %d)" % (
                  N_BUILDS, median(outside["notable"][0]), median(outside["notable"][1]),
                  len(outside["notable"][0]), len(outside["notable"][1])))
    sess.note("egress: install %.3f ms + removal %.3f ms as the only build (the table and its "
              "hook made and removed each time); %.3f + %.3f ms beside %d filters; making "
              "each of %d builds with a filter took %.2f ms on average" % (
                  median([a for a, _ in inst_one]) * 1e3, median([r for _, r in inst_one]) * 1e3,
                  median([a for a, _ in inst_many]) * 1e3,
                  median([r for _, r in inst_many]) * 1e3, N_BUILDS, N_BUILDS,
                  setup_each * 1e3))
