"""Part 1 (helper): what one cgnetns-exec call costs, its system calls and
its memory.

Builds call ``cgnetns-exec`` (/usr/local/bin): a dynamic front without the
set-user-ID bit.  Where privilege can be gained it execs the set-user-ID
static helper (/usr/local/lib/cgnetns/cgnetns-helper); under no_new_privs it
is the broker's client itself.  Every row below calls the front, as builds
do, except one reference row that calls the helper directly.

Every figure is the per-call time of a loop of calls made by one spawnloop
process (bench/spawnloop.c), so that process start-up is inside the figure.
Two spawnloop drivers run as root, one outside any build and one in a build
made with cgnetns.build.Build, in a new network namespace (lo only); each
calls its commands in turn, call by call, each as root or as the build user:

* join path (in the build, as the build user): ``cgnetns-exec true``: the
  front execs the helper, which resolves the build, joins the approved
  namespace, drops privilege and executes true;
* pass-through (outside, as the build user): the same call;
* broker path (in the build, as the build user with no_new_privs, as
  Gentoo's sandbox sets it): the front asks cgnetnsd, installs the seccomp
  filter, hands its listener to the per-call supervisor and executes true in
  place;
* the alternatives (in the build, as root): ``nsenter --net=PIN true`` (PIN:
  the build's own pin) and ``ip netns exec NS true``;
* baselines: true itself, from each place, as each user.

System calls and peak RSS (bench/rssprobe.c, ptrace): per image of the
calling process -- the front, the helper, the program -- the system calls it
made from the exec that started it to the exec that replaced it, and its
resident set at that moment.  "Client's system calls" is the sum over the
images before the program's: what a call costs in system calls between the
front's execve and the program's.
"""

import os
import subprocess
import sys

from .common import (FRONT, HELPER, TRUE, BUILD_USER, Cleanup, Row, allow_listed,
                     check_broker, check_join, exec_probe, interleaved, ms, new_build,
                     start_in_build, signals_held, start_outside, child_env)

PART = 1
NAME = "helper"
SYSCALL_TARGET = 60


