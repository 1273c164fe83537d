"""Part 6 (sandbox): distcc inside Gentoo's REAL sandbox, as Portage runs a
compiling phase by default (FEATURES="sandbox userpriv ...").

The sandbox is ``/usr/bin/sandbox`` where the host has it (Gentoo), else
sandbox 2.46 built from ``<repo>/../shared/vendor/sandbox-2.46.tar.gz`` (or
``$CGNETNS_SANDBOX_SRC``) into ``/var/cache/cgnetns-tests/sandbox-<sha12>``:
testbed/sandbox.py, the cache, key and lock the tests use too, so
whichever runs first builds it and the other uses it.  It sets no_new_privs and preloads libsandbox.so into every dynamic
program.  It runs as the build user (nobody) with SANDBOX_WRITE naming only
the build's directories.  Every compile goes to the distccd of
testbed.topology (another network namespace over a veth pair; local fallback
off, COMPILE_OK lines counted).  Two ways, alternated round by round:

* baseline: network-sandbox off: the sandbox in the parent network
  namespace, ``distcc gcc`` plainly, no cgnetns;
* cgnetns (broker path): the sandbox in a build made with
  cgnetns.build.Build (its own network namespace, only lo), calling
  ``/usr/local/lib/cgnetns/bin/distcc gcc`` (the front as a masquerade, as
  contrib/portage does), with a cgnetnsd running: under no_new_privs the
  front is the broker's client, and distcc's sockets are made in the parent
  namespace by the per-call supervisor.

Figures (spawnloop inside the sandbox, so the sandbox's own start-up is
outside them):

* one ``distcc gcc -O2 -c`` at a time, in loops;
* ``make -j4`` of the 120 files of part 4;
* ``cgnetns-exec true`` over ``true`` on the broker path (in the sandbox)
  against the same on the set-user-ID path (in the same build, no sandbox,
  where privilege can be gained), called alternately with true;
* the client's system calls from the front's execve to the program's
  (bench/rssprobe.c, ptrace, inside the sandbox: libsandbox's start-up in
  the front is the client's too).
"""

import os
import shutil
import subprocess
import tempfile
import time

from testbed import sandbox as sandbox_cache
from testbed.topology import Topology, TopologyError

from .common import (ENV, FRONT, MASQ_DISTCC, NO_BROKER, TRUE, BUILD_USER,
                     BenchError, BrokerGone, Cleanup, Row, allow_listed, broker_gone,
                     check_broker, check_join, child_env, communicate, exec_probe, last_line,
                     loop, median, new_build, paired_ratio, start_in_build, start_outside)
from .endtoend import DISTCC, JOBS, NFILES, clean_objects, write_project

PART = 6
NAME = "sandbox"
SYSCALL_TARGET = 60

# -- Gentoo's sandbox: found, or built once into the tests' cache -------------

def get_sandbox(sess):
    """The sandbox binary to run, and a description for the notes
    (testbed/sandbox.py: the cache the tests use too)."""
    try:
        if not os.access(sandbox_cache.SYSTEM_SANDBOX, os.X_OK):
            sess.log("sandbox: finding or building Gentoo's sandbox (a build takes about 15 s, "
                     "once)")
        sb = sandbox_cache.get_sandbox()
    except sandbox_cache.SetupError as e:
        raise BenchError("Gentoo's sandbox: %s" % e) from None
    return sb.binary, "sandbox %s, %s" % (_version(sb.binary), sb.how)


def _version(binary):
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                             timeout=10).stdout
        return next(l.split()[-1] for l in out.splitlines() if l.strip().startswith("version"))
    except (OSError, StopIteration, subprocess.TimeoutExpired):
        return "?"


# -- the part ------------------------------------------------------------------

