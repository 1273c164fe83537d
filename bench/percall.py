"""Part 1 (helper): what one cgnetns-exec call costs, and its peak memory.

Every figure is the per-call time of a loop of calls made by one spawnloop
process (bench/spawnloop.c), so that process start-up is inside the figure.
Two spawnloop drivers run as root, one outside any build and one in a build
made with cgnetns.build.Build, in a new network namespace (lo only); each
calls its commands in turn, call by call, each as root or as the build user:

* join path (in the build, as the build user): ``cgnetns-exec true``
  resolves the build, joins the parent namespace, drops privilege and
  executes true;
* pass-through (outside, as the build user): the same call;
* broker path (in the build, as the build user with no_new_privs, which
  ``setpriv --no-new-privs`` sets): the helper gains nothing from its
  set-user-ID bit and asks cgnetnsd;
* the alternatives (in the build, as root): ``nsenter --net=PIN true`` (PIN:
  the build's own pin) and ``ip netns exec NS true``;
* baselines: true itself, from each place, as each user.

Peak RSS: the exact resident set of the helper just before it executes its
program (bench/rssprobe.c; ru_maxrss is too coarse for a static program on
this kernel), with a static no-op as the program; true's at its exit.
"""

import os
import subprocess
import sys

from .common import (HELPER, READLINK, TRUE, BUILD_USER, BrokerProcess, Cleanup, Row, allow_listed,
                     check_broker, check_join, interleaved, ms, new_build, peak_rss, start_in_build,
                     signals_held, start_outside, child_env)

PART = 1
NAME = "helper"


def run(sess):
    n = sess.pick(100, 40)
    rounds = sess.pick(10, 3)
    noop = sess.tool("noop")
    with Cleanup() as stack:
        stack.enter_context(allow_listed([TRUE, READLINK, noop]))
        b = new_build(stack, "bench-helper")
        netns = "cgnb-%s" % os.urandom(4).hex()
        with signals_held():
            subprocess.run(["ip", "netns", "add", netns], check=True, env=child_env())
            stack.callback(subprocess.run, ["ip", "netns", "del", netns], env=child_env())

        def inside(argv):
            return start_in_build(b.cgroup_path, argv, user=BUILD_USER)

        def inside_root(argv):
            return start_in_build(b.cgroup_path, argv)

        join_why = check_join(inside)
        broker = BrokerProcess(sess)
        broker_why = join_why
        if broker_why is None:
            broker_why = broker.start()
            stack.callback(broker.stop)
        if broker_why is None:
            broker_why = check_broker(inside)

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
            outside_cmds["pass"] = [user, HELPER, TRUE]
            inside_cmds["join"] = [user, HELPER, TRUE]
        if broker_why is None:
            inside_cmds["broker"] = [user + ":nnp", HELPER, TRUE]
        places = {"outside": (start_outside, list(outside_cmds.values()), {}),
                  "inside": (inside_root, list(inside_cmds.values()), {})}
        sess.log("helper: %d commands x %d rounds x %d calls" % (
            len(outside_cmds) + len(inside_cmds), rounds, n))
        res = interleaved(sess, places, n, rounds)
        got = dict(zip(outside_cmds, res["outside"]))
        got.update(zip(inside_cmds, res["inside"]))

        # Peak RSS: a few calls each are enough (the figure does not vary).
        rss_n = 10
        rss_true = peak_rss(sess, inside_root, [TRUE], rss_n)
        rss_noop = peak_rss(sess, inside_root, [noop], rss_n)
        rss_join = rss_client = None
        if join_why is None:
            rss_join = peak_rss(sess, inside_root, [HELPER, noop], rss_n, what="helper rss")
        if broker_why is None:
            rss_client = peak_rss(sess, inside_root, [HELPER, noop], rss_n, nnp=True,
                                  what="client rss")
        broker_rss = broker.peak_rss_kib()
        py_rss = peak_rss(sess, start_outside, [sys.executable, "-S", "-c", "pass"], 5,
                          user="root", what="python rss")

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
        rows.append(Row(PART, "cgnetns-exec true, join path (set-user-ID)", t["join"],
                        n=cnt["join"], baseline="nsenter --net", baseline_value=t["nsenter"],
                        target="<= 0.60x", met=t["join"] / t["nsenter"] <= 0.60))
        sess.note("join path: %.3f ms per call, %.3f ms more than true run directly from the "
                  "same place; nsenter --net adds %.3f ms." % (
                      t["join"], t["join"] - t["true-in"], t["nsenter"] - t["true-root"]))
        sess.note("helper: the rows run as the build user include the driver's switch to "
                  "that user in each child (setgroups, setresgid, setresuid before exec: true "
                  "as the build user %.3f ms, as root %.3f ms); the join-path ratio to nsenter "
                  "(run as root) is therefore on the conservative side." % (
                      t["true-in"], t["true-root"]))
    else:
        rows.append(Row(PART, "cgnetns-exec true, join path (set-user-ID)", na="n/a",
                        target="<= 0.60x"))
        sess.note("helper rows not measured: %s" % join_why)
    if broker_why is None:
        added = t["broker"] - t["true-in"]
        rows.append(Row(PART, "cgnetns-exec true, broker path (no_new_privs)", t["broker"],
                        n=cnt["broker"], baseline="true in build", baseline_value=t["true-in"],
                        target="< +2 ms", met=added < 2.0))
        sess.note("broker path: %.3f ms added per call over true (%.3f ms over the set-user-ID "
                  "join path)." % (added, t["broker"] - t.get("join", float("nan"))))
    else:
        rows.append(Row(PART, "cgnetns-exec true, broker path (no_new_privs)",
                        na="n/a (not implemented)" if "not implemented" in broker_why
                        else "n/a", target="< +2 ms"))
        sess.note("broker path: %s" % broker_why)
    rows.append(Row(PART, "peak RSS: cgnetns-exec, join path", rss_join,
                    unit="KiB", n=rss_n if rss_join else None, baseline="true",
                    baseline_value=rss_true, na=None if rss_join else "n/a"))
    sess.note("peak RSS of the static no-op alone: %d KiB (so the join-path figure is the "
              "helper's own)." % rss_noop)
    if broker_why is None:
        rows.append(Row(PART, "peak RSS: cgnetns-exec, broker client", rss_client,
                        unit="KiB", n=rss_n, baseline="true", baseline_value=rss_true))
    rows.append(Row(PART, "peak RSS: cgnetnsd (VmHWM)%s" % (
        "" if broker_why is None else ", idle"), broker_rss, unit="KiB",
                    baseline="python -S -c pass", baseline_value=py_rss,
                    na=None if broker_rss else "n/a"))
    sess.add(*rows)
