"""Part 4 (distcc): a whole distcc build, end to end.

A generated C project of 120 files (16 small functions each, so that a
compile takes tens of milliseconds, as real code does) is built with
``make -j4`` and distcc against the distccd of testbed.topology (a "remote
host" in its own network namespace, reached over a veth pair), with local
fallback off: every object is compiled remotely, which distccd's log proves
(COMPILE_OK lines are counted after every build).  Three ways:

* direct: make runs as the build user in the parent namespace, CC="distcc gcc";
* set-user-ID path: ``cgnetns-run --unshare-net --user nobody -- make ...``
  with CC="cgnetns-exec distcc gcc": the build has no network; the front
  execs the set-user-ID helper, which puts each distcc call back into the
  parent namespace;
* broker path: the same under ``setpriv --no-new-privs`` (Gentoo's sandbox
  sets it), where the front is cgnetnsd's client: distcc stays in the
  build's namespace and its sockets are made in the parent one by a
  per-call supervisor.  (Part 6 does this inside Gentoo's real sandbox.)

The figure is make's own wall time, measured inside the build by spawnloop
(so cgnetns-run's start-up, which part 5 measures, is not in it); the whole
command's time, start-up and teardown included, is in a second row.  Then
one file is compiled at a time, in loops, the same three ways: the cost per
distcc call without make's parallelism around it.
"""

import os
import shutil
import tempfile
import time

from testbed.topology import Topology, TopologyError

from .common import (FRONT, NO_BROKER, BUILD_USER, BenchError, BrokerGone, Cleanup, Row,
                     allow_listed, broker_gone, check_broker, check_join, child_env, command,
                     communicate, last_line, loop, median, new_build, paired_ratio,
                     start_in_build, start_outside)

PART = 4
NAME = "distcc"
NFILES = 120
JOBS = 4
DISTCC = os.path.realpath("/usr/bin/distcc")


def write_project(path, nfiles, uid, gid):
    """NFILES C files of 16 small functions each, a header and a Makefile."""
    os.makedirs(path, exist_ok=True)
    files = {"bench.h": "#include <stddef.h>\n#include <string.h>\n#include <stdio.h>\n"
                        "struct acc { long v[8]; size_t n; };\n"}
    for i in range(nfiles):
        body = ['#include "bench.h"']
        for k in range(16):
            body.append(
                "static long f%d_%d(struct acc *a, long x)\n{\n"
                "    for (int j = 0; j < 8; j++) {\n"
                "        a->v[j] = a->v[j] * %d + (x ^ j) - %d;\n"
                "        if (a->v[j] %% %d == 0) a->v[j] += (long)strlen(\"f%d_%d\");\n"
                "    }\n"
                "    switch (x & 7) { case 0: x += %d; break; case 1: x -= %d; break;\n"
                "    case 2: x *= %d; break; default: x ^= %d; }\n"
                "    a->n++;\n    return x + a->v[%d];\n}\n"
                % (i, k, k + 3, i, k + 2, i, k, k, i, k + 1, i + k, k % 8))
        body.append("long unit%d(long x)\n{\n    struct acc a = {{0}, 0};\n%s"
                    "    char buf[64];\n    snprintf(buf, sizeof buf, \"%%ld\", x);\n"
                    "    return x + (long)a.n + buf[0];\n}\n"
                    % (i, "".join("    x = f%d_%d(&a, x);\n" % (i, k) for k in range(16))))
        files["u%03d.c" % i] = "\n".join(body)
    objs = " ".join("u%03d.o" % i for i in range(nfiles))
    files["Makefile"] = (
        "CC ?= cc\nCFLAGS = -O2\nOBJS = %s\n\nlibbench.a: $(OBJS)\n\tar rcs $@ $(OBJS)\n\n"
        "%%.o: %%.c bench.h\n\t$(CC) $(CFLAGS) -c $< -o $@\n" % objs)
    for name, text in files.items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
    os.chown(path, uid, gid)


def clean_objects(path):
    for name in os.listdir(path):
        if name.endswith(".o") or name == "libbench.a":
            os.unlink(os.path.join(path, name))