def run(sess):
    reps = sess.pick(14, 2)          # make -j4 builds per way
    n_one = sess.pick(8, 4)          # single compiles per way and round
    n_true = sess.pick(100, 40)      # calls per command and round (true rows)
    rounds = sess.pick(6, 2)
    sandbox, how = get_sandbox(sess)
    sess.note("sandbox: %s." % how)
    with Cleanup() as stack:
        stack.enter_context(allow_listed([DISTCC, TRUE]))
        work = tempfile.mkdtemp(prefix="cgnetns-bench-sandbox.")
        stack.callback(shutil.rmtree, work, True)
        os.chmod(work, 0o755)
        uid, gid = sess.nobody.pw_uid, sess.nobody.pw_gid
        d = {}
        for name in ("src", "one", "distcc", "tmp", "log"):
            d[name] = os.path.join(work, name)
            os.mkdir(d[name], 0o755)
            os.chown(d[name], uid, gid)
        write_project(d["src"], NFILES, uid, gid)
        topo = Topology(client_user=BUILD_USER, distcc_jobs=JOBS)
        stack.callback(topo.stop)
        try:
            topo.start()
        except TopologyError as e:
            raise BenchError("topology: %s" % e) from None
        sandbox_log = os.path.join(d["log"], "sandbox.log")
        # What a phase's environment has: SANDBOX_WRITE naming only the
        # build's directories, the sandbox log, TMPDIR; distcc: remote or fail.
        env = child_env(HOME=d["src"], LANG="C", TMPDIR=d["tmp"], SANDBOX_LOG=sandbox_log,
                        SANDBOX_WRITE=":".join([d["src"], d["one"], d["distcc"], d["tmp"]]),
                        **topo.distcc_env(d["distcc"]))
        sess.distcc_dirs.append(d["distcc"])

        b = new_build(stack, "bench-sandbox")

        def outside(argv):           # network-sandbox off: the parent namespace
            return start_outside([sandbox] + argv, user=BUILD_USER, env=env)

        def in_build(argv):          # the build's own namespace (lo only)
            return start_in_build(b.cgroup_path, [sandbox] + argv, user=BUILD_USER, env=env)

        def in_build_plain(argv):    # the same build, no sandbox (set-user-ID path)
            return start_in_build(b.cgroup_path, argv, user=BUILD_USER, env=env)

        if not os.path.exists(MASQ_DISTCC):
            raise BenchError("%s is not installed (make install)" % MASQ_DISTCC)
        join_why = check_join(sess, in_build_plain)
        if join_why:
            raise BenchError(join_why)
        broker = sess.broker
        why = broker.start() or check_broker(sess, in_build_plain)
        if why:
            raise BenchError(why)
        check_sandboxed(sess, in_build, outside)

        # A control: in the build, distcc without cgnetns reaches nothing.
        # (Its own DISTCC_DIR: distcc remembers a failed host and backs off.)
        ctl_dir = os.path.join(d["tmp"], "distcc-control")
        os.mkdir(ctl_dir, 0o755)
        os.chown(ctl_dir, uid, gid)
        ctl = start_in_build(b.cgroup_path, [sandbox, DISTCC, "gcc", "-O2", "-c",
                                             os.path.join(d["src"], "u000.c"), "-o",
                                             os.path.join(d["one"], "u000.o")],
                             user=BUILD_USER, env=dict(env, DISTCC_DIR=ctl_dir))
        communicate(ctl, timeout=120, what="control")
        if ctl.returncode == 0:
            raise BenchError("control: distcc reached distccd from the build without cgnetns")

        via = {"base": ([DISTCC], outside), "cgnetns": ([MASQ_DISTCC], in_build)}
        order = ["base", "cgnetns"]

        # One compile at a time.
        one = {k: [] for k in via}
        before = topo.count_compile_ok()
        for r in range(rounds):
            for k in order[r % 2:] + order[:r % 2]:
                cc, start = via[k]
                one[k] += loop(sess, start, cc + ["gcc", "-O2", "-c",
                                                  os.path.join(d["src"], "u000.c"), "-o",
                                                  os.path.join(d["one"], "u000.o")],
                               n_one, warm=1, what="sandbox: one compile (%s)" % k)
        remote = topo.count_compile_ok() - before
        expect = sum(len(v) for v in one.values()) + rounds * 2      # with warm-ups
        if remote < expect:       # more when a loop was taken again
            raise BenchError("sandbox: single compiles: %d of %d compiled remotely" % (
                remote, expect))

        # make -j4 of the project.
        def build(k):
            for attempt in range(4):
                try:
                    return build_once(k)
                except BrokerGone:
                    broker_gone(sess)
            raise BenchError("sandbox: make (%s): the broker kept going away" % k)

        def build_once(k):
            cc, start = via[k]
            clean_objects(d["src"])
            before = topo.count_compile_ok()
            t0 = time.perf_counter()
            proc = start([sess.tool("spawnloop"), "-n", "1", "-w", "0", "--", "/usr/bin/make",
                          "-C", d["src"], "-j%d" % JOBS, "CC=%s gcc" % cc[0]])
            out, err = communicate(proc, timeout=600, what="sandbox: make (%s)" % k)
            whole = time.perf_counter() - t0
            if NO_BROKER.encode() in err:
                raise BrokerGone("sandbox: make (%s)" % k)
            if proc.returncode != 0 or not out.split():
                raise BenchError("sandbox: make (%s): exit %d: %s" % (
                    k, proc.returncode, last_line(err)))
            ns, status = out.split()[:2]
            if os.waitstatus_to_exitcode(int(status)) != 0:
                raise BenchError("sandbox: make (%s) exit %d: %s" % (
                    k, os.waitstatus_to_exitcode(int(status)), last_line(err)))
            remote = topo.count_compile_ok() - before
            if remote != NFILES:
                raise BenchError("sandbox: make (%s): %d of %d objects compiled remotely" % (
                    k, remote, NFILES))
            if b"ACCESS VIOLATION" in err:
                raise BenchError("sandbox: make (%s): access violation: %s" % (k, last_line(err)))
            return int(ns) / 1e9, whole

        sess.log("sandbox: warm-up build")
        build("base")
        builds = {k: [] for k in via}
        for r in range(reps):
            for k in order[r % 2:] + order[:r % 2]:
                sess.log("sandbox: make round %d/%d: %s" % (r + 1, reps, k))
                builds[k].append(build(k))
        sess.raw["sandbox builds (make s, whole s)"] = builds

        # cgnetns-exec true over true: broker path (sandbox) and set-user-ID
        # path (same build, no sandbox), true alternating with it call by call,
        # and with `env true`: one more dynamic program and nothing else, the
        # least any front in front of the program costs where it runs.
        spawn = [sess.tool("spawnloop"), "-n", str(n_true), "-w", "3", "--", TRUE, ":::",
                 FRONT, TRUE, ":::", ENV, TRUE]
        over = {"broker": ([], [], []), "setuid": ([], [], [])}
        places = {"broker": in_build, "setuid": in_build_plain}
        for r in range(rounds):
            for k in ["broker", "setuid"][r % 2:] + ["broker", "setuid"][:r % 2]:
                for i, got in enumerate(parse_calls(sess, places[k], spawn, n_true, k)):
                    over[k][i].extend(got)

        # The client's system calls, inside the sandbox (rssprobe runs as the
        # build user there: no -u).
        img = exec_probe(sess, in_build, [FRONT, TRUE], 10, user=None, what="sandbox: probe")
        img_true = exec_probe(sess, in_build, [TRUE], 10, user=None, what="sandbox: true")
        img_plain = exec_probe(sess, in_build_plain, [TRUE], 10, user=None, what="true")
        if os.path.exists(sandbox_log):
            with open(sandbox_log, errors="replace") as f:
                raise BenchError("sandbox: the sandbox logged access violations: %s" %
                                 last_line(f.read()))
    sess.raw["sandbox images (syscalls, rss KiB, start-up)"] = {
        "front true": img, "true": img_true, "true, no sandbox": img_plain}

    rows = []
    t1 = {k: median([s[0] for s in v]) * 1e3 for k, v in one.items()}
    rows.append(Row(PART, "sandbox: one distcc compile at a time: baseline (no cgnetns)",
                    t1["base"], n=len(one["base"])))
    rows.append(Row(PART, "sandbox: one distcc compile at a time: cgnetns broker path",
                    t1["cgnetns"], n=len(one["cgnetns"]), baseline="baseline",
                    baseline_value=t1["base"], target="<= 1.05x",
                    met=t1["cgnetns"] / t1["base"] <= 1.05))
    mk = {k: median([x[0] for x in v]) for k, v in builds.items()}
    whole = {k: median([x[1] for x in v]) for k, v in builds.items()}
    what = "sandbox: make -j%d, %d files: " % (JOBS, NFILES)
    rows.append(Row(PART, what + "baseline (no cgnetns)", mk["base"], unit="s", n=reps))
    ratio = paired_ratio([x[0] for x in builds["base"]], [x[0] for x in builds["cgnetns"]])
    rows.append(Row(PART, what + "cgnetns broker path", mk["cgnetns"], unit="s", n=reps,
                    baseline="baseline", baseline_value=mk["base"], ratio=ratio,
                    target="<= 1.03x", met=ratio <= 1.03))
    rows.append(Row(PART, "  the same, whole sandbox command: cgnetns broker path",
                    whole["cgnetns"], unit="s", n=reps, baseline="baseline",
                    baseline_value=whole["base"],
                    ratio=paired_ratio([x[1] for x in builds["base"]],
                                       [x[1] for x in builds["cgnetns"]])))
    t = {k: tuple(median(x) * 1e3 for x in v) for k, v in over.items()}
    added = {k: c - a for k, (a, c, _) in t.items()}
    extra = {k: e - a for k, (a, _, e) in t.items()}
    rows.append(Row(PART, "cgnetns-exec over true: set-user-ID path (no sandbox)",
                    added["setuid"], n=len(over["setuid"][1])))
    rows.append(Row(PART, "cgnetns-exec over true: broker path (in the sandbox)",
                    added["broker"], n=len(over["broker"][1]), baseline="set-user-ID path",
                    baseline_value=added["setuid"], target="<= +1 ms",
                    met=added["broker"] - added["setuid"] <= 1.0))
    rows.append(Row(PART, "  one more dynamic program (env true) over true: no sandbox",
                    extra["setuid"], n=len(over["setuid"][2])))
    rows.append(Row(PART, "  one more dynamic program (env true) over true: in the sandbox",
                    extra["broker"], n=len(over["broker"][2]), baseline="no sandbox",
                    baseline_value=extra["setuid"]))
    # The target is on the client's own work, from the front's main() to
    # the program's execve (issue 12: "the client's work before the exec",
    # two ptrace stops a call where the front is traced; it is not here).
    # What comes before main() is ld.so and libsandbox's constructor, which
    # every dynamic program in the sandbox pays, plain distcc included.
    client = sum(x[0] for x in img[:-1])
    start_up = img[0][2]
    rows.append(Row(PART, "sandbox: syscalls of the broker client, front's main() to true's "
                    "execve", client - start_up, unit="calls", n=10,
                    target="<= %d" % SYSCALL_TARGET, met=client - start_up <= SYSCALL_TARGET))
    rows.append(Row(PART, "  and before main(): ld.so, libsandbox's constructor", start_up,
                    unit="calls", n=10))
    sess.note("sandbox: per call, true alone takes %.3f ms in the sandbox and %.3f ms without "
              "it; cgnetns-exec true %.3f ms (broker path, sandbox) and %.3f ms (set-user-ID "
              "path)." % (t["broker"][0], t["setuid"][0], t["broker"][1], t["setuid"][1]))
    sess.note("sandbox: the front the broker path needs is one more dynamic program, which "
              "costs %.3f ms in the sandbox (env true over true: ld.so, libsandbox's constructor, "
              "its execve wrapper) against %.3f ms without it; so the broker's own share of the "
              "call is %.3f ms, and the set-user-ID path's whole share %.3f ms." % (
                  extra["broker"], extra["setuid"], added["broker"] - extra["broker"],
                  added["setuid"]))
    sess.note("sandbox: system calls: the front as broker client makes %d in the sandbox, "
              "%d of them before its main() (ld.so, and libsandbox's constructor: true makes %d "
              "in the sandbox and %d without it); its resident set %d KiB." % (
                  client, start_up, img_true[0][0], img_plain[0][0], img[0][1]))
    sess.note("sandbox: every compile, single or in make, ran on the remote distccd (COMPILE_OK "
              "lines counted), distcc alone reached nothing from the build, and no access "
              "violation was reported.")
    sess.add(*rows)


