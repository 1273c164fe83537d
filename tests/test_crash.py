"""Crash recovery (issue 8, THREATS.md 18): cgnetns-run killed with SIGKILL at
each fault point and mid-build (also with helper calls in flight), then
cgnetns-gc, then the host compared against a snapshot taken before: cgroups
under the cgnetns subtree, mounts under /run/cgnetns, pins, records, processes.
A live build started before the crashes (the sentinel) is never touched by gc
and its helper calls keep landing in its namespace.  Also: the broker killed
mid-request, and the approved namespace's last process gone while the build runs.

Other suites may run builds on this host at the same time: the comparison is
of the whole snapshot, but a difference only counts when it is one of ours
(names start with this module's unique prefix, or processes sit in our
cgroups or namespaces)."""

import os
import secrets
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stress import common  # noqa: E402
from stress.common import GC, HELPER, PROBE, RUN, repo_env, sh  # noqa: E402

from cgnetns import cgroups, namespaces  # noqa: E402

FAULT_POINTS = ["after-record", "after-cgroup", "after-pin", "after-tag", "teardown"]
READLINK = [HELPER, PROBE, "/proc/self/ns/net"]
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def snapshot():
    """The whole host, as far as cgnetns is concerned."""
    root = cgroups.find_cgroup2()
    base = os.path.join(root, cgroups.CGNETNS_SUBTREE)
    cgs = set()
    if os.path.isdir(base):
        for d, subdirs, _ in os.walk(base):
            cgs |= {os.path.relpath(os.path.join(d, s), base) for s in subdirs}
    pd = namespaces.pins_dir()
    entries = set(os.listdir(pd)) if os.path.isdir(pd) else set()
    mounts = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            if mp.startswith("/run/cgnetns/"):
                mounts.add(mp)
    procs = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/cgroup" % d) as f:
                    cg = [l[3:].strip() for l in f if l.startswith("0::")]
                procs[int(d)] = (cg[0] if cg else "", os.readlink("/proc/%s/ns/net" % d))
            except OSError:
                pass
    return {"cgroups": cgs, "pins": {e for e in entries if not e.endswith(".json")},
            "records": {e for e in entries if e.endswith(".json")}, "mounts": mounts,
            "processes": procs}


def differences(before, after, prefix, netns_inos=()):
    """What AFTER has that BEFORE had not and that is ours; and ours that vanished."""
    out = {}
    for k in ("cgroups", "pins", "records", "mounts"):
        new = {x for x in after[k] - before[k] if prefix in x}
        gone = before[k] - after[k]
        gone = {x for x in gone if prefix in x}
        if new or gone:
            out[k] = {"new": new, "gone": gone}
    nets = {"net:[%d]" % i for i in netns_inos}
    procs = {p: v for p, v in after["processes"].items() if p not in before["processes"]
             and (prefix in v[0] or v[1] in nets)}
    if procs:
        out["processes"] = procs
    return out