def run(sess):
    reps = sess.pick(14, 2)
    n_one = sess.pick(8, 4)
    with Cleanup() as stack:
        stack.enter_context(allow_listed([DISTCC]))
        work = tempfile.mkdtemp(prefix="cgnetns-bench-distcc.")
        stack.callback(shutil.rmtree, work, True)
        os.chmod(work, 0o755)
        src = os.path.join(work, "src")
        uid, gid = sess.nobody.pw_uid, sess.nobody.pw_gid
        write_project(src, NFILES, uid, gid)
        topo = Topology(client_user=BUILD_USER, distcc_jobs=JOBS)
        stack.callback(topo.stop)
        try:
            topo.start()
        except TopologyError as e:
            raise BenchError("topology: %s" % e) from None

        # Probes run in a build of their own (the one cgnetns-run makes later
        # is not there yet): cgnetns.build.Build, as everywhere else.
        probe_build = new_build(stack, "bench-distcc-probe")

        def probe_start(argv):
            return start_in_build(probe_build.cgroup_path, argv, user=BUILD_USER)

        join_why = check_join(sess, probe_start)
        broker = sess.broker
        broker_why = join_why
        if broker_why is None:
            broker_why = broker.start()
        if broker_why is None:
            broker_why = check_broker(sess, probe_start)
        probe_build.close()

        timed = [sess.tool("spawnloop"), "-n", "1", "-w", "0", "--"]
        make = ["/usr/bin/make", "-C", src, "-j%d" % JOBS]
        run_cmd = command("cgnetns-run") + ["--unshare-net", "--user", BUILD_USER, "--"]
        variants = {"direct": (False, timed + make + ["CC=distcc gcc"])}
        if join_why is None:
            variants["setuid"] = (True, run_cmd + timed + make + ["CC=%s distcc gcc" % FRONT])
        if broker_why is None:
            variants["broker"] = (True, run_cmd + ["/usr/bin/setpriv", "--no-new-privs"] + timed
                                  + make + ["CC=%s distcc gcc" % FRONT])

        def build(name):
            for attempt in range(4):
                try:
                    return build_once(name)
                except BrokerGone:
                    broker_gone(sess)
                except BenchError as e:
                    if "not in the allow list" not in str(e):
                        raise
                    sess.allow_rewrites += 1   # others rewrote it: ours go back in
            raise BenchError("distcc build (%s): the allow list or the broker kept going away"
                             % name)

        def build_once(name):
            as_root, argv = variants[name]
            clean_objects(src)
            ddir = tempfile.mkdtemp(prefix="distcc.", dir=work)
            os.chown(ddir, uid, gid)
            env = child_env(**topo.distcc_env(ddir))
            sess.distcc_dirs.append(ddir)
            before = topo.count_compile_ok()
            t0 = time.perf_counter()
            proc = start_outside(argv, user=None if as_root else BUILD_USER, env=env)
            out, err = communicate(proc, timeout=600, what="distcc build (%s)" % name)
            whole = time.perf_counter() - t0
            remote = topo.count_compile_ok() - before
            if b"not in the allow list" in err:
                raise BenchError("distcc build (%s): distcc was not in the allow list" % name)
            if proc.returncode != 0 and NO_BROKER.encode() in err:
                raise BrokerGone("distcc build (%s)" % name)
            if proc.returncode != 0 or not out.split():
                raise BenchError("distcc build (%s) failed (exit %d): %s" % (
                    name, proc.returncode, last_line(err)))
            ns, status, _ = out.split()[:3]
            if os.waitstatus_to_exitcode(int(status)) != 0:
                raise BenchError("make (%s) exit %d: %s" % (
                    name, os.waitstatus_to_exitcode(int(status)),
                    last_line(err)))
            if remote != NFILES:
                raise BenchError("distcc build (%s): %d of %d objects compiled remotely" % (
                    name, remote, NFILES))
            return int(ns) / 1e9, whole

        sess.log("distcc: warm-up build")
        build("direct")
        got = {k: [] for k in variants}
        names = list(variants)
        for r in range(reps):
            # Each round starts with the next variant: no variant is always first.
            for name in names[r % len(names):] + names[:r % len(names)]:
                sess.log("distcc: round %d/%d: %s" % (r + 1, reps, name))
                got[name].append(build(name))
        sess.raw["distcc builds (make s, whole s)"] = got

        # One compile at a time: the cost per distcc call, without make's
        # parallelism around it.
        one = os.path.join(work, "one")
        os.mkdir(one)
        os.chown(one, uid, gid)
        ddir = tempfile.mkdtemp(prefix="distcc.", dir=work)
        os.chown(ddir, uid, gid)
        env = child_env(**topo.distcc_env(ddir))
        sess.distcc_dirs.append(ddir)
        cb = new_build(stack, "bench-distcc-compile")
        compile_argv = ["distcc", "gcc", "-O2", "-c", os.path.join(src, "u000.c"),
                        "-o", os.path.join(one, "u000.o")]
        places = {"direct": (lambda a: start_outside(a, user=BUILD_USER, env=env),
                             ["/usr/bin/distcc"] + compile_argv[1:], False)}
        if join_why is None:
            places["setuid"] = (lambda a: start_in_build(cb.cgroup_path, a, user=BUILD_USER,
                                                         env=env), [FRONT] + compile_argv, False)
        if broker_why is None:
            places["broker"] = (places["setuid"][0], [FRONT] + compile_argv, True)
        per_call = {k: [] for k in places}
        before = topo.count_compile_ok()
        for r in range(reps):
            for name, (start, argv, nnp) in places.items():
                per_call[name] += loop(sess, start, argv, n_one, warm=1, nnp=nnp,
                                       what="distcc compile (%s)" % name)
        remote = topo.count_compile_ok() - before
        expect = sum(len(v) for v in per_call.values()) + reps * len(places)  # with warm-ups
        if remote < expect:       # more when a loop was taken again
            raise BenchError("single compiles: %d of %d compiled remotely" % (remote, expect))

    make_t = {k: median([x[0] for x in v]) for k, v in got.items()}
    whole_t = {k: median([x[1] for x in v]) for k, v in got.items()}
    what = "distcc build (make -j%d, %d files): " % (JOBS, NFILES)
    rows = [Row(PART, what + "direct (parent netns)", make_t["direct"], unit="s", n=reps)]
    for key, label, why in (("setuid", "set-user-ID path", join_why),
                            ("broker", "broker path", broker_why)):
        if key in got:
            ratio = paired_ratio([x[0] for x in got["direct"]], [x[0] for x in got[key]])
            rows.append(Row(PART, what + label, make_t[key], unit="s", n=reps,
                            baseline="direct", baseline_value=make_t["direct"], ratio=ratio,
                            target="<= 1.03x", met=ratio <= 1.03))
        else:
            rows.append(Row(PART, what + label, target="<= 1.03x",
                            na="n/a (not implemented)" if "not implemented" in why else "n/a"))
            sess.note("distcc: %s path not measured: %s" % (key, why))
    for key in ("setuid", "broker"):
        if key in got:
            rows.append(Row(PART, "  the same, whole cgnetns-run command: %s path" % (
                                "set-user-ID" if key == "setuid" else key), whole_t[key],
                            unit="s", n=reps,
                            baseline="direct", baseline_value=whole_t["direct"],
                            ratio=paired_ratio([x[1] for x in got["direct"]],
                                               [x[1] for x in got[key]])))
    one_t = {k: median([x[0] for x in v]) * 1e3 for k, v in per_call.items()}
    rows.append(Row(PART, "one distcc compile at a time: direct", one_t["direct"],
                    n=len(per_call["direct"])))
    for key, label in (("setuid", "set-user-ID path"), ("broker", "broker path")):
        if key in one_t:
            rows.append(Row(PART, "one distcc compile at a time: " + label, one_t[key],
                            n=len(per_call[key]), baseline="direct",
                            baseline_value=one_t["direct"]))
    sess.note("distcc: every build compiled all %d objects on the remote distccd, and every "
              "single compile ran there too (COMPILE_OK lines counted)." % NFILES)
    sess.add(*rows)