def parse_calls(sess, start, spawn, n, what):
    """Run SPAWN (a spawnloop over true ::: cgnetns-exec true ::: env true)
    through START; return the three lists of seconds."""
    for attempt in range(4):
        try:
            return _parse_calls(sess, start, spawn, n, what)
        except BrokerGone:
            broker_gone(sess)
    raise BenchError("sandbox: true (%s): the broker kept going away" % what)


def _parse_calls(sess, start, spawn, n, what):
    proc = start(spawn)
    out, err = communicate(proc, what="sandbox: true (%s)" % what)
    if proc.returncode != 0:
        raise BenchError("sandbox: true (%s): spawnloop exit %d: %s" % (
            what, proc.returncode, last_line(err)))
    got = ([], [], [])
    for line in out.decode().split("\n"):
        if line.strip():
            ns, status, _, idx = line.split()
            if os.waitstatus_to_exitcode(int(status)) != 0:
                if NO_BROKER.encode() in err:
                    raise BrokerGone(what)
                raise BenchError("sandbox: true (%s): a call exited with %d: %s" % (
                    what, os.waitstatus_to_exitcode(int(status)), last_line(err)))
            got[int(idx)].append(int(ns) / 1e9)
    if any(len(g) != n for g in got):
        raise BenchError("sandbox: true (%s): %s calls" % (what, ", ".join(
            str(len(g)) for g in got)))
    return got


