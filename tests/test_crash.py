"""Crash recovery (issue 8, THREATS.md 18): cgnetns-run killed with SIGKILL at
each fault point and mid-build (also with helper calls in flight), then
cgnetns-gc, then the host compared against a snapshot taken before: cgroups
under the cgnetns subtree, mounts under /run/cgnetns, pins, records, processes.
A live build started before the crashes (the sentinel) is never touched by gc
and its helper calls keep landing in its namespace.  Also: the broker killed
mid-request (before its answer, and after "ok", when the program's sockets
are the supervisor's business and no longer the broker's), and the approved
namespace's last process gone while the build runs (both paths: the broker
path observed by a TCP connect reaching a server in the approved namespace,
since its program stays in the build's own).  The broker tests run their own
cgnetnsd on the system socket, the one the installed cgnetns-exec asks,
waiting up to 20 s for another broker to leave it.

Other suites may run builds on this host at the same time: the comparison is
of the whole snapshot, but a difference only counts when it is one of ours
(names start with this module's unique prefix, or processes sit in our
cgroups or namespaces)."""

import os
import secrets
import select
import shlex
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stress import common  # noqa: E402
from stress.common import GC, HELPER, PROBE, RUN, repo_env, sh  # noqa: E402

from cgnetns import cgroups, namespaces  # noqa: E402
from conftest import fault_run  # noqa: E402

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
    """A unique name prefix, a cleanup stack, /usr/bin/readlink and the
    netprobe allow-listed, and a sentinel: a live build (own namespace) that
    must survive every gc."""
    with common.Cleanup() as cl:
        tdir = common.make_tdir(cl, "crash")
        common.allow_probe(cl, (PROBE,))
        netprobe = common.build_netprobe(cl, tdir)
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
        s.cl, s.tdir, s.prefix, s.netprobe = cl, tdir, prefix, netprobe
        s.out = os.path.join(tdir, "out")
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
        r = sh(["nsenter", "--net=" + ns, "--"] + fault_run(point)
               + ["--unshare-net", "--user", "nobody", "--name", scene.prefix + "f", "--",
                  "/bin/sh", "-c", '"$@" >/dev/null', "sh"] + READLINK,
               check=False, env=repo_env())
        assert r.returncode == -signal.SIGKILL, (point, r.stderr)
        left = common.cgnetns_state(scene.prefix + "f-")
        assert left["records"], (point, left)  # something to collect
        out = gc()
        assert "removed record" in out, out
        assert_restored(scene, inos)


def _build_with_calls_in_flight(scene, ns, name):
    """A build whose user keeps up to 8 helper calls going (both paths), batch
    after batch, and a sleeper (a grandchild: the batches' wait leaves it)."""
    loop = ('(sleep 300 &); echo ready; while :; do for i in 1 2 3 4; do "$@" >/dev/null & '
            'setpriv --no-new-privs -- "$@" >/dev/null 2>&1 & done; wait; done')
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
        state = common.cgnetns_state(scene.prefix + "mid-")
        (cg,) = state["cgroups"]
        path = os.path.join(cgroups.find_cgroup2(), "cgnetns", cg)
        deadline = time.monotonic() + 20
        while len(cgroups.procs(path)) < 4:   # the shell, the sleeper, calls in flight
            assert time.monotonic() < deadline, cgroups.procs(path)
            time.sleep(0.01)
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
    r = sh(["nsenter", "--net=" + ns, "--"] + fault_run("teardown")
           + ["--unshare-net", "--user", "nobody", "--name", scene.prefix + "td", "--",
              "/bin/sh", "-c", 'for i in 1 2 3 4 5 6; do "$@" >/dev/null & done; '
              'sleep 300 >/dev/null 2>&1 & exit 0', "sh"] + READLINK,
           check=False, env=repo_env())
    assert r.returncode == -signal.SIGKILL, r.stderr
    state = common.cgnetns_state(scene.prefix + "td-")
    assert state["cgroups"] and state["mounts"]
    gc()
    assert_restored(scene, [ino])


# ---------------------------------------------------------------------------
# the broker path

def _own_system_broker(scene):
    """Our own cgnetnsd on the system socket (the one the installed front
    asks), once no other broker serves it (other tests may run one briefly):
    up to 20 s, then fail."""
    try:
        common.wait_system_socket_free(20)
    except RuntimeError as e:
        pytest.fail(str(e))
    return common.Daemon(scene.cl, tdir=scene.tdir)