def run(sess):
    n = sess.pick(100, 40)
    rounds = sess.pick(10, 3)
    with Cleanup() as stack:
        stack.enter_context(allow_listed([TRUE]))
        b = new_build(stack, "bench-helper")
        netns = "cgnb-%s" % os.urandom(4).hex()
        with signals_held():
            subprocess.run(["ip", "netns", "add", netns], check=True, env=child_env())
            stack.callback(subprocess.run, ["ip", "netns", "del", netns], env=child_env())

        def inside(argv):
            return start_in_build(b.cgroup_path, argv, user=BUILD_USER)

        def inside_root(argv):
            return start_in_build(b.cgroup_path, argv)

        join_why = check_join(sess, inside)
        broker = sess.broker
        broker_why = join_why
        if broker_why is None:
            broker_why = broker.start()
        if broker_why is None:
            broker_why = check_broker(sess, inside)

        # Two drivers (spawnloop, as root), one outside any build and one in
        # the build's netns; each calls its commands in turn, call by call, as
        # root or as the build user ("@uid:gid"), so that every ratio below
        # compares calls made side by side.  The drivers take turns by round.
        uid, gid = sess.nobody.pw_uid, sess.nobody.pw_gid
        user = "@%d:%d" % (uid, gid)
        outside_cmds = {"true-out": [user, TRUE]}
        inside_cmds = {"true-in": [user, TRUE], "true-root": [TRUE],
                       "nsenter": ["/usr/bin/nsenter", "--net=" + b.pin_path, TRUE],
                       "ipnetns": ["/usr/sbin/ip", "netns", "exec", netns, TRUE]}
        if join_why is None:
            outside_cmds["pass"] = [user, FRONT, TRUE]
            inside_cmds["join"] = [user, FRONT, TRUE]
            inside_cmds["helper"] = [user, HELPER, TRUE]
        if broker_why is None:
            inside_cmds["broker"] = [user + ":nnp", FRONT, TRUE]
        places = {"outside": (start_outside, list(outside_cmds.values()), {}),
                  "inside": (inside_root, list(inside_cmds.values()), {})}
        sess.log("helper: %d commands x %d rounds x %d calls" % (
            len(outside_cmds) + len(inside_cmds), rounds, n))
        res = interleaved(sess, places, n, rounds)
        got = dict(zip(outside_cmds, res["outside"]))
        got.update(zip(inside_cmds, res["inside"]))

        # System calls and RSS per image: a few calls each are enough (the
        # figures do not vary from call to call).
        pn = 10
        img = {"true": exec_probe(sess, inside_root, [TRUE], pn)}
        if join_why is None:
            img["join"] = exec_probe(sess, inside_root, [FRONT, TRUE], pn, what="join probe")
            img["pass"] = exec_probe(sess, start_outside, [FRONT, TRUE], pn, what="pass probe")
        if broker_why is None:
            img["broker"] = exec_probe(sess, inside_root, [FRONT, TRUE], pn, nnp=True,
                                       what="broker probe")
        broker_rss = broker.peak_rss_kib()
        py_rss = exec_probe(sess, start_outside, [sys.executable, "-S", "-c", "pass"], 5,
                            user="root", what="python rss")[-1][1]
    sess.raw["helper images (syscalls, rss KiB)"] = img

    t = {k: ms(v) for k, v in got.items()}
    cnt = {k: len(v) for k, v in got.items()}
    rows = [
        Row(PART, "true, run directly, outside any build", t["true-out"], n=cnt["true-out"]),
    ]
    if join_why is None:
        rows.append(Row(PART, "cgnetns-exec true, pass-through (no build)", t["pass"],
                        n=cnt["pass"], baseline="true outside", baseline_value=t["true-out"],
                        target="<= 1.20x", met=t["pass"] / t["true-out"] <= 1.20))
    else:
        rows.append(Row(PART, "cgnetns-exec true, pass-through (no build)", na="n/a",
                        target="<= 1.20x"))
    rows += [
        Row(PART, "true, run directly, in the build's netns", t["true-in"], n=cnt["true-in"]),
        Row(PART, "nsenter --net=PIN true (root, from the build)", t["nsenter"],
            n=cnt["nsenter"], baseline="true (root)", baseline_value=t["true-root"]),
        Row(PART, "ip netns exec NS true (root, from the build)", t["ipnetns"],
            n=cnt["ipnetns"], baseline="true (root)", baseline_value=t["true-root"]),
    ]
    if join_why is None:
        rows.append(Row(PART, "cgnetns-exec true, join path (set-user-ID, via the front)",
                        t["join"], n=cnt["join"], baseline="nsenter --net",
                        baseline_value=t["nsenter"], target="<= 0.60x",
                        met=t["join"] / t["nsenter"] <= 0.60))
        rows.append(Row(PART, "  the helper alone, called directly (no front)", t["helper"],
                        n=cnt["helper"], baseline="nsenter --net",
                        baseline_value=t["nsenter"]))
        sess.note("join path: %.3f ms per call through the front, %.3f ms more than true run "
                  "directly from the same place; the helper called directly adds %.3f ms, so "
                  "the dynamic front costs %.3f ms; nsenter --net adds %.3f ms." % (
                      t["join"], t["join"] - t["true-in"], t["helper"] - t["true-in"],
                      t["join"] - t["helper"], t["nsenter"] - t["true-root"]))
        sess.note("helper: the rows run as the build user include the driver's switch to "
                  "that user in each child (setgroups, setresgid, setresuid before exec: true "
                  "as the build user %.3f ms, as root %.3f ms); the join-path ratio to nsenter "
                  "(run as root) is therefore on the conservative side." % (
                      t["true-in"], t["true-root"]))
    else:
        rows.append(Row(PART, "cgnetns-exec true, join path (set-user-ID, via the front)",
                        na="n/a", target="<= 0.60x"))
        sess.note("helper rows not measured: %s" % join_why)
    if broker_why is None:
        added = t["broker"] - t["true-in"]
        rows.append(Row(PART, "cgnetns-exec true, broker path (no_new_privs)", t["broker"],
                        n=cnt["broker"], baseline="true in build", baseline_value=t["true-in"],
                        target="< +2 ms", met=added < 2.0))
        sess.note("broker path: %.3f ms added per call over true (%.3f ms over the set-user-ID "
                  "join path)." % (added, t["broker"] - t.get("join", float("nan"))))
    else:
        rows.append(Row(PART, "cgnetns-exec true, broker path (no_new_privs)", na="n/a",
                        target="< +2 ms"))
        sess.note("broker path: %s" % broker_why)

    # System calls of the calling process before the program's execve.
    def client_calls(key):
        return sum(x[0] for x in img[key][:-1])

    for key, label in (("pass", "pass-through"), ("join", "join path")):
        if key in img:
            rows.append(Row(PART, "syscalls, front's execve to true's: %s" % label,
                            client_calls(key), unit="calls", n=pn))
    if "broker" in img:
        calls = client_calls("broker")
        rows.append(Row(PART, "syscalls, front's execve to true's: broker client", calls,
                        unit="calls", n=pn, target="<= %d" % SYSCALL_TARGET,
                        met=calls <= SYSCALL_TARGET))
    names = {"join": ("front", "helper"), "pass": ("front", "helper"), "broker": ("client",)}
    sess.note("helper: system calls per image, from the front's execve to the program's "
              "(ptrace): %s; true itself makes %d.  The front's first %d are ld.so's start-up "
              "(before main)." % ("; ".join(
                  "%s: %s" % (k, " + ".join("%s %d" % (nm, img[k][i][0])
                                            for i, nm in enumerate(names[k])))
                  for k in ("pass", "join", "broker") if k in img), img["true"][0][0],
                  img.get("broker", img.get("join", [(0, 0, 0)]))[0][2]))

    rss_true = img["true"][-1][1]
    if "join" in img:
        rows.append(Row(PART, "peak RSS: front (dynamic), set-user-ID path", img["join"][0][1],
                        unit="KiB", n=pn, baseline="true", baseline_value=rss_true))
        rows.append(Row(PART, "peak RSS: helper (static, set-user-ID), join path",
                        img["join"][1][1], unit="KiB", n=pn, baseline="true",
                        baseline_value=rss_true))
    else:
        rows.append(Row(PART, "peak RSS: helper, join path", unit="KiB", na="n/a"))
    if "broker" in img:
        rows.append(Row(PART, "peak RSS: front as broker client", img["broker"][0][1],
                        unit="KiB", n=pn, baseline="true", baseline_value=rss_true))
    rows.append(Row(PART, "peak RSS: cgnetnsd (VmHWM)%s" % (
        "" if broker_why is None else ", idle"), broker_rss, unit="KiB",
                    baseline="python -S -c pass", baseline_value=py_rss,
                    na=None if broker_rss else "n/a"))
    sess.add(*rows)