PROBE = """\
exe=$(readlink /proc/self/exe)
grep -q '/libsandbox\\.so$' /proc/self/maps && echo libsandbox=1
sed -n 's/^\\(NoNewPrivs\\|TracerPid\\):[[:space:]]*/\\1=/p' /proc/self/status
ip -o link | cut -d: -f2 | tr -d ' ' | sed 's/^/link=/'
"""


def check_sandboxed(sess, in_build, outside):
    """The real sandbox is in force in both places: libsandbox loaded,
    no_new_privs, not traced; the build has only lo."""
    for name, start in (("build", in_build), ("parent", outside)):
        proc = start(["/bin/sh", "-c", PROBE])
        out, err = communicate(proc, timeout=60, what="sandbox probe")
        text = out.decode(errors="replace")
        got = dict(l.split("=", 1) for l in text.split() if "=" in l)
        links = [l[5:] for l in text.split() if l.startswith("link=")]
        if proc.returncode != 0 or got.get("libsandbox") != "1" or \
                got.get("NoNewPrivs") != "1" or got.get("TracerPid") != "0":
            raise BenchError("sandbox probe (%s): not in the sandbox as expected: %s %s" % (
                name, text.strip(), last_line(err)))
        if name == "build" and links != ["lo"]:
            raise BenchError("sandbox probe: the build has links %s, expected only lo" % links)