def _report(scene, tag):
    return os.path.join(scene.out, "%s-%s.json" % (tag, secrets.token_hex(4)))


def _wait_for(cond, what, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.01)


def _supervisors_in(cgroup_rel):
    """PIDs of `cgnetns-helper --supervise` processes in the cgroup (0::
    path) CGROUP_REL or below it."""
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                if b"--supervise" not in f.read():
                    continue
            with open("/proc/%s/cgroup" % d) as f:
                cg = [l[3:].strip() for l in f if l.startswith("0::")]
        except OSError:
            continue
        if cg and (cg[0] == cgroup_rel or cg[0].startswith(cgroup_rel + "/")):
            found.append(int(d))
    return found


def test_approved_namespace_outlives_its_last_process(scene):
    """The namespace cgnetns-run approved loses its last process (the run itself,
    killed; its ip-netns name deleted): the pin keeps it alive, and helper calls of
    the build still reach it through both paths.  The set-user-ID path's program
    runs in it (readlink); the broker path's program stays in the build's own
    namespace and its socket, minted by the supervisor, reaches a token server
    that we start in the approved namespace through the pin, after the last
    process left it (so that nothing but the pin held it until then)."""
    broker = _own_system_broker(scene)
    name, ns = common.add_netns(scene.cl, "cgcrash-orphan")
    ino = common.ns_ino(ns)
    report = _report(scene, "orphan")
    q = " ".join
    script = ('echo ready; read port; %s; '
              'setpriv --no-new-privs -- %s --connect="$port"; echo "rc=$?"; '
              'readlink /proc/self/ns/net'
              % (q(map(shlex.quote, READLINK)),
                 q(map(shlex.quote, [HELPER, scene.netprobe, "report", report]))))
    p = subprocess.Popen(["nsenter", "--net=" + ns, "--"] + RUN
                         + ["--unshare-net", "--user", "nobody", "--name", scene.prefix + "orph",
                            "--", "/bin/sh", "-c", script],
                         env=repo_env(CGNETNS_RUN_NO_BROKER="1"), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert p.stdout.readline() == b"ready\n", p.stderr.read()
        sh(["ip", "netns", "del", name])
        # the shell is a child of cgnetns-run: keep it alive when its parent dies
        p.kill()
        p.wait(10)
        assert common.pids_in_netns([ino]) == [], "a process is still in the namespace"
        (pin,) = common.cgnetns_state(scene.prefix + "orph-")["mounts"]
        assert common.ns_ino(pin) == ino
        with common.Cleanup() as local:
            token = "ORPHAN-" + secrets.token_hex(4)
            port = common.TokenServers(local).add(token, pin)
            p.stdin.write(b"%d\n" % port)
            p.stdin.flush()
            p.stdin.close()
            lines = p.stdout.read().decode().split()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        err = p.stderr.read()
        p.stderr.close()
    want = "net:[%d]" % ino
    assert len(lines) == 3, (lines, err)
    setuid_out, rc, own = lines
    assert setuid_out == want, lines
    assert rc == "rc=0", (lines, err)
    assert own != want
    got = common.read_json(report)
    assert got is not None, err
    assert "net:[%d]" % got["netns"][1] == own, "the broker path's program left its namespace"
    assert got["connect"] == "token:" + token, got["connect"]
    assert broker.alive()
    gc()
    assert_restored(scene, [ino])


def _client_build(scene, tag, argv):
    """A build (its own parent namespace, with a token server there) whose
    user, on a line from us, runs ARGV (after HELPER; PORT in it is the
    server's port) under no_new_privs and prints the exit status; then waits
    for another line.  Returns (process, approved namespace inode, token,
    the client's command line)."""
    _, ns = common.add_netns(scene.cl, "cgcrash-brk")
    token = "BRK-" + secrets.token_hex(4)
    port = common.TokenServers(scene.cl).add(token, ns)
    argv = [a.replace("PORT", str(port)) for a in argv]
    script = 'echo ready; read x; setpriv --no-new-privs -- "$@"; echo "rc=$?"; read y'
    p = subprocess.Popen(["nsenter", "--net=" + ns, "--"] + RUN
                         + ["--unshare-net", "--user", "nobody", "--name", scene.prefix + tag,
                            "--", "/bin/sh", "-c", script, "sh", HELPER] + argv,
                         env=repo_env(CGNETNS_RUN_NO_BROKER="1"), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    scene.cl.add(_end, p)
    assert p.stdout.readline() == b"ready\n", p.stderr.read()
    return p, common.ns_ino(ns), token, [HELPER] + argv


def _say(p, line):
    p.stdin.write(line + b"\n")
    p.stdin.flush()


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
    for f in (p.stdout, p.stderr):
        if not f.closed:
            f.close()


def _exact(argv):
    """PIDs whose command line is ARGV."""
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


def _rc_line(p, timeout=20):
    r, _, _ = select.select([p.stdout], [], [], timeout)
    assert r, "the client hangs: no exit within %ds" % timeout
    return p.stdout.readline().decode().strip()


RECV_SYSCALLS = {"x86_64": (45, 47), "aarch64": (207, 212)}   # recvfrom, recvmsg


def _blocked_in_recv(pid):
    try:
        with open("/proc/%d/syscall" % pid) as f:
            nr = f.read().split()[0]
    except (OSError, IndexError):
        return False
    return nr.isdigit() and int(nr) in RECV_SYSCALLS[os.uname().machine]


def test_broker_killed_mid_request(scene):
    """Decided behaviour.  Killed before it answered (stopped with the
    client's request in its backlog, then SIGKILL): the client exits 125
    promptly with one line, "the broker closed the connection without an
    answer (see its log)", and nothing runs.  Killed after "ok": the program
    is unaffected, and even its next socket still reaches the approved
    namespace, because the supervisor that mints it is a process of its own
    in the build, not the broker's; it ends with the program."""
    # 1: before any answer
    daemon = _own_system_broker(scene)
    report = _report(scene, "before")
    p, ino, token, client_argv = _client_build(scene, "brk", [scene.netprobe, "report", report,
                                                              "--connect=PORT"])
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        _say(p, b"go")

        def client():
            pids = _exact(client_argv)
            return pids and _blocked_in_recv(pids[0])
        _wait_for(client, "the client to wait for the broker's answer")
        t = time.monotonic()
        daemon.kill()      # SIGKILL reaches a stopped process
    finally:
        if daemon.alive():
            os.kill(daemon.pid, signal.SIGKILL)
            os.kill(daemon.pid, signal.SIGCONT)
    rc = _rc_line(p, timeout=5)
    took = time.monotonic() - t
    assert rc == "rc=125", rc
    assert took < 2, "the client took %.1f s to notice the broker's death" % took
    _say(p, b"end")
    assert p.wait(30) == 0
    assert p.stderr.read() == (b"cgnetns-exec: the broker closed the connection without an "
                               b"answer (see its log)\n")
    assert not os.path.exists(report), "the program ran"
    daemon.stop()      # its socket file, left behind by the kill
    assert not os.path.exists(common.SOCKET) or common.listening_on(common.SOCKET)

    # 2: after "ok": the program runs (held between two connects) when the broker dies
    daemon = _own_system_broker(scene)
    first, second = _report(scene, "first"), _report(scene, "second")
    p, ino, token, _ = _client_build(
        scene, "brk2", [scene.netprobe, "report", first, "--connect=PORT", "--exec", "/bin/sh",
                        "-c", 'read z; exec "$@"', "sh",
                        scene.netprobe, "report", second, "--connect=PORT"])
    _say(p, b"go")
    got = _wait_for(lambda: common.read_json(first), "the program's first report")
    assert got["connect"] == "token:" + token, got
    own = got["netns"][1]
    assert own != ino
    cg = "/cgnetns/" + next(iter(common.cgnetns_state(scene.prefix + "brk2-")["cgroups"]))
    (sup,) = _wait_for(lambda: _supervisors_in(cg), "the supervisor")
    daemon.kill()
    assert os.path.exists("/proc/%d" % sup), "the supervisor died with the broker"
    _say(p, b"next")            # the program makes its next socket
    assert _rc_line(p) == "rc=0"
    got = common.read_json(second)
    assert got is not None, p.stderr.read()
    assert got["connect"] == "token:" + token, "the next socket missed the approved namespace"
    assert got["netns"][1] == own and got["pid"] == common.read_json(first)["pid"]
    _wait_for(lambda: not os.path.exists("/proc/%d" % sup), "the supervisor to end")
    _say(p, b"end")
    assert p.wait(30) == 0
    assert p.stderr.read() == b""
    daemon.stop()
    assert_restored(scene, [ino])