@pytest.fixture
def scene():
    """A unique name prefix, a cleanup stack, /usr/bin/readlink allow-listed,
    and a sentinel: a live build (own namespace) that must survive every gc."""
    with common.Cleanup() as cl:
        tdir = common.make_tdir(cl, "crash")
        common.allow_probe(cl, (PROBE, "/usr/bin/sleep"))
        prefix = "crash" + secrets.token_hex(3)
        _, ns = common.add_netns(cl, "cgcrash-sentinel")
        sentinel = subprocess.Popen(
            ["nsenter", "--net=" + ns, "--"] + RUN
            + ["--unshare-net", "--user", "nobody", "--name", prefix + "live", "--",
               "/bin/sh", "-c", 'echo ready; while read x; do "$@"; done', "sh"] + READLINK,
            env=repo_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def stop_sentinel():
            sentinel.stdin.close()
            sentinel.wait(30)
            sentinel.stdout.close()
            sentinel.stderr.close()
        cl.add(stop_sentinel)
        assert sentinel.stdout.readline() == b"ready\n", sentinel.stderr.read()

        class S:
            pass
        s = S()
        s.cl, s.tdir, s.prefix = cl, tdir, prefix
        s.sentinel_ino = common.ns_ino(ns)
        s.before = snapshot()
        live = common.cgnetns_state(prefix + "live-")
        assert len(live["cgroups"]) == 1 and len(live["mounts"]) == 1

        def sentinel_lands():
            sentinel.stdin.write(b"\n")
            sentinel.stdin.flush()
            return sentinel.stdout.readline().strip().decode()
        s.sentinel_lands = sentinel_lands
        s.sentinel_state = lambda: common.cgnetns_state(prefix + "live-")
        s.live = live
        assert sentinel_lands() == "net:[%d]" % s.sentinel_ino
        yield s
        # after the test: gc one more time for whatever a failed test left
        sh(GC, check=False, env=repo_env())


def gc():
    r = sh(GC, check=False, env=repo_env())
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


def assert_restored(scene, inos=()):
    after = snapshot()
    diff = differences(scene.before, after, scene.prefix, inos)
    assert not diff, diff
    # the sentinel is intact and its helper calls still land in its namespace
    assert scene.sentinel_state() == scene.live
    assert scene.sentinel_lands() == "net:[%d]" % scene.sentinel_ino


def test_sigkill_at_each_fault_point_then_gc_restores_the_host(scene):
    inos = []
    for point in FAULT_POINTS:
        _, ns = common.add_netns(scene.cl, "cgcrash")
        inos.append(common.ns_ino(ns))
        r = sh(["nsenter", "--net=" + ns, "--"] + RUN
               + ["--unshare-net", "--user", "nobody", "--name", scene.prefix + "f", "--",
                  "/bin/sh", "-c", '"$@" >/dev/null', "sh"] + READLINK,
               check=False, env=repo_env(CGNETNS_FAULT_POINT=point))
        assert r.returncode == -signal.SIGKILL, (point, r.stderr)
        left = common.cgnetns_state(scene.prefix + "f-")
        assert left["records"], (point, left)  # something to collect
        out = gc()
        assert "removed record" in out, out
        assert_restored(scene, inos)


def _build_with_calls_in_flight(scene, ns, name):
    """A build whose user keeps 8 helper calls going (both paths) and a sleeper."""
    loop = ('sleep 300 & echo ready; while :; do for i in 1 2 3 4; do "$@" >/dev/null & '
            'setpriv --no-new-privs -- "$@" >/dev/null & done; wait; done')
    p = subprocess.Popen(["nsenter", "--net=" + ns, "--"] + RUN
                         + ["--unshare-net", "--user", "nobody", "--name", name, "--",
                            "/bin/sh", "-c", loop, "sh"] + READLINK,
                         env=repo_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    return p


def test_sigkill_mid_build_with_helper_calls_in_flight(scene):
    _, ns = common.add_netns(scene.cl, "cgcrash")
    ino = common.ns_ino(ns)
    p = _build_with_calls_in_flight(scene, ns, scene.prefix + "mid")
    try:
        time.sleep(0.5)
        state = common.cgnetns_state(scene.prefix + "mid-")
        (cg,) = state["cgroups"]
        members = cgroups.procs(os.path.join(cgroups.find_cgroup2(), "cgnetns", cg))
        assert len(members) >= 2
        p.kill()
        assert p.wait(10) == -signal.SIGKILL
        # the build outlives its run until gc
        assert common.cgnetns_state(scene.prefix + "mid-")["cgroups"] == {cg}
        out = gc()
        assert "killed" in out or "kill" in out, out
        assert "removed cgroup /cgnetns/%s" % cg in out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
    assert_restored(scene, [ino])


def test_sigkill_during_teardown_of_a_busy_build(scene):
    """Fault point teardown while helper calls are in flight: nothing of it survives gc."""
    _, ns = common.add_netns(scene.cl, "cgcrash")
    ino = common.ns_ino(ns)
    r = sh(["nsenter", "--net=" + ns, "--"] + RUN
           + ["--unshare-net", "--user", "nobody", "--name", scene.prefix + "td", "--",
              "/bin/sh", "-c", 'for i in 1 2 3 4 5 6; do "$@" >/dev/null & done; sleep 300 >/dev/null 2>&1 & '
              'sleep 0.3; exit 0', "sh"] + READLINK,
           check=False, env=repo_env(CGNETNS_FAULT_POINT="teardown"))
    assert r.returncode == -signal.SIGKILL, r.stderr
    state = common.cgnetns_state(scene.prefix + "td-")
    assert state["cgroups"] and state["mounts"]
    gc()
    assert_restored(scene, [ino])


def test_approved_namespace_outlives_its_last_process(scene):
    """The namespace cgnetns-run approved loses its last process (the run itself,
    killed; its ip-netns name deleted): the pin keeps it alive, and helper calls of
    the build, through both paths when the broker is there, still land in it."""
    name, ns = common.add_netns(scene.cl, "cgcrash-orphan")
    broker = common.system_broker_running()
    ino = common.ns_ino(ns)
    p = subprocess.Popen(["nsenter", "--net=" + ns, "--"] + RUN
                         + ["--unshare-net", "--user", "nobody", "--name", scene.prefix + "orph",
                            "--", "/bin/sh", "-c",
                            'echo ready; read x; "$@"; setpriv --no-new-privs -- "$@"; '
                            'readlink /proc/self/ns/net', "sh"] + READLINK,
                         env=repo_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert p.stdout.readline() == b"ready\n"
        sh(["ip", "netns", "del", name])
        # the shell is a child of cgnetns-run: keep it alive when its parent dies
        p.kill()
        p.wait(10)
        assert common.pids_in_netns([ino]) == [], "a process is still in the namespace"
        assert common.cgnetns_state(scene.prefix + "orph-")["mounts"]
        p.stdin.write(b"go\n")
        p.stdin.flush()
        p.stdin.close()
        lines = p.stdout.read().decode().split()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    want = "net:[%d]" % ino
    setuid_out, rest = lines[0], lines[1:]
    assert setuid_out == want, lines
    own = rest[-1]
    assert own != want
    if broker:  # a broker answers: the no_new_privs call lands there too
        assert rest[0] == want, lines
    p.stdout.close()
    p.stderr.close()
    gc()
    assert_restored(scene, [ino])


def _own_system_broker(scene):
    """Start our own cgnetnsd on the system socket (the one the helper's client
    knows), or skip when another one serves it."""
    deadline = time.monotonic() + 10
    while common.system_broker_running() or common.lock_busy():
        if time.monotonic() > deadline:
            # Nothing else runs a broker during the test suite (cgnetns-run's
            # own is switched off by conftest): one here is another test's leak.
            pytest.fail("another cgnetnsd serves %s" % common.SOCKET)
        time.sleep(0.5)
    return common.Daemon(scene.cl, log=os.path.join(scene.tdir, "cgnetnsd-%s.log"
                                                    % secrets.token_hex(3)))


def _client_build(scene, tag, program):
    """A build whose user, on a line from us, runs PROGRAM through the broker
    path (no_new_privs) and prints the client's exit status and its duration."""
    _, ns = common.add_netns(scene.cl, "cgcrash-brk")
    script = ('echo ready; read x; s=$(date +%s%N); setpriv --no-new-privs -- "$@"; rc=$?; '
              'echo "rc=$rc ms=$(( ($(date +%s%N) - s) / 1000000 ))"; read y')
    p = subprocess.Popen(["nsenter", "--net=" + ns, "--"] + RUN
                         + ["--unshare-net", "--user", "nobody", "--name", scene.prefix + tag,
                            "--", "/bin/sh", "-c", script, "sh", HELPER] + program,
                         env=repo_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    scene.cl.add(_end, p)
    assert p.stdout.readline() == b"ready\n", p.stderr.read()
    return p, common.ns_ino(ns)


def _end(p):
    if p.poll() is None:
        try:
            p.stdin.close()
        except OSError:
            pass
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    p.stdout.close()
    p.stderr.close()


def _exact(argv):
    want = b"".join(os.fsencode(a) + b"\0" for a in argv)
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    if f.read() == want:
                        found.append(int(d))
            except OSError:
                pass
    return found


def _client_result(p, timeout=20):
    import select
    r, _, _ = select.select([p.stdout], [], [], timeout)
    assert r, "the client hangs: no exit within %ds of the broker's death" % timeout
    line = p.stdout.readline().decode().split()
    return dict(kv.split("=") for kv in line)


def test_broker_killed_mid_request(scene):
    """Decided behaviour: when the broker dies, the client exits promptly with 125
    and one line ("the broker closed the connection without an answer"), never
    hangs; a program the broker had already started stays inside the build's
    cgroup (it joined it) and goes with the build's teardown."""
    daemon = _own_system_broker(scene)
    p, ino = _client_build(scene, "brk", [PROBE, "/proc/self/ns/net"])
    # the broker path must work at all, else there is nothing to kill mid-request
    p.stdin.write(b"go\n")
    p.stdin.flush()
    first = p.stdout.readline().decode().strip()
    if first != "net:[%d]" % ino:
        p.stdin.write(b"end\n")
        p.stdin.flush()
        pytest.fail("the installed cgnetns-exec does not reach the broker: %r" % first)
    assert _client_result(p)["rc"] == "0"
    p.stdin.write(b"end\n")
    p.stdin.flush()
    assert p.wait(30) == 0

    # 1: before any answer (the broker stopped, then killed)
    p, ino = _client_build(scene, "brk", [PROBE, "/proc/self/ns/net"])
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        p.stdin.write(b"go\n")
        p.stdin.flush()
        time.sleep(0.5)   # the client connects (backlog) and sends its request
    finally:
        os.kill(daemon.pid, signal.SIGKILL)
        os.kill(daemon.pid, signal.SIGCONT) if daemon.alive() else None
    res = _client_result(p)
    assert res["rc"] == "125", res
    p.stdin.write(b"end\n")
    p.stdin.flush()
    p.wait(30)
    err = p.stderr.read()
    assert b"cgnetns-exec: the broker closed the connection without an answer" in err, err
    daemon.proc.wait(10)
    daemon.stop()

    # 2: after "start": the program runs when the broker dies
    daemon = _own_system_broker(scene)
    marker = "4242.%s" % secrets.randbelow(10 ** 6)
    p, ino = _client_build(scene, "brk2", ["/usr/bin/sleep", marker])
    p.stdin.write(b"go\n")
    p.stdin.flush()
    deadline = time.monotonic() + 20
    while not _exact(["/usr/bin/sleep", marker]):
        assert time.monotonic() < deadline, "the program never started"
        time.sleep(0.05)
    (prog,) = _exact(["/usr/bin/sleep", marker])
    assert os.readlink("/proc/%d/ns/net" % prog) == "net:[%d]" % ino
    with open("/proc/%d/cgroup" % prog) as f:
        assert scene.prefix + "brk2-" in f.read()
    os.kill(daemon.pid, signal.SIGKILL)
    res = _client_result(p)
    assert res["rc"] == "125" and int(res["ms"]) < 10000, res
    daemon.proc.wait(10)
    daemon.stop()
    p.stdin.write(b"end\n")
    p.stdin.flush()
    assert p.wait(30) == 0
    assert _exact(["/usr/bin/sleep", marker]) == []   # teardown took it
    assert_restored(scene, [ino])
